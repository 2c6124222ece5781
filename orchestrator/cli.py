"""The ``affsweep`` command line (docs/design.md §6). ``python -m orchestrator`` is the same."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "throughput.py"  # of the checkout


class _Parser(argparse.ArgumentParser):
    """Usage errors as ONE line (like every other configuration error), exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from trainers.data.registry import real_datasets

    p = _Parser(prog="affsweep", description="Controlled multi-seed affect-recognition studies.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a sweep YAML with Ray Tune")
    run.add_argument("sweep", help="sweep YAML")
    run.add_argument("--dry-run", action="store_true", help="print the grid, resources and analysis plan; run nothing")
    run.add_argument("--resume", action="store_true", help="resume an interrupted sweep (finished trials are skipped)")
    run.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)")
    run.add_argument("--storage", default=None, help="override the sweep's storage directory")
    run.add_argument("--verbose", action="store_true",
                     help="Ray Tune's status table and Ray's own log lines instead of the live status line")
    run.add_argument("--until-decided", action="store_true",
                     help="sequential design (analysis.looks): run the first look's seeds, then add seeds only "
                          "to the hypotheses still undecided, look by look")

    plan = sub.add_parser("plan", help="seeds each declared hypothesis needs; power from a pilot sweep")
    plan.add_argument("sweep", help="sweep YAML")
    plan.add_argument("--pilot", default=None, metavar="DIR",
                      help="a finished sweep directory (>= 3 matched seeds) to estimate power from")
    plan.add_argument("--n-sim", type=int, default=2000, help="simulated studies per n for the power estimate")

    train = sub.add_parser("train", help="run one trial without Ray")
    train.add_argument("config", help="trial YAML (a TrialConfig)")
    train.add_argument("--out", default=None, help="trial directory (default: runs/trials/<trial_id>)")
    train.add_argument("--no-progress", action="store_true")

    analyze = sub.add_parser("analyze", help="paired statistics, tables, figures and report of a sweep")
    analyze.add_argument("source", help="sweep directory, results file, or sweep name (with --tracking-uri)")
    analyze.add_argument("--out", default=None)
    analyze.add_argument("--tracking-uri", default=None)

    status = sub.add_parser("status", help="done / running / failed / pending per condition")
    status.add_argument("sweep", help="sweep YAML or sweep directory")
    status.add_argument("--storage", default=None)

    data = sub.add_parser("data", help="dataset utilities")
    dsub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    synth = dsub.add_parser("synth", help="draw the synthetic world and save a preview / index")
    synth.add_argument("--preset", default="affwild2_like")
    synth.add_argument("--n", type=int, default=64)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-size", type=int, default=64)
    synth.add_argument("--separability", type=float, default=None)
    synth.add_argument("--out", default="synthetic_preview.png")
    cache = dsub.add_parser("cache", help="decode and resize a dataset once into a uint8 memory-map")
    cache.add_argument("root")
    cache.add_argument("--dataset", required=True, choices=real_datasets())
    cache.add_argument("--image-size", type=int, default=112)
    cache.add_argument("--cache-dir", default="~/.cache/affsweep")
    cache.add_argument("--split", default="all", choices=["train", "val", "all"])
    check = dsub.add_parser("check", help="counts, validity, unreadable images, split overlap")
    check.add_argument("root")
    check.add_argument("--dataset", required=True, choices=real_datasets())

    bench = sub.add_parser("bench", help="trainer throughput against a model-only loop")
    bench.add_argument("args", nargs=argparse.REMAINDER)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        from orchestrator.train_cmd import main as train_main

        return train_main(args)
    if args.command == "run":
        from orchestrator.driver import main as run_main

        return run_main(args)
    if args.command == "plan":
        from orchestrator.plan_cmd import main as plan_main

        return plan_main(args)
    if args.command == "status":
        from orchestrator.status import main as status_main

        return status_main(args)
    if args.command == "analyze":
        from analysis.report import main as analyze_main

        argv2 = [args.source] + (["--out", args.out] if args.out else []) + (
            ["--tracking-uri", args.tracking_uri] if args.tracking_uri else [])
        return analyze_main(argv2)
    if args.command == "data":
        from orchestrator.data_cmd import main as data_main

        return data_main(args)
    if args.command == "bench":
        import runpy

        if not BENCHMARK.is_file():
            print(f"error: affsweep bench: {BENCHMARK} not found (the benchmarks ship with the repository "
                  f"checkout, not with an installed package)", file=sys.stderr)
            return 2
        sys.argv = ["throughput", *args.args]
        runpy.run_path(str(BENCHMARK), run_name="__main__")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
