"""Packed mode against unpacked trials, in one run: K trials of the demo recipe (K seeds of one
condition), each unpacked trial a Ray task with ``cpu: 1`` in its own worker process, against one
packed Ray task with ``cpu: 1`` that trains all K interleaved (``trainers.packed.fit_packed``).

Reports both walls, the wall ratio packed / unpacked, and CPU-seconds reserved (wall × CPUs held):
the unpacked trials run ``min(K, CPUs)`` at once, the packed one holds one CPU. Also checks that
every packed trial's metrics equal its unpacked twin's.

    python benchmarks/packed.py --k 4               # demo recipe, 4 seeds
    python benchmarks/packed.py --k 4 --device cuda  # on a GPU machine (then --gpu 0.25 per trial)
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


def configs(sweep: Path, k: int, epochs: int | None, device: str):
    from trainers.config import TrialConfig

    base = yaml.safe_load(sweep.read_text())["base"]
    if epochs is not None:
        base["epochs"] = epochs
    return [TrialConfig.model_validate({**base, "seed": s, "device": device}) for s in range(k)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", default=str(REPO / "sweeps" / "demo.yaml"))
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--gpu", type=float, default=0.0, help="GPU fraction per unpacked trial (packed: k × this)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    cfgs = configs(Path(args.sweep), args.k, args.epochs, args.device)
    work = Path(tempfile.mkdtemp(prefix="packed_bench_"))
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}}
    ray.init(address="local", include_dashboard=False, runtime_env=env, log_to_driver=False)
    try:
        @ray.remote(num_cpus=1, num_gpus=args.gpu, max_calls=1)  # a fresh process per trial, like a trial actor
        def alone(cfg, d):
            from trainers.engine import fit

            return fit(cfg, d, progress=False).metrics

        @ray.remote(num_cpus=1, num_gpus=min(1.0, args.gpu * args.k), max_calls=1)
        def packed(cfgs, dirs):
            from trainers.packed import fit_packed

            out = fit_packed(cfgs, dirs)
            return [r.metrics if not isinstance(r, BaseException) else repr(r) for r in out]

        t0 = time.perf_counter()
        solo = ray.get([alone.remote(c, str(work / "alone" / c.trial_id)) for c in cfgs])
        wall_alone = time.perf_counter() - t0
        t0 = time.perf_counter()
        pack = ray.get(packed.remote(cfgs, [str(work / "packed" / c.trial_id) for c in cfgs]))
        wall_packed = time.perf_counter() - t0
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    cpus = os.cpu_count() or 1
    drop = {"train_seconds", "images_per_second"}
    equal = all(isinstance(b, dict) and {k: v for k, v in a.items() if k not in drop}
                == {k: v for k, v in b.items() if k not in drop} for a, b in zip(solo, pack))
    lanes = min(args.k, cpus)
    numbers = {"k": args.k, "cpus": cpus, "load_average": os.getloadavg(), "wall_unpacked_s": wall_alone,
               "wall_packed_s": wall_packed, "wall_ratio_packed_over_unpacked": wall_packed / wall_alone,
               "cpu_seconds_unpacked": wall_alone * lanes, "cpu_seconds_packed": wall_packed,
               "cpu_seconds_ratio": wall_packed / (wall_alone * lanes),
               "sum_train_seconds_unpacked": sum(m["train_seconds"] for m in solo),
               "sum_train_seconds_packed": sum(m["train_seconds"] for m in pack if isinstance(m, dict)),
               "metrics_equal": equal}
    print(json.dumps(numbers, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=1))
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
