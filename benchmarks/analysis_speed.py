"""How long the analysis of a large sweep takes.

1,000 trials (10 seeds x 4 ground costs x 25 values of lambda), 10 declared contrasts (1 primary at
lambda = 1; a family of the other 5 cost pairs x 4 metrics x 25 lambda strata; a family of 3 dose contrasts x 4
metrics), the same contrasts on every exploratory metric, 10,000 bootstrap resamples per comparison,
plus the descriptive comparisons behind the tables (every cost vs base and vs circumplex; the
circumplex vs base on every class and AU). Prints the time of the statistics alone
(``analysis.study.analyze``) and of the whole report (tables, figures, report.md/html).

    .venv/bin/python benchmarks/analysis_speed.py [--seeds 10] [--lams 25] [--resamples 10000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.plan import AnalysisPlan  # noqa: E402
from analysis.report import run_analysis  # noqa: E402
from analysis.results import load_sweep  # noqa: E402
from analysis.study import analyze  # noqa: E402
from tests.support.fake_sweep import write_demo_sweep  # noqa: E402

COSTS = ("none", "circumplex", "permuted", "uniform")


def plan(n_resamples: int, lams: list[float]) -> AnalysisPlan:
    cost = [{"method.cost": c} for c in COSTS]
    metrics = ["p_mtl", "expr_f1", "error_severity", "quadrant_keep"]
    strata = [{"method.lam": lam} for lam in lams]
    pairs = [{"contrast": [cost[i], cost[j]], "metrics": metrics, "strata": strata}
             for i in range(1, 4) for j in range(i) if (i, j) != (3, 1)]  # 5 pairs of costs (+ the primary's)
    top, mid = lams[-1], lams[len(lams) // 2]
    # three dose contrasts: each cost at the largest lambda vs the middle one
    dose = [{"contrast": [{"method.cost": c, "method.lam": top}, {"method.cost": c, "method.lam": mid}],
             "metrics": metrics} for c in ("circumplex", "permuted", "uniform")]
    primary = [{"contrast": [cost[3], cost[1]], "metric": "p_mtl", "stratum": {"method.lam": mid}}]
    return AnalysisPlan(baseline={"method.cost": "none"}, primary=primary, families={"costs": pairs, "dose": dose},
                        exploratory=metrics, n_resamples=n_resamples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--lams", type=int, default=25)
    parser.add_argument("--resamples", type=int, default=10_000)
    args = parser.parse_args()
    lams = [float(x) for x in np.round(np.linspace(0.0, 4.0, args.lams), 4)]
    the_plan = plan(args.resamples, lams)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        directory = write_demo_sweep(Path(tmp) / "bench", name="bench", seeds=range(args.seeds), costs=COSTS,
                                     lams=lams, analysis=the_plan.model_dump(mode="json"))
        setup = time.perf_counter() - start
        sweep = load_sweep(directory)
        n_trials = len(sweep.results)
        n_contrasts = len(the_plan.hypotheses())

        start = time.perf_counter()
        analysis = analyze(sweep, the_plan)
        stats_seconds = time.perf_counter() - start
        computed = {id(r): r for r in (*analysis.exploratory, *analysis.versus_baseline,
                                        *analysis.versus_reference, analysis.treatment_vs_baseline) if r is not None}
        n_comparisons = sum(len(r.comparisons) for r in computed.values()) + len(analysis.hypotheses)
        planned = len(analysis.hypotheses)

        start = time.perf_counter()
        report = run_analysis(sweep, plan=the_plan)
        report_seconds = time.perf_counter() - start

    print(f"trials: {n_trials}  declared hypotheses: {n_contrasts}  bootstrap resamples: {args.resamples}")
    print(f"comparisons (exact sign-flip test + bootstrap CI each): {n_comparisons} ({planned} planned)")
    print(f"(writing the synthetic sweep directory took {setup:.1f} s; not part of the timings)")
    print(f"statistics (analyze):          {stats_seconds:6.2f} s")
    print(f"full report (tables, {len(report.figures)} figures, report.md/html): {report_seconds:6.2f} s")


if __name__ == "__main__":
    main()
