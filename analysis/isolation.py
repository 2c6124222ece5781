"""Class isolation vs reachability (docs/methods.md §7, study §6.3).

Spearman rho between each class's isolation ``iso_k = min_{j!=k} C_kj`` and its mean F1 change
over seeds, with a two-sided permutation p over class labels. Several datasets are combined by
ranking within each dataset (their ΔF1 scales differ about sixfold), pooling the centred ranks and
permuting labels only within each dataset; the combined test is one-sided in the predicted
direction (rho > 0) when the plan says so (docs/methods.md §7).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

__all__ = ["CorrelationResult", "spearman_permutation_test"]

MAX_EXACT_PERMUTATIONS = 200_000


@dataclass(frozen=True)
class CorrelationResult:
    """Spearman rho of ``x`` and ``y`` with a permutation p-value over the labels of ``y``."""

    statistic: float
    pvalue: float
    n: int
    n_permutations: int
    exact: bool
    alternative: str = "two-sided"


@functools.lru_cache(maxsize=16)
def _all_permutations(k: int) -> np.ndarray:
    perms = np.array(list(itertools.permutations(range(k))), dtype=int).reshape(-1, k)
    perms.setflags(write=False)
    return perms


def _group_permutations(members: np.ndarray, rng, n_resamples: int | None) -> np.ndarray:
    if n_resamples is None:
        return members[_all_permutations(members.size)]
    return rng.permuted(np.tile(members, (n_resamples, 1)), axis=1)


def spearman_permutation_test(x, y, groups=None, *, n_resamples: int = 10_000, seed: int = 0,
                              max_exact: int = MAX_EXACT_PERMUTATIONS, alternative: str = "two-sided",
                              rank_within_groups: bool = False) -> CorrelationResult:
    """Spearman rho of ``x`` and ``y``; p from permuting ``y`` across labels (within ``groups``).

    All permutations are enumerated when their number (``prod(k_g!)``) is at most ``max_exact``;
    otherwise ``n_resamples`` random ones are drawn and ``p = (count + 1) / (n_resamples + 1)``.
    Two-sided p is ``2 * min(P(rho* <= rho), P(rho* >= rho))`` capped at 1, ``greater`` is
    ``P(rho* >= rho)`` and ``less`` ``P(rho* <= rho)``, as in ``scipy.stats.permutation_test``.
    Ranks are average ranks over all pooled values, or, with ``rank_within_groups``, average ranks
    within each group centred on the group's mean rank (each dataset on its own scale).
    """
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative must be two-sided, greater or less, got {alternative!r}")
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of equal length, got {x.shape} and {y.shape}")
    groups = np.zeros(x.size, dtype=int) if groups is None else np.asarray(groups)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, groups = x[keep], y[keep], groups[keep]
    n = int(x.size)
    nan = float("nan")
    if n < 3:
        return CorrelationResult(nan, nan, n, 0, True)
    labels = [np.flatnonzero(groups == g) for g in dict.fromkeys(groups.tolist())]
    if rank_within_groups:
        rx, ry = np.empty(n), np.empty(n)
        for members in labels:
            k = members.size
            rx[members] = rankdata(x[members]) - (k + 1) / 2.0
            ry[members] = rankdata(y[members]) - (k + 1) / 2.0
    else:
        rx = rankdata(x) - (n + 1) / 2.0
        ry = rankdata(y) - (n + 1) / 2.0
    denominator = math.sqrt(float(rx @ rx) * float(ry @ ry))
    if denominator == 0:  # constant ranks: rho undefined
        return CorrelationResult(nan, nan, n, 0, True)
    observed = float(rx @ ry) / denominator

    n_total = math.prod(math.factorial(m.size) for m in labels)
    exact = n_total <= max_exact
    rng = np.random.default_rng(seed)
    if exact:
        per_group = [_group_permutations(m, rng, None) for m in labels]
        # every combination of one permutation per group, as an index array over all positions
        combos = np.stack(np.meshgrid(*[np.arange(len(p)) for p in per_group], indexing="ij"), -1)
        combos = combos.reshape(-1, len(per_group))
        index = np.empty((n_total, n), dtype=int)
        for j, (members, perms) in enumerate(zip(labels, per_group)):
            index[:, members] = perms[combos[:, j]]
    else:
        index = np.empty((n_resamples, n), dtype=int)
        for members in labels:
            index[:, members] = _group_permutations(members, rng, n_resamples)
    null = (ry[index] @ rx) / denominator
    tolerance = 1e-12 * max(1.0, abs(observed))
    less = np.count_nonzero(null <= observed + tolerance)
    greater = np.count_nonzero(null >= observed - tolerance)
    count = {"two-sided": min(less, greater), "greater": greater, "less": less}[alternative]
    tails = 2.0 if alternative == "two-sided" else 1.0
    if exact:
        pvalue = tails * count / null.size
    else:
        pvalue = tails * (count + 1) / (null.size + 1)
    return CorrelationResult(observed, float(min(1.0, pvalue)), n, int(null.size), bool(exact), alternative)
