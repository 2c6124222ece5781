"""Matched-seed paired statistics (docs/methods.md §7).

Pure functions of arrays returning small frozen results, in the manner of ``scipy.stats``:

- :func:`paired_permutation_test` — exact sign-flip test on the mean paired difference,
  enumerating all ``2**n`` sign assignments; two-sided by default, one-sided (``greater`` /
  ``less``, in scipy's spelling) when a hypothesis declares a direction;
- :func:`holm` — Holm step-down adjustment of a family of p-values;
- :func:`bootstrap_ci` — percentile bootstrap confidence interval of the mean paired difference;
- :func:`min_attainable_pvalue` — the floor of the exact test, ``2**(z+1) / 2**n`` two-sided with
  ``z`` zero differences among ``n`` (half that one-sided), which decides whether a design can reach
  its threshold at all. The one owner of that fact: the dry run and the report call it.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = [
    "ConfidenceInterval",
    "ALTERNATIVES",
    "DesignCannotReachAlpha",
    "PairedTestResult",
    "bootstrap_ci",
    "holm",
    "min_attainable_pvalue",
    "paired_permutation_test",
    "seeds_needed",
    "warn_if_alpha_unreachable",
]

# Exact enumeration uses meet-in-the-middle over two halves of the seeds (2**(n/2) sums each), so
# n = 40 is ~1M sums per half; beyond that the exact test is not what a seed-paired design needs.
MAX_EXACT_N = 40
# Sign assignments whose |sum| equals the observed one up to float rounding count as ties (>=).
_RTOL = 1e-9
# scipy.stats' spelling of the direction of a test: A - B != 0, A - B > 0, A - B < 0
ALTERNATIVES = ("two-sided", "greater", "less")
# p <= threshold with a relative slack: a threshold such as 0.05/4 is not a binary fraction, while the
# p-values are (k / 2**n)
_PTOL = 1e-12


class DesignCannotReachAlpha(UserWarning):
    """The smallest attainable p-value of the exact test exceeds alpha (too few seeds)."""


class ConfidenceInterval(NamedTuple):
    """A two-sided interval; unpacks as ``(low, high)`` like a plain tuple."""

    low: float
    high: float


@dataclass(frozen=True)
class PairedTestResult:
    """Exact paired sign-flip test of ``mean(a - b) == 0``.

    ``statistic`` is the mean paired difference ``a - b``; ``pvalue`` the fraction of the ``2**n``
    sign assignments at least as extreme as the observed one (``|mean(s*d)| >= |mean(d)|``
    two-sided, ``mean(s*d) >= mean(d)`` for ``greater``, ``<=`` for ``less``); ``min_pvalue`` the
    floor the observed differences can reach (zeros do not flip: :func:`min_attainable_pvalue`);
    ``n_positive``/``n_negative``/``n_zero`` count pairs with ``a > b`` / ``a < b`` / ``a == b``.
    """

    statistic: float
    pvalue: float
    n: int
    min_pvalue: float
    n_positive: int
    n_negative: int
    alpha: float = 0.05
    alternative: str = "two-sided"
    n_zero: int = 0

    @property
    def can_reach_alpha(self) -> bool:
        """Whether ``n`` pairs can produce ``p <= alpha`` at all (docs/methods.md §7)."""
        return bool(self.min_pvalue <= self.alpha)

    @property
    def significant(self) -> bool:
        return bool(np.isfinite(self.pvalue) and self.pvalue <= self.alpha)


def min_attainable_pvalue(n: int, n_zero: int = 0, alternative: str = "two-sided") -> float:
    """Smallest p-value the exact sign-flip test can return with ``n`` pairs, ``n_zero`` of them zero.

    Only assignments that give every non-zero difference the same sign reach the maximal
    ``|sum|``; a zero difference flips to itself, so each zero doubles their number:
    two-sided ``2**(z+1) / 2**n``, one-sided ``2**z / 2**n`` (docs/methods.md §7). With ``n = 6`` and no
    zeros this is ``2/64 = 0.03125`` (the study's "0.031"); one zero among six gives ``0.0625``.
    At a dry run only ``n`` is known (``n_zero = 0``: the best case). ``n = 0`` returns NaN.
    """
    n, n_zero = int(n), int(n_zero)
    if n < 0 or not 0 <= n_zero <= n:
        raise ValueError(f"need n >= 0 and 0 <= n_zero <= n, got n={n}, n_zero={n_zero}")
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    if n == 0:
        return float("nan")
    free = n - n_zero  # differences whose sign a flip changes
    tails = 2.0 if alternative == "two-sided" else 1.0
    return float(min(1.0, tails / 2.0**free))


def seeds_needed(alpha: float, family_size: int = 1, alternative: str = "two-sided", zeros: int = 0) -> int:
    """Fewest paired seeds at which the exact test can reach ``p <= alpha / family_size`` at all.

    ``family_size = m`` asks for Holm's first step in a family of ``m`` (``p_(1) <= alpha/m``);
    ``zeros`` counts seeds expected to give a zero difference (each doubles the floor). Necessary,
    not sufficient: attainable means the most extreme outcome (every seed agreeing) is significant,
    not that the design has power — :func:`analysis.power.power_from_pilot` answers that. Two-sided
    α = .05 gives 6 (5 seeds: 2/32 = .0625); a Holm family of 4 at .05 gives 8 (2/256 <= .0125 < 2/128).
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    if int(family_size) < 1 or int(zeros) < 0:
        raise ValueError(f"need family_size >= 1 and zeros >= 0, got {family_size}, {zeros}")
    threshold = alpha / int(family_size)
    # 2**(z+1) / 2**n <= threshold  <=>  n >= z + 1 + log2(1/threshold) (one-sided: z + log2(...))
    n = max(int(zeros) + 1, int(zeros) + math.ceil(math.log2((2.0 if alternative == "two-sided" else 1.0) / threshold)))
    while n > int(zeros) + 1 and min_attainable_pvalue(n - 1, int(zeros), alternative) <= threshold * (1 + _PTOL):
        n -= 1  # guard against log2 rounding up at exact binary fractions
    while min_attainable_pvalue(n, int(zeros), alternative) > threshold * (1 + _PTOL):
        n += 1
    return n


def _subset_sums(values: np.ndarray) -> np.ndarray:
    """All 2**len(values) signed sums ``sum(s * values)`` for ``s`` in {-1, +1}**len(values)."""
    sums = np.zeros(1)
    for v in values:
        sums = np.concatenate([sums + v, sums - v])
    return sums


def _count_at_least(d: np.ndarray, threshold: float) -> int:
    """#{s in {-1,+1}^n : |sum(s*d)| >= threshold}, exactly, for threshold > 0.

    Splits the seeds into two halves, enumerates each half's signed sums and counts, for every left
    sum x, the right sums y with x + y >= threshold or x + y <= -threshold (disjoint events since
    threshold > 0) by binary search; equivalent to enumerating all 2**n assignments.
    """
    half = len(d) // 2
    left = _subset_sums(d[:half])
    right = np.sort(_subset_sums(d[half:]))
    n_ge = right.size - np.searchsorted(right, threshold - left, side="left")
    n_le = np.searchsorted(right, -threshold - left, side="right")
    return int(n_ge.sum() + n_le.sum())


def _count_greater_equal(d: np.ndarray, threshold: float) -> int:
    """#{s in {-1,+1}^n : sum(s*d) >= threshold}, exactly (meet in the middle as above)."""
    half = len(d) // 2
    left = _subset_sums(d[:half])
    right = np.sort(_subset_sums(d[half:]))
    return int((right.size - np.searchsorted(right, threshold - left, side="left")).sum())


def _as_pairs(a, b, nan_policy: str) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"a and b must be 1-D arrays of equal length, got shapes {a.shape} and {b.shape}")
    d = a - b
    missing = ~np.isfinite(d)
    if missing.any():
        if nan_policy == "omit":
            d = d[~missing]
        elif nan_policy == "raise":
            raise ValueError(
                f"{int(missing.sum())} of {d.size} pairs contain NaN or inf; pass nan_policy='omit' to drop them"
            )
        else:
            raise ValueError(f"nan_policy must be 'raise' or 'omit', got {nan_policy!r}")
    return d


