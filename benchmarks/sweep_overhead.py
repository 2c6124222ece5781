"""Orchestration overhead of a sweep: Ray Tune + MLflow against the trials' own work.

Runs the demo sweep (or a reduced copy of it) with ``affsweep run``'s driver in a fresh directory
and reports

- ``overhead vs train``: sweep wall time / (sum of the trials' ``train_seconds`` / concurrency) —
  everything that is not a training step (evaluation, data drawing, worker start-up, checkpoint
  copies, MLflow logging, the MLflow server and Ray start-up) as a multiple of the ideal;
- ``overhead vs fit``: sweep wall time / (sum of the trials' ``fit`` wall time / concurrency) —
  the orchestration alone (Ray, MLflow, checkpoint copies), the trainer's own evaluation excluded;
- ``vs sequential``: the same trials run one after another in this process with
  ``trainers.engine.fit`` (what ``affsweep train`` does, without Ray or MLflow), and the ratio
  sequential wall / sweep wall (the speed-up the sweep actually delivers).

and, from each trial's ``timing.json`` (written by ``trainers.engine.fit`` and the trainable), the
breakdown of where the time went, summed over the sweep, as fractions of the ideal
(Σ train_seconds / concurrency): set-up, world/data, training, method epoch-end hooks, evaluation,
BN re-estimation, checkpoint writes, Ray's ``report`` (with its checkpoint copy), the rest of the
report hook (state.json, MLflow queueing), the wait for MLflow at the end, and Ray/driver time
outside the trials (Ray start/stop, scheduling, MLflow server). Bytes written per trial: checkpoint
bytes the trainer wrote, checkpoint bytes handed to Ray to copy, and the worker's /proc write_bytes.

    python benchmarks/sweep_overhead.py                       # the full demo (24 trials)
    python benchmarks/sweep_overhead.py --seeds 2 --epochs 2  # a reduced demo (8 trials)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def reduced_yaml(source: Path, out: Path, seeds: int | None, epochs: int | None, n: int | None,
                 storage: Path) -> Path:
    spec = yaml.safe_load(source.read_text())
    if seeds is not None:
        spec["grid"]["seed"] = spec["grid"]["seed"][:seeds]
    if epochs is not None:
        spec["base"]["epochs"] = epochs
        spec["base"]["warmup_epochs"] = min(spec["base"].get("warmup_epochs", 1), epochs - 1)
    if n is not None:
        spec["base"].setdefault("dataset", {})["n"] = n
    spec["storage"] = str(storage)
    spec["tracking"] = {**spec.get("tracking", {}), "uri": "local"}
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", default=str(REPO / "sweeps" / "demo.yaml"))
    p.add_argument("--seeds", type=int, default=None, help="keep only the first N seeds of the grid")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--n", type=int, default=None, help="synthetic frames per trial")
    p.add_argument("--no-sequential", action="store_true", help="skip the one-after-another baseline")
    p.add_argument("--keep", default=None, help="directory to keep the sweep in (default: a temporary one)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    from orchestrator import sweep_dir as record
    from orchestrator.driver import run_sweep
    from orchestrator.expand import load_sweep

    work = Path(args.keep or tempfile.mkdtemp(prefix="sweep_overhead_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yaml_path = reduced_yaml(Path(args.sweep), work / "sweep.yaml", args.seeds, args.epochs, args.n,
                                 work / "runs")
        plan = load_sweep(yaml_path)
        sweep_dir = plan.spec.sweep_dir()
        if sweep_dir.exists():
            shutil.rmtree(sweep_dir)
        r = plan.spec.resources
        cpus = os.cpu_count() or 1
        concurrency = max(1, min(int(cpus // r.cpu), plan.spec.max_concurrent or len(plan.trials),
                                 len(plan.trials)))
        print(f"{len(plan.trials)} trials, {cpus} CPUs, {r.cpu} CPU per trial -> concurrency {concurrency}")

        t0 = time.perf_counter()
        outcome = run_sweep(plan, sweep_dir, analyze=False, say=lambda s: None)
        sweep_wall = time.perf_counter() - t0
        if outcome.exit_code != 0:
            print(f"the sweep did not complete (exit {outcome.exit_code})", file=sys.stderr)
            return 1
        results = [record.read_result(record.trial_dir(sweep_dir, t.trial_id)) for t in plan.trials]
        states = [record.read_state(record.trial_dir(sweep_dir, t.trial_id)) for t in plan.trials]
        train = sum(float(x["train_seconds"]) for x in results)
        fit_wall = sum(float(s.get("fit_seconds", "nan")) for s in states)
        numbers = {
            "trials": len(plan.trials), "concurrency": concurrency, "epochs": plan.trials[0].config.epochs,
            "sweep_wall_s": sweep_wall, "sum_train_seconds": train, "sum_fit_seconds": fit_wall,
            "overhead_vs_train": sweep_wall / (train / concurrency),
            "overhead_vs_fit": sweep_wall / (fit_wall / concurrency),
            "load_average": os.getloadavg(),
        }
        timings = [read_timing(record.trial_dir(sweep_dir, t.trial_id)) for t in plan.trials]
        numbers["breakdown"] = breakdown(timings, train, sweep_wall, concurrency)
        numbers["bytes_per_trial"] = bytes_per_trial(timings, sweep_dir, len(plan.trials))
        if not args.no_sequential:
            import torch

            from trainers.engine import fit

            seq_dir = work / "sequential"
            t0 = time.perf_counter()
            for t in plan.trials:
                fit(t.config, seq_dir / t.trial_id, progress=False)
            numbers["sequential_wall_s"] = time.perf_counter() - t0
            numbers["sequential_threads"] = torch.get_num_threads()
            numbers["speedup_vs_sequential"] = numbers["sequential_wall_s"] / sweep_wall
        print(format_numbers(numbers))
        if args.json:
            Path(args.json).write_text(json.dumps(numbers, indent=1))
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


PHASES = (  # (label, timing.json key): inside fit, then around it in the trainable
    ("set-up (model, optimiser)", "timing/setup_s"), ("world / data", "timing/data_s"),
    ("training", "timing/train_s"), ("method epoch-end hooks", "timing/epoch_end_s"),
    ("evaluation", "timing/eval_s"), ("BN re-estimation", "timing/bn_recalibration_s"),
    ("checkpoint writes", "timing/checkpoint_s"), ("final result files", "timing/final_s"),
    ("Ray report (+ checkpoint copy)", "timing/ray_report_s"),
)


def read_timing(tdir: Path) -> dict:
    path = tdir / "timing.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def breakdown(timings: list[dict], train: float, sweep_wall: float, concurrency: int) -> dict:
    """Seconds summed over trials, and as fractions of the ideal Σ train_seconds / concurrency."""
    total = lambda key: sum(float(t.get(key) or 0.0) for t in timings)  # noqa: E731
    rows = {label: total(key) for label, key in PHASES}
    rows["report hook rest (state, MLflow queue)"] = total("timing/report_s") - total("timing/ray_report_s")
    inside = ("setup", "data", "train", "epoch_end", "eval", "bn_recalibration", "checkpoint", "final", "report")
    rows["fit, between phases"] = total("timing/fit_s") - sum(total(f"timing/{k}_s") for k in inside)
    rows["MLflow wait at trial end"] = total("timing/mlflow_wait_s")
    trial = total("timing/trial_s")
    rows["trial start (imports, state, MLflow run)"] = total("timing/trial_start_s")
    rows["trainable outside fit, rest"] = (trial - total("timing/fit_s") - rows["MLflow wait at trial end"]
                                           - rows["trial start (imports, state, MLflow run)"])
    # wall time no trial was running on a lane: Ray start/stop, actor scheduling, MLflow server, driver
    rows["Ray / driver outside trials"] = concurrency * sweep_wall - trial
    ideal = train / concurrency
    return {label: {"seconds": s, "of_ideal": s / concurrency / ideal} for label, s in rows.items()}


def bytes_per_trial(timings: list[dict], sweep_dir: Path, n: int) -> dict:
    total = lambda key: sum(float(t.get(key) or 0) for t in timings)  # noqa: E731
    du = lambda root: sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.exists() else 0  # noqa: E731
    return {"checkpoint_written": total("checkpoint_bytes") / n, "handed_to_ray": total("ray_checkpoint_bytes") / n,
            "process_write_bytes": total("process_write_bytes") / n,
            "trial_dir_on_disk": du(sweep_dir / "trials") / n, "ray_storage_on_disk": du(sweep_dir / "ray") / n}


def format_numbers(x: dict) -> str:
    lines = [
        f"sweep wall time                 {x['sweep_wall_s']:8.1f} s  ({x['trials']} trials, "
        f"{x['epochs']} epochs, {x['concurrency']} at once)",
        f"sum of train_seconds            {x['sum_train_seconds']:8.1f} s  -> ideal "
        f"{x['sum_train_seconds'] / x['concurrency']:.1f} s; overhead ratio {x['overhead_vs_train']:.2f}",
        f"sum of fit wall (eval included) {x['sum_fit_seconds']:8.1f} s  -> ideal "
        f"{x['sum_fit_seconds'] / x['concurrency']:.1f} s; overhead ratio {x['overhead_vs_fit']:.2f}",
    ]
    if "breakdown" in x:
        lines.append(f"breakdown (Σ over trials; fraction of the ideal), load average {x['load_average']}")
        for label, row in x["breakdown"].items():
            lines.append(f"  {label:<40} {row['seconds']:8.1f} s  {row['of_ideal']:6.3f}")
        lines.append(f"  {'total = wall / ideal':<40} {'':8}    {x['overhead_vs_train']:6.3f}")
        lines.append("bytes per trial: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in x["bytes_per_trial"].items()))
    if "sequential_wall_s" in x:
        lines.append(f"sequential in-process fit       {x['sequential_wall_s']:8.1f} s  "
                     f"({x['sequential_threads']} torch threads); sweep speed-up {x['speedup_vs_sequential']:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
