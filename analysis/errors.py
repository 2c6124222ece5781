"""Error-structure metrics (docs/methods.md §6, study §3.7), always scored under the TRUE circumplex.

``confusion`` is a (K, K) count matrix ``M`` with rows = true class and columns = predicted class;
``cost`` is the true ground cost ``C_ij = ||mu_i - mu_j||`` and ``centroids`` the (K, 2) class
centroids (valence, arousal). numpy only: the trainer imports these to score every trial.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "affect_weighted_accuracy",
    "class_isolation",
    "error_severity",
    "per_class_error_severity",
    "quadrant_preservation",
]


def _confusion(confusion) -> np.ndarray:
    m = np.asarray(confusion, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"confusion must be a square (K, K) matrix, got shape {m.shape}")
    if not np.isfinite(m).all() or (m < 0).any():
        raise ValueError("confusion must contain finite, non-negative counts")
    return m


def _cost_for(m: np.ndarray, cost) -> np.ndarray:
    c = np.asarray(cost, dtype=float)
    if c.shape != m.shape:
        raise ValueError(f"cost has shape {c.shape} but confusion has shape {m.shape}")
    if not np.isfinite(c).all():
        raise ValueError("cost must be finite")
    return c


def per_class_error_severity(confusion, cost) -> np.ndarray:
    """``ES_i = sum_{j != i} M_ij C_ij / sum_{j != i} M_ij`` per true class; NaN for a class without errors."""
    m = _confusion(confusion)
    c = _cost_for(m, cost)
    off = ~np.eye(m.shape[0], dtype=bool)
    errors = np.where(off, m, 0.0).sum(axis=1)
    weighted = np.where(off, m * c, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(errors > 0, weighted / errors, np.nan)


def error_severity(confusion, cost) -> float:
    """Macro mean of the per-class error severity over the true classes that have errors.

    Lower = errors land nearer the truth in affect space (docs/methods.md §6). NaN when there are no errors.
    """
    per_class = per_class_error_severity(confusion, cost)
    if np.isnan(per_class).all():
        return float("nan")
    return float(np.nanmean(per_class))


def quadrant_preservation(confusion, centroids) -> float:
    """Fraction of the off-diagonal (error) mass ``i -> j`` whose true and predicted centroids share
    the sign of valence AND the sign of arousal (docs/methods.md §6). NaN when there are no errors."""
    m = _confusion(confusion)
    mu = np.asarray(centroids, dtype=float)
    if mu.shape != (m.shape[0], 2):
        raise ValueError(f"centroids must have shape ({m.shape[0]}, 2), got {mu.shape}")
    signs = np.sign(mu)
    same_quadrant = (signs[:, None, 0] == signs[None, :, 0]) & (signs[:, None, 1] == signs[None, :, 1])
    off = ~np.eye(m.shape[0], dtype=bool)
    errors = m[off].sum()
    if errors == 0:
        return float("nan")
    return float(m[off & same_quadrant].sum() / errors)


def affect_weighted_accuracy(confusion, cost) -> float:
    """``AWA = 1 - sum_ij M_ij C_ij / (N * max C)`` (docs/methods.md §6): 1 for a perfect classifier, 0 when
    every prediction lands at the farthest class. NaN for an empty confusion matrix."""
    m = _confusion(confusion)
    c = _cost_for(m, cost)
    n = m.sum()
    if n == 0:
        return float("nan")
    c_max = c.max()
    if c_max <= 0:
        raise ValueError("cost must have a positive maximum (is it the all-zero matrix?)")
    return float(1.0 - (m * c).sum() / (n * c_max))


def class_isolation(cost) -> np.ndarray:
    """``iso_k = min_{j != k} C_kj`` (docs/methods.md §4): how far each class is from its nearest neighbour.

    An undefined distance (NaN: a class without VA labels has no centroid) is left out of the
    minimum, so one such class does not make every other class's isolation NaN; a class with no
    defined distance at all gets NaN. The trainer's ``circumplex.json`` and the analysis both use this."""
    c = np.asarray(cost, dtype=float)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] < 2:
        raise ValueError(f"cost must be a square (K, K) matrix with K >= 2, got shape {c.shape}")
    iso = np.where(np.eye(c.shape[0], dtype=bool) | np.isnan(c), np.inf, c).min(axis=1)
    return np.where(np.isfinite(iso), iso, np.nan)