def paired_permutation_test(a, b, *, alpha: float = 0.05, nan_policy: str = "raise",
                            alternative: str = "two-sided") -> PairedTestResult:
    """Exact paired permutation (sign-flip) test on the mean difference ``a - b``.

    Parameters
    ----------
    a, b : array_like, shape (n,)
        Paired observations; ``a[i]`` and ``b[i]`` share seed ``i``.
    alpha : float
        Level used only for :attr:`PairedTestResult.can_reach_alpha` and ``significant``.
    nan_policy : {"raise", "omit"}
        What to do with pairs in which either value is NaN.
    alternative : {"two-sided", "greater", "less"}
        ``greater``: the hypothesis is ``mean(a - b) > 0``; ``less``: ``< 0`` (scipy's spelling).

    Returns
    -------
    PairedTestResult
        Two-sided ``p = #{s : |mean(s*d)| >= |mean(d)|} / 2**n`` over all ``s`` in {-1,+1}^n
        (docs/methods.md §7); one-sided ``#{s : mean(s*d) >= mean(d)} / 2**n`` (``greater``, mirrored for
        ``less``). Equals ``scipy.stats.permutation_test(..., permutation_type="samples",
        n_resamples=np.inf, alternative=alternative)`` with the statistic ``mean(x - y)``.
        ``n = 0`` gives NaN.
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    d = _as_pairs(a, b, nan_policy)
    n = int(d.size)
    if n > MAX_EXACT_N:
        raise ValueError(f"exact sign-flip enumeration supports at most {MAX_EXACT_N} pairs, got {n}")
    if n == 0:
        return PairedTestResult(float("nan"), float("nan"), 0, float("nan"), 0, 0, alpha, alternative, 0)
    tolerance = _RTOL * float(np.abs(d).sum())
    if alternative == "two-sided":
        threshold = abs(float(d.sum())) - tolerance
        if threshold <= 0:  # mean difference is zero: every assignment is at least as extreme
            pvalue = 1.0
        else:
            pvalue = min(1.0, _count_at_least(d, threshold) / 2.0**n)
    else:
        oriented = d if alternative == "greater" else -d
        pvalue = min(1.0, _count_greater_equal(oriented, float(oriented.sum()) - tolerance) / 2.0**n)
    n_zero = int((d == 0).sum())
    return PairedTestResult(
        statistic=float(d.mean()),
        pvalue=float(pvalue),
        n=n,
        min_pvalue=min_attainable_pvalue(n, n_zero, alternative),
        n_positive=int((d > 0).sum()),
        n_negative=int((d < 0).sum()),
        alpha=float(alpha),
        alternative=alternative,
        n_zero=n_zero,
    )


def holm(pvalues) -> np.ndarray:
    """Holm step-down adjusted p-values, in the input order.

    Sorted ascending, ``p_(i)`` is multiplied by ``m - i + 1``, made monotone by a running maximum
    and capped at 1. NaN entries are not members of the family (``m`` counts finite values) and
    stay NaN.
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be 1-D, got shape {p.shape}")
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if finite.size == 0:
        return adjusted
    if ((p[finite] < 0) | (p[finite] > 1)).any():
        raise ValueError("p-values must lie in [0, 1]")
    m = finite.size
    order = finite[np.argsort(p[finite], kind="stable")]
    stepped = (m - np.arange(m)) * p[order]
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(stepped))
    return adjusted


