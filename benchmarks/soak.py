"""Soak the fault and cluster tests: run them K times under an artificial CPU load, print the pass rate.

    flock /tmp/affsweep-heavy.lock python benchmarks/soak.py -k 5 --load 1

Each round is one ``pytest`` process over the slow tests of ``tests/test_faults_*.py`` and
``tests/test_cluster_*.py`` (``-m slow``; the module fixtures -- Ray cluster, MLflow server -- are
shared within a round as in CI), while ``--load`` busy-loop processes compete for the CPUs. Per-test
outcomes come from pytest's JUnit XML; the table lists passes/K per test and the slowest run of each.
Exit code 0 when every test passed every round. (Run it with ``PYTHONPATH`` set to the checkout.)

On a 2-core machine ``--load 1`` takes one core away (a round: ~5.5 min); ``--load 2`` starves both,
and a round then takes over 15 min.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FILES = sorted(str(p.relative_to(REPO)) for pattern in ("tests/test_faults_*.py", "tests/test_cluster_*.py")
                       for p in REPO.glob(pattern))


def _busy() -> None:
    while True:
        pass


def outcomes(junit: Path) -> dict[str, tuple[str, float]]:
    """test id -> (passed|failed|error|skipped, seconds) from one JUnit XML report."""
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        kinds = {child.tag for child in case}
        status = ("failed" if "failure" in kinds else "error" if "error" in kinds
                  else "skipped" if "skipped" in kinds else "passed")
        out[name] = (status, float(case.get("time") or 0))
    return out


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", "--rounds", type=int, default=5, help="rounds (K)")
    ap.add_argument("--load", type=int, default=os.cpu_count() or 2, help="busy-loop processes (default: one per CPU)")
    ap.add_argument("--marker", default="slow", help="pytest -m expression (default: slow)")
    ap.add_argument("--round-timeout", type=float, default=3600, help="seconds one round may take")
    ap.add_argument("files", nargs="*", default=DEFAULT_FILES)
    args = ap.parse_args(argv)
    # a `kill` of the soak ends it like Ctrl-C: the busy loops it started are stopped (finally below)
    signal.signal(signal.SIGTERM, _interrupt)

    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO))}
    results: dict[str, list[tuple[str, float]]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="affsweep-soak-") as tmp:
        for k in range(args.rounds):
            load = [mp.Process(target=_busy, daemon=True) for _ in range(args.load)]
            for p in load:
                p.start()
            junit = Path(tmp) / f"round{k}.xml"
            started = time.monotonic()
            try:
                cmd = [sys.executable, "-m", "pytest", "-q", "-m", args.marker, "-p", "no:randomly",
                       f"--junitxml={junit}", *args.files]
                try:
                    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                                          timeout=args.round_timeout)
                    tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["(no output)"]
                except subprocess.TimeoutExpired:
                    tail = [f"round timed out after {args.round_timeout:.0f}s"]
            finally:
                for p in load:  # only the processes this script started
                    p.kill()
                    p.join()
            print(f"round {k + 1}/{args.rounds} ({time.monotonic() - started:.0f}s, load {args.load}): {tail[0]}",
                  flush=True)
            if junit.is_file():
                for name, outcome in outcomes(junit).items():
                    results[name].append(outcome)

    width = max((len(n) for n in results), default=10)
    print(f"\n{'test':<{width}}  pass/K  slowest")
    ok = True
    for name in sorted(results):
        runs = results[name]
        passed = sum(s == "passed" for s, _ in runs)
        skipped = sum(s == "skipped" for s, _ in runs)
        ok &= passed + skipped == args.rounds
        note = f"  ({skipped} skipped)" if skipped else ""
        print(f"{name:<{width}}  {passed}/{args.rounds}   {max(t for _, t in runs):6.0f}s{note}")
    if not results:
        print("no test ran")
    return 0 if ok and results else 1


if __name__ == "__main__":
    sys.exit(main())
