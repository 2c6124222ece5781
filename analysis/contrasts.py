"""Paired comparisons of matched trials: one result per contrast x stratum x metric (exploratory;
the declared hypotheses are tested in :mod:`analysis.hypotheses`).

:func:`compare_contrast` pairs the trials (:mod:`analysis.pairing`) and, for every stratum and
metric, runs the exact sign-flip test and the bootstrap CI (:mod:`analysis.paired`) on the paired
differences ``A - B``. Tables and figures only read these results.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.paired import ConfidenceInterval, PairedTestResult, bootstrap_ci, paired_permutation_test
from analysis.pairing import Contrast, Items, Pairing, pair_trials, stratum_label

__all__ = [
    "LOWER_IS_BETTER",
    "ContrastResult",
    "MetricComparison",
    "SampleStats",
    "compare_contrast",
    "describe",
]

# Metrics where a decrease is an improvement (used for "seeds improved"); all others: higher is better.
LOWER_IS_BETTER: frozenset[str] = frozenset({"error_severity", "error_severity@source", "train_seconds", "epochs"})


@dataclass(frozen=True)
class SampleStats:
    """Mean, sample standard deviation (ddof=1; NaN for one value) and count of the finite values."""

    mean: float
    std: float
    n: int


def describe(values) -> SampleStats:
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return SampleStats(float("nan"), float("nan"), 0)
    std = float(v.std(ddof=1)) if v.size > 1 else float("nan")
    return SampleStats(float(v.mean()), std, int(v.size))


@dataclass(frozen=True)
class MetricComparison:
    """One paired comparison: contrast A vs B, within one stratum, on one metric."""

    contrast: Contrast
    stratum: Items
    metric: str
    seeds: tuple
    a_values: tuple[float, ...]
    b_values: tuple[float, ...]
    a: SampleStats
    b: SampleStats
    test: PairedTestResult
    ci: ConfidenceInterval
    n_improved: int
    n_missing: int  # matched pairs left out because the metric is NaN on either side

    @property
    def differences(self) -> np.ndarray:
        return np.asarray(self.a_values) - np.asarray(self.b_values)

    @property
    def delta(self) -> float:
        return self.test.statistic

    @property
    def pvalue(self) -> float:
        return self.test.pvalue

    @property
    def n(self) -> int:
        return self.test.n

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in LOWER_IS_BETTER

    @property
    def stratum_label(self) -> str:
        return stratum_label(self.stratum)


@dataclass(frozen=True)
class ContrastResult:
    pairing: Pairing
    comparisons: tuple[MetricComparison, ...]

    @property
    def contrast(self) -> Contrast:
        return self.pairing.contrast

    def get(self, metric: str, stratum: Items | None = None) -> MetricComparison | None:
        for c in self.comparisons:
            if c.metric == metric and (stratum is None or c.stratum == stratum):
                return c
        return None


def _compare_metric(column: np.ndarray, contrast: Contrast, stratum: Items, pairs, metric: str, *,
                    alpha: float, n_resamples: int, seed: int) -> MetricComparison | None:
    a = column[[p.row_a for p in pairs]]
    b = column[[p.row_b for p in pairs]]
    finite = np.isfinite(a) & np.isfinite(b)
    if not finite.any():
        return None  # the metric does not exist here (e.g. AU F1 on AffectNet)
    seeds = tuple(p.seed for p, ok in zip(pairs, finite) if ok)
    a, b = a[finite], b[finite]
    d = a - b
    improved = int((d > 0).sum()) if metric not in LOWER_IS_BETTER else int((d < 0).sum())
    return MetricComparison(
        contrast=contrast,
        stratum=stratum,
        metric=metric,
        seeds=seeds,
        a_values=tuple(a.tolist()),
        b_values=tuple(b.tolist()),
        a=describe(a),
        b=describe(b),
        test=paired_permutation_test(a, b, alpha=alpha),
        ci=bootstrap_ci(d, n_resamples=n_resamples, seed=seed),
        n_improved=improved,
        n_missing=int((~finite).sum()),
    )


def compare_contrast(frame: pd.DataFrame, contrast: Contrast, axes: Iterable[str], metrics: Sequence[str], *,
                     alpha: float = 0.05, n_resamples: int = 10_000, seed: int = 0) -> ContrastResult:
    """Pair the trials of ``contrast`` and compare them on every metric in every stratum.

    Metrics absent from the frame are skipped; so are strata where a metric is NaN throughout.
    """
    pairing = pair_trials(frame, contrast, axes)
    columns = {m: frame[m].to_numpy(dtype=float) for m in metrics if m in frame.columns}
    comparisons = []
    for stratum, pairs in pairing.by_stratum().items():
        for metric, column in columns.items():
            result = _compare_metric(column, contrast, stratum, pairs, metric,
                                     alpha=alpha, n_resamples=n_resamples, seed=seed)
            if result is not None:
                comparisons.append(result)
    return ContrastResult(pairing, tuple(comparisons))