@functools.lru_cache(maxsize=64)
def _resample_weights(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """Resample weights ``W[r, i] = (# times seed i is drawn in resample r) / n``, so that the resample
    means are ``W @ d``. Cached (read-only): every comparison with the same n, seed and number of
    resamples draws the same index stream ``default_rng(seed).integers(0, n, (n_resamples, n))``."""
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    weights = np.zeros((n_resamples, n))
    np.add.at(weights, (np.arange(n_resamples)[:, None], idx), 1.0 / n)
    weights.setflags(write=False)
    return weights


def bootstrap_ci(diffs, level: float = 0.95, n_resamples: int = 10_000, seed: int | None = 0) -> ConfidenceInterval:
    """Percentile bootstrap CI of the mean of ``diffs`` (paired differences over seeds).

    Resamples seeds with replacement: ``idx = default_rng(seed).integers(0, n, (n_resamples, n))``,
    takes the mean of each resample and returns the ``(1-level)/2`` and ``(1+level)/2`` quantiles
    (linear interpolation). NaN differences are dropped; fewer than one value gives (NaN, NaN).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    d = np.asarray(diffs, dtype=float).ravel()
    d = d[np.isfinite(d)]
    if d.size == 0:
        return ConfidenceInterval(float("nan"), float("nan"))
    if seed is None:
        means = d[np.random.default_rng().integers(0, d.size, size=(int(n_resamples), d.size))].mean(axis=1)
    else:
        means = _resample_weights(d.size, int(n_resamples), int(seed)) @ d
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return ConfidenceInterval(float(low), float(high))


def warn_if_alpha_unreachable(n: int, alpha: float = 0.05, what: str = "this contrast") -> bool:
    """Warn (:class:`DesignCannotReachAlpha`) and return True when ``n`` pairs cannot reach ``alpha``."""
    floor = min_attainable_pvalue(n)
    if not np.isfinite(floor) or floor > alpha:
        warnings.warn(
            f"{what}: with n={n} paired seeds the smallest attainable p is {floor:.4g} > alpha={alpha:g}; "
            f"the exact test cannot reach significance (use at least "
            f"{seeds_needed(alpha)} seeds)",
            DesignCannotReachAlpha,
            stacklevel=2,
        )
        return True
    return False
