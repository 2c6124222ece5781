"""The exact null distribution of the paired sign-flip statistic, vectorised over many data sets.

:func:`analysis.paired.paired_permutation_test` answers one comparison. Planning (how many seeds,
what power, where a sequential design stops; ``analysis.power``, ``analysis.sequential``) needs the
same exact test on thousands of simulated data sets at once, and the joint null distribution of the
statistic across looks. This module is the one owner of that enumeration:

- :func:`signed_sums` — all ``2**k`` sums ``sum(s * |d|)`` of a block of ``k`` magnitudes, per row;
- :func:`count_pairs_at_least` — meet in the middle: ``#{(x, y): stat(x + y) >= t}`` over two such
  sets (the same idea as ``paired._count_at_least``, with an exclusion mask for sequential looks);
- :func:`signflip_pvalues` — the exact p-value of every row, two- or one-sided.

Under H0 (paired differences symmetric about 0, independently over seeds) the signs are iid ±1
given the magnitudes, so every sign assignment of the magnitudes is equally likely; docs/methods.md §7's
``p = #{s : |sum(s*d)| >= |sum(d)|} / 2**n`` is the fraction of them at least as extreme. The sum
and the mean give the same test (``n`` is fixed), so this module works with sums.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = [
    "ALTERNATIVES",
    "RTOL",
    "check_alternative",
    "count_pairs_at_least",
    "observed_statistic",
    "signed_sums",
    "signflip_pvalues",
]

ALTERNATIVES = ("two-sided", "greater", "less")
# Ties within this fraction of sum|d| count as "at least as extreme" (as paired._RTOL).
RTOL = 1e-9
# Rows are processed in chunks so that no intermediate array exceeds about this many elements.
_CHUNK_ELEMENTS = 1 << 22


def check_alternative(alternative: str) -> str:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    return alternative


@functools.lru_cache(maxsize=32)
def _sign_matrix(k: int) -> np.ndarray:
    """All 2**k sign vectors as rows of a (2**k, k) ±1 matrix (read-only)."""
    bits = (np.arange(2**k)[:, None] >> np.arange(k)[None, :]) & 1
    signs = 1.0 - 2.0 * bits
    signs.setflags(write=False)
    return signs


def signed_sums(magnitudes: np.ndarray) -> np.ndarray:
    """(B, k) magnitudes -> (B, 2**k): every signed sum ``sum(s * m)`` over s in {-1,+1}**k, per row."""
    m = np.asarray(magnitudes, dtype=float)
    if m.ndim != 2:
        raise ValueError(f"magnitudes must be 2-D (rows, k), got shape {m.shape}")
    return m @ _sign_matrix(m.shape[1]).T


def observed_statistic(sums: np.ndarray, alternative: str) -> np.ndarray:
    """The test statistic of a (signed) sum: ``|S|`` two-sided, ``S`` greater, ``-S`` less."""
    if alternative == "two-sided":
        return np.abs(sums)
    return sums if alternative == "greater" else -sums


def count_pairs_at_least(left, right, threshold, alternative: str = "two-sided", left_excluded=None) -> np.ndarray:
    """Per row b: ``#{(x, y) : x in left[b] not excluded, y in right[b], stat(x + y) >= threshold[b]}``.

    ``stat`` is :func:`observed_statistic`; ``threshold`` is used as given (the caller subtracts its
    tie tolerance). Two-sided with ``threshold <= 0`` every pair counts. ``left_excluded`` (shape
    ``(B, P)``, or ``(B, L, P)`` for ``L`` exclusion sets sharing the same values, e.g. the Holm
    levels of a sequential design) removes left values; the result then has shape ``(B,)`` or
    ``(B, L)``. Exact, by meet in the middle as in ``paired._count_at_least``: sort a row's left
    values once; a pair with ``x + y >= t`` is a left value ``x >= t - y``, found by
    ``searchsorted`` (a loop over rows of cache-sized arrays is several times faster here than one
    global sort of all rows); excluded values are discounted with a cumulative count.
    """
    check_alternative(alternative)
    left = np.asarray(left, dtype=float)
    right = np.asarray(right, dtype=float)
    rows, width = left.shape
    t = np.broadcast_to(np.asarray(threshold, dtype=float), (rows,))
    single = left_excluded is None or np.ndim(left_excluded) == 2
    excluded = (np.zeros((rows, 1, width), dtype=bool) if left_excluded is None
                else np.asarray(left_excluded, dtype=bool).reshape(rows, -1, width))
    order = np.argsort(left, axis=1)
    x = np.take_along_axis(left, order, axis=1)
    is_open = ~np.take_along_axis(excluded, order[:, None, :], axis=2)
    # open_from[b, l, k]: usable left values at sorted positions >= k (k = 0..width)
    total = is_open.sum(axis=2, keepdims=True, dtype=np.int64)
    open_from = np.zeros(is_open.shape[:2] + (width + 1,), dtype=np.int64)
    open_from[..., 1:] = np.cumsum(is_open, axis=2)
    open_from = total - open_from  # usable values at positions >= k = all less those before k
    at_least_pos = np.empty(right.shape, dtype=np.int64)  # first sorted position with x >= t - y
    at_most_pos = np.empty(right.shape, dtype=np.int64)  # first sorted position with x > -t - y
    for b in range(rows):
        at_least_pos[b] = np.searchsorted(x[b], t[b] - right[b], side="left")
        at_most_pos[b] = np.searchsorted(x[b], -t[b] - right[b], side="right")

    def usable_from(pos):  # (B, L, R): usable left values at sorted positions >= pos
        index = np.broadcast_to(pos[:, None, :], is_open.shape[:2] + pos.shape[1:])
        return np.take_along_axis(open_from, index, axis=2)

    count = np.zeros(is_open.shape[:2], dtype=np.int64)
    if alternative in ("greater", "two-sided"):
        count += usable_from(at_least_pos).sum(axis=2)
    if alternative in ("less", "two-sided"):
        count += (total - usable_from(at_most_pos)).sum(axis=2)
    if alternative == "two-sided":  # the two events overlap only when t <= 0: then every pair counts
        count = np.where((t <= 0)[:, None], total[..., 0] * right.shape[1], count)
    return count[:, 0] if single else count


def signflip_pvalues(diffs, alternative: str = "two-sided") -> np.ndarray:
    """Exact sign-flip p-value of each row of ``diffs`` (shape (B, n)), enumerating all 2**n signs.

    Two-sided it is docs/methods.md §7's ``#{s : |sum(s*d)| >= |sum(d)|} / 2**n`` and equals
    :func:`analysis.paired.paired_permutation_test` row by row; ``"greater"`` counts
    ``sum(s*d) >= sum(d)`` (small when the differences are positive), ``"less"`` the mirror image.
    Zeros in ``d`` are handled exactly (a zero does not change under a flip). Meet in the middle:
    each half's ``2**(n/2)`` signed sums, counted in pairs by :func:`count_pairs_at_least`.
    """
    check_alternative(alternative)
    d = np.atleast_2d(np.asarray(diffs, dtype=float))
    rows, n = d.shape
    if n == 0:
        return np.full(rows, np.nan)
    half = n // 2
    chunk = max(1, _CHUNK_ELEMENTS // 2 ** max(half, n - half))
    out = np.empty(rows)
    for start in range(0, rows, chunk):
        block = d[start:start + chunk]
        magnitudes = np.abs(block)
        stat = observed_statistic(block.sum(axis=1), alternative)
        tolerance = RTOL * magnitudes.sum(axis=1)
        left = signed_sums(magnitudes[:, :half])
        right = signed_sums(magnitudes[:, half:])
        count = count_pairs_at_least(left, right, stat - tolerance, alternative)
        out[start:start + chunk] = np.minimum(1.0, count / 2.0**n)
    return out
