"""Circumplex geometry and the ground-cost variants of the OT term (docs/methods.md §4-§5, study §3.3-3.7, §6).

Everything here is numpy on label arrays; ``trainers.losses.ot`` turns a chosen cost into a loss.

- ``estimate_centroids`` / ``cost_matrix``: class centroids in valence-arousal and the ground cost
  ``C_ij = ||mu_i - mu_j||`` (docs/methods.md §4).
- Cost variants (docs/methods.md §5): ``permuted_cost`` (derangement control), ``uniform_cost`` (confidence-
  penalty control), ``gaussian_w2_cost`` (Eq. 6), ``au_composite_cost`` (§6.2), ``imported_cost``
  (geometry transfer by class name), and per-frame ``instance`` rows in ``trainers.losses.ot``.
- ``bootstrap_geometry``: radial standard errors and pairwise-distance CIs (docs/methods.md §4).
- ``representational_similarity``: Spearman rho of prototype cosine distances vs C (docs/methods.md §7).
- ``Geometry`` / ``estimate_geometry``: everything above for one training split, JSON round-trip;
  ``import_geometry`` carries one into another label order, ``load_import_source`` reads the source
  of ``method.imported_from``; ``builtin_source_cost`` is a built-in cost source (chosen by
  ``trainers.costs.build_cost``, resolved once per trial by ``trainers.circumplex``),
  ``circumplex_record`` is a trial's ``circumplex.json``.

A class without any jointly labelled frame has a NaN centroid and NaN cost entries in ``Geometry``
(the estimate is undefined); the training cost fills such entries with the off-diagonal mean of the
defined ones (no geometric information about that class), so the training cost is always finite.
"""

from __future__ import annotations

import functools
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analysis.errors import class_isolation  # one owner (numpy only); re-exported for the trainer
from trainers.data.labels import AU_NAMES

__all__ = [
    "BootstrapResult",
    "CostChoice",
    "Geometry",
    "RSAResult",
    "au_composite_cost",
    "au_signatures",
    "bootstrap_geometry",
    "builtin_source_cost",
    "canonical_class_name",
    "circumplex_record",
    "class_covariances",
    "class_isolation",
    "cost_matrix",
    "derangement",
    "estimate_centroids",
    "estimate_geometry",
    "gaussian_w2_cost",
    "geometry_from_arrays",
    "geometry_from_record",
    "import_geometry",
    "load_import_source",
    "imported_cost",
    "permuted_cost",
    "representational_similarity",
    "uniform_cost",
]


# --- basic estimates (docs/methods.md §4) ------------------------------------------------------------------

def _joint(va, expr, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The jointly labelled frames: EXPR in [0, K) and both VA coordinates finite."""
    va = np.asarray(va, dtype=np.float64).reshape(-1, 2)
    expr = np.asarray(expr).reshape(-1)
    if len(va) != len(expr):
        raise ValueError(f"va has {len(va)} frames but expr has {len(expr)}")
    expr = expr.astype(np.int64)
    if (expr >= num_classes).any():
        raise ValueError(f"expr contains class {int(expr.max())} but num_classes is {num_classes}")
    keep = (expr >= 0) & np.isfinite(va).all(axis=1)
    return va[keep], expr[keep]


def estimate_centroids(va, expr, num_classes: int) -> np.ndarray:
    """(K, 2) mean (valence, arousal) over frames with EXPR = k and a valid VA; NaN row for a class
    with none (docs/methods.md §4)."""
    va, expr = _joint(va, expr, num_classes)
    counts = np.bincount(expr, minlength=num_classes).astype(np.float64)
    sums = np.stack([np.bincount(expr, weights=va[:, d], minlength=num_classes) for d in range(2)], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts[:, None] > 0, sums / counts[:, None], np.nan)


def cost_matrix(centroids) -> np.ndarray:
    """(K, K) Euclidean ground cost ``C_ij = ||mu_i - mu_j||_2`` with an exact zero diagonal."""
    mu = np.asarray(centroids, dtype=np.float64)
    cost = np.linalg.norm(mu[:, None, :] - mu[None, :, :], axis=-1)
    np.fill_diagonal(cost, 0.0)
    return cost


def class_covariances(va, expr, num_classes: int) -> np.ndarray:
    """(K, 2, 2) empirical VA covariance per class (ddof = 1); zeros for one frame, NaN for none."""
    va, expr = _joint(va, expr, num_classes)
    covs = np.full((num_classes, 2, 2), np.nan)
    for k in range(num_classes):
        x = va[expr == k]
        if len(x) == 1:
            covs[k] = 0.0
        elif len(x) > 1:
            covs[k] = np.cov(x, rowvar=False, ddof=1)
    return covs


def _off_diagonal(cost: np.ndarray) -> np.ndarray:
    return cost[~np.eye(len(cost), dtype=bool)]


def _off_mean(cost: np.ndarray) -> float:
    vals = _off_diagonal(np.asarray(cost, dtype=np.float64))
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        raise ValueError("the cost matrix has no finite off-diagonal entry")
    return float(vals.mean())


def _closest_pair(cost: np.ndarray) -> tuple[int, int] | None:
    c = np.asarray(cost, dtype=np.float64).copy()
    c[np.tril_indices(len(c))] = np.inf
    c[np.isnan(c)] = np.inf
    if not np.isfinite(c).any():
        return None
    i, j = np.unravel_index(np.argmin(c), c.shape)
    return int(i), int(j)


# --- cost variants (docs/methods.md §5) --------------------------------------------------------------------

def derangement(k: int, seed: int) -> np.ndarray:
    """A uniformly random permutation of ``range(k)`` without fixed points (rejection sampling).

    Drawn from ``np.random.default_rng(seed)``; about e ~ 2.7 draws are needed on average.
    """
    if k < 2:
        raise ValueError(f"no derangement of {k} element(s) exists; need at least 2 classes")
    rng = np.random.default_rng(seed)
    identity = np.arange(k)
    while True:
        perm = rng.permutation(k)
        if (perm != identity).all():
            return perm


def permuted_cost(cost, seed: int) -> np.ndarray:
    """The permuted control ``C^perm_ij = C_{pi(i) pi(j)}`` with ``pi = derangement(K, seed)``.

    Same multiset of pairwise costs, assigned to the wrong pairs (study §3.7).
    """
    c = np.asarray(cost, dtype=np.float64)
    perm = derangement(len(c), seed)
    return c[np.ix_(perm, perm)]


def uniform_cost(cost) -> np.ndarray:
    """The uniform control: every off-diagonal entry = the mean of C's off-diagonal entries; zero diagonal."""
    c = np.asarray(cost, dtype=np.float64)
    out = np.full(c.shape, _off_mean(c))
    np.fill_diagonal(out, 0.0)
    return out


def _sqrtm_psd(mats: np.ndarray) -> np.ndarray:
    """Principal square root of symmetric PSD matrices (..., d, d) by symmetric eigendecomposition."""
    sym = (mats + np.swapaxes(mats, -1, -2)) / 2
    w, v = np.linalg.eigh(sym)
    w = np.sqrt(np.clip(w, 0.0, None))
    return (v * w[..., None, :]) @ np.swapaxes(v, -1, -2)


def gaussian_w2_cost(means, covs) -> np.ndarray:
    """(K, K) 2-Wasserstein distance between N(mu_i, Sigma_i) and N(mu_j, Sigma_j) (study Eq. 6).

    ``W2^2 = ||mu_i - mu_j||^2 + tr(Sigma_i + Sigma_j - 2 (Sigma_j^1/2 Sigma_i Sigma_j^1/2)^1/2)``;
    the cost is W2 (not W2^2), so equal covariances reduce it to ``||mu_i - mu_j||``.
    """
    mu = np.asarray(means, dtype=np.float64)
    cov = np.asarray(covs, dtype=np.float64)
    k = len(mu)
    if cov.shape != (k, mu.shape[1], mu.shape[1]):
        raise ValueError(f"covs must have shape {(k, mu.shape[1], mu.shape[1])}, got {cov.shape}")
    root = _sqrtm_psd(cov)                                        # Sigma_j^1/2, (K, d, d)
    inner = root[None, :, :, :] @ cov[:, None, :, :] @ root[None, :, :, :]  # [i, j] = S_j^1/2 S_i S_j^1/2
    cross = np.trace(_sqrtm_psd(inner), axis1=-2, axis2=-1)
    tr = np.trace(cov, axis1=-2, axis2=-1)
    bures2 = tr[:, None] + tr[None, :] - 2 * cross
    w2 = np.sqrt(np.clip(cost_matrix(mu) ** 2 + bures2, 0.0, None))
    np.fill_diagonal(w2, 0.0)
    return w2


def au_signatures(au, expr, num_classes: int) -> np.ndarray:
    """(K, n_AU) mean AU vector per class over frames with EXPR = k; NaN units are ignored per unit.

    A unit (or a whole class) with no valid label is NaN.
    """
    au = np.asarray(au, dtype=np.float64)
    expr = np.asarray(expr).astype(np.int64).reshape(-1)
    if len(au) != len(expr):
        raise ValueError(f"au has {len(au)} frames but expr has {len(expr)}")
    keep = expr >= 0
    au, expr = au[keep], expr[keep]
    valid = np.isfinite(au)
    onehot = np.eye(num_classes)[expr]                           # (N, K)
    sums = onehot.T @ np.where(valid, au, 0.0)
    counts = onehot.T @ valid.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def au_composite_cost(cost, au_signatures) -> np.ndarray:
    """The VA+AU cost of §6.2: ``(C + D) / 2``, ``D_ij = ||s_i - s_j||`` rescaled to C's off-diagonal mean."""
    c = np.asarray(cost, dtype=np.float64)
    s = np.asarray(au_signatures, dtype=np.float64)
    if len(s) != len(c):
        raise ValueError(f"{len(s)} AU signatures for a {len(c)}-class cost")
    d = cost_matrix(s)
    d_mean = _off_mean(d)
    if d_mean <= 0:
        raise ValueError("all AU signatures are identical; the AU distance cannot be rescaled")
    return (c + d * (_off_mean(c) / d_mean)) / 2


# --- geometry transfer by class name (RAF-DB, docs/methods.md §5 "imported") -------------------------------

# Spellings of the same expression across datasets, mapped to one canonical name.
CLASS_ALIASES: dict[str, str] = {
    "neutral": "neutral", "neutrality": "neutral",
    "happy": "happiness", "happiness": "happiness", "joy": "happiness",
    "sad": "sadness", "sadness": "sadness",
    "angry": "anger", "anger": "anger",
    "fear": "fear", "fearful": "fear", "afraid": "fear", "scared": "fear",
    "disgust": "disgust", "disgusted": "disgust",
    "surprise": "surprise", "surprised": "surprise",
    "contempt": "contempt", "contemptuous": "contempt",
    "other": "other",
}


def canonical_class_name(name: str) -> str:
    key = name.strip().lower()
    return CLASS_ALIASES.get(key, key)


def _class_map(source_class_names, target_class_names) -> list[int | None]:
    """For each target class, the index of the same expression among the source classes (or None)."""
    source = [canonical_class_name(n) for n in source_class_names]
    if len(set(source)) != len(source):
        raise ValueError(f"source class names are not distinct after aliasing: {list(source_class_names)}")
    return [source.index(canonical_class_name(n)) if canonical_class_name(n) in source else None
            for n in target_class_names]


def imported_cost(source_geometry, source_class_names, target_class_names) -> np.ndarray:
    """Carry a ground cost to another label order through a fixed class map by name.

    ``source_geometry`` is a ``Geometry`` or a (K_s, K_s) cost in the order of ``source_class_names``.
    Names match through ``CLASS_ALIASES`` ("Happy" = "Happiness", "Sad" = "Sadness", ...). A target
    class with no source counterpart (e.g. Contempt imported from Aff-Wild2) gets the source's
    off-diagonal mean to every other class (no geometric information), and 0 to itself.
    """
    cost = source_geometry.cost if isinstance(source_geometry, Geometry) else source_geometry
    cost = _fill_undefined(np.asarray(cost, dtype=np.float64))
    if cost.shape != (len(source_class_names),) * 2:
        raise ValueError(f"source cost has shape {cost.shape} for {len(source_class_names)} source classes")
    mapping = _class_map(source_class_names, target_class_names)
    if sum(m is not None for m in mapping) < 2:
        raise ValueError(f"fewer than two classes of {list(target_class_names)} have a counterpart in "
                         f"{list(source_class_names)}; nothing to import")
    fill = _off_mean(cost)
    k = len(mapping)
    out = np.full((k, k), fill)
    for a, i in enumerate(mapping):
        for b, j in enumerate(mapping):
            if i is not None and j is not None:
                out[a, b] = cost[i, j]
    np.fill_diagonal(out, 0.0)
    return out


# --- bootstrap (docs/methods.md §4) ------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class BootstrapResult:
    """Non-parametric bootstrap of the circumplex over the jointly labelled frames (docs/methods.md §4).

    ``radial_se[k]``: the radial standard error of centroid k, the root-mean-square distance of the
    resampled centroid from the point estimate, ``sqrt(mean_r ||mu*_rk - mu_k||^2)`` (the 2-D analogue
    of a standard deviation measured about the estimate, ``sqrt(tr Cov*(mu_k))``; resamples in which
    class k is absent are skipped). ``distance_ci[i, j]``: the percentile CI (``level``) of
    ``||mu*_i - mu*_j||``. A percentile CI of a distance is biased upward for nearly coincident
    centroids, so it need not contain the point estimate for a degenerate pair. ``unit``: what was
    resampled — "frames" (docs/methods.md §4) or "groups" (whole videos; see ``bootstrap_geometry``).
    """

    radial_se: np.ndarray      # (K,)
    distance_ci: np.ndarray    # (K, K, 2): low, high
    n_resamples: int
    n_joint: int
    level: float = 0.95
    unit: str = "frames"


def _resample_counts(rng: np.random.Generator, n: int, r: int) -> np.ndarray:
    """(r, n) multiplicities of each of n units in r resamples of size n with replacement."""
    draws = rng.integers(0, n, size=(r, n)) + (np.arange(r) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=r * n).reshape(r, n)


def bootstrap_geometry(va, expr, num_classes: int, n_resamples: int = 1000, seed: int = 0,
                       level: float = 0.95, groups=None) -> BootstrapResult:
    """Bootstrap the centroids over the jointly labelled frames (vectorised; see ``BootstrapResult``).

    Each resample draws n frames with replacement; its class sums are one matrix product of the
    multiplicity matrix with the one-hot-weighted VA, so 1000 resamples of 5000 frames take ~0.1 s.
    ``groups`` (one id per frame, e.g. the video): resample whole groups instead of frames (a cluster
    bootstrap). Frames of one video are strongly correlated, so the frame bootstrap of docs/methods.md §4
    understates the standard errors of video data; the group bootstrap does not.
    """
    va = np.asarray(va, dtype=np.float64).reshape(-1, 2)
    expr_arr = np.asarray(expr).reshape(-1)
    keep = (expr_arr.astype(np.int64) >= 0) & np.isfinite(va).all(axis=1)
    va, expr = _joint(va, expr_arr, num_classes)
    n, k = len(va), num_classes
    unit = "frames" if groups is None else "groups"
    point = estimate_centroids(va, expr, k)
    if n == 0:
        return BootstrapResult(np.full(k, np.nan), np.full((k, k, 2), np.nan), n_resamples, 0, level, unit)
    onehot = np.eye(k)[expr]                                                  # (n, K)
    design = np.concatenate([onehot, onehot * va[:, :1], onehot * va[:, 1:]], axis=1)  # (n, 3K)
    if groups is not None:
        groups = np.asarray(groups).reshape(-1)
        if len(groups) != len(keep):
            raise ValueError(f"groups has {len(groups)} entries but va has {len(keep)} frames")
        _, gid = np.unique(groups[keep], return_inverse=True)
        design = np.stack([np.bincount(gid, weights=col, minlength=gid.max() + 1) for col in design.T],
                          axis=1)                                             # per-group sums (G, 3K)
    units = len(design)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_resamples, 4_000_000 // units))   # bound the (chunk, units) count matrix
    boot = []
    for start in range(0, n_resamples, chunk):
        stats = _resample_counts(rng, units, min(chunk, n_resamples - start)) @ design  # (r, 3K)
        counts = stats[:, :k]
        with np.errstate(invalid="ignore", divide="ignore"):
            boot.append(np.where(counts[..., None] > 0,
                                 np.stack([stats[:, k:2 * k], stats[:, 2 * k:]], axis=-1) / counts[..., None],
                                 np.nan))
    mu = np.concatenate(boot)                                                 # (R, K, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns for classes without frames
        radial_se = np.sqrt(np.nanmean(((mu - point) ** 2).sum(-1), axis=0))
        dist = np.linalg.norm(mu[:, :, None, :] - mu[:, None, :, :], axis=-1)  # (R, K, K)
        alpha = (1 - level) / 2
        ci = np.nanpercentile(dist, [100 * alpha, 100 * (1 - alpha)], axis=0)  # (2, K, K)
    ci = np.moveaxis(ci, 0, -1)
    idx = np.arange(k)
    ci[idx, idx] = 0.0
    return BootstrapResult(radial_se, ci, n_resamples, n, level, unit)


# --- representational similarity (docs/methods.md §7, study §6.1) ------------------------------------------

@dataclass(frozen=True)
class RSAResult:
    rho: float       # Spearman rho between prototype cosine distances and C over the class pairs
    pvalue: float    # scipy.stats.spearmanr's two-sided p-value (the paired test across seeds is separate)
    n_pairs: int


def representational_similarity(features, labels, cost, classes=None) -> RSAResult:
    """Spearman rho between class-prototype cosine distances and the circumplex cost (docs/methods.md §7).

    Prototype = mean feature vector of a class; the pairs are the K'(K'-1)/2 pairs of ``classes``
    (default: every class with at least one frame in ``labels`` and finite costs). NaN when fewer than
    3 pairs, or when either distance vector is constant.
    """
    from scipy.stats import spearmanr

    feats = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    c = np.asarray(cost, dtype=np.float64)
    if len(feats) != len(labels):
        raise ValueError(f"{len(feats)} feature rows but {len(labels)} labels")
    if classes is None:
        present = np.bincount(labels[labels >= 0], minlength=len(c))[: len(c)] > 0
        classes = [k for k in range(len(c)) if present[k] and np.isfinite(np.delete(c[k], k)).any()]
    classes = list(classes)
    protos = []
    for k in classes:
        sel = labels == k
        if not sel.any():
            raise ValueError(f"class {k} has no frame to build its prototype from")
        protos.append(feats[sel].mean(axis=0))
    protos = np.asarray(protos)
    unit = protos / np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)
    iu = np.triu_indices(len(classes), k=1)
    feat_dist = (1 - unit @ unit.T)[iu]
    sub = c[np.ix_(classes, classes)][iu]
    ok = np.isfinite(sub)
    feat_dist, sub = feat_dist[ok], sub[ok]
    n_pairs = int(len(sub))
    if n_pairs < 3 or np.ptp(feat_dist) == 0 or np.ptp(sub) == 0:
        return RSAResult(float("nan"), float("nan"), n_pairs)
    res = spearmanr(feat_dist, sub)
    return RSAResult(float(res.statistic), float(res.pvalue), n_pairs)


# --- the geometry of one training split ------------------------------------------------------------

def _to_jsonable(x: Any) -> Any:
    """numpy -> nested lists with None for NaN (strict JSON)."""
    if isinstance(x, np.ndarray):
        return _to_jsonable(x.tolist())
    if isinstance(x, (list, tuple)):
        return [_to_jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _from_jsonable(x: Any) -> np.ndarray:
    def fix(v):
        if isinstance(v, list):
            return [fix(u) for u in v]
        return np.nan if v is None else v

    return np.asarray(fix(x), dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Geometry:
    """The circumplex of one training split (docs/methods.md §4). Arrays are in the label space's class order."""

    class_names: tuple[str, ...]
    centroids: np.ndarray               # (K, 2); NaN row for a class without joint frames
    cost: np.ndarray                    # (K, K) Euclidean; NaN entries for such a class
    radial_se: np.ndarray               # (K,), see BootstrapResult
    distance_ci: np.ndarray             # (K, K, 2) percentile CI of every pairwise distance
    isolation: np.ndarray               # (K,) min_{j != k} C_kj
    covariances: np.ndarray             # (K, 2, 2) empirical VA covariance per class
    au_signatures: np.ndarray | None    # (K, 12) mean AU vector per class, None without AU labels
    n_joint: int                        # frames carrying both EXPR and VA
    degenerate_pair: tuple[int, int] | None  # the closest pair (i, j), i < j
    class_counts: np.ndarray | None = None   # (K,) jointly labelled frames per class
    n_boot: int = 0
    bootstrap_unit: str = "frames"           # what the bootstrap resampled: "frames" or "groups"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def finite_cost(self) -> np.ndarray:
        """``cost`` with the entries of classes without a centroid filled by the mean of the defined
        off-diagonal entries (what a trial trains with and error metrics can score with)."""
        return _fill_undefined(self.cost)

    @property
    def degenerate_pair_names(self) -> tuple[str, str] | None:
        if self.degenerate_pair is None:
            return None
        i, j = self.degenerate_pair
        return self.class_names[i], self.class_names[j]

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_names": list(self.class_names),
            "centroids": _to_jsonable(self.centroids),
            "cost": _to_jsonable(self.cost),
            "radial_se": _to_jsonable(self.radial_se),
            "distance_ci": _to_jsonable(self.distance_ci),
            "isolation": _to_jsonable(self.isolation),
            "covariances": _to_jsonable(self.covariances),
            "au_signatures": None if self.au_signatures is None else _to_jsonable(self.au_signatures),
            "n_joint": int(self.n_joint),
            "degenerate_pair": None if self.degenerate_pair is None else list(self.degenerate_pair),
            "class_counts": None if self.class_counts is None else _to_jsonable(self.class_counts),
            "n_boot": int(self.n_boot),
            "bootstrap_unit": self.bootstrap_unit,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_json(cls, data: str | dict[str, Any]) -> Geometry:
        d = json.loads(data) if isinstance(data, str) else data
        pair = d.get("degenerate_pair")
        counts = d.get("class_counts")
        return cls(
            class_names=tuple(d["class_names"]),
            centroids=_from_jsonable(d["centroids"]),
            cost=_from_jsonable(d["cost"]),
            radial_se=_from_jsonable(d["radial_se"]),
            distance_ci=_from_jsonable(d["distance_ci"]),
            isolation=_from_jsonable(d["isolation"]),
            covariances=_from_jsonable(d["covariances"]),
            au_signatures=None if d.get("au_signatures") is None else _from_jsonable(d["au_signatures"]),
            n_joint=int(d["n_joint"]),
            degenerate_pair=None if pair is None else (int(pair[0]), int(pair[1])),
            class_counts=None if counts is None else _from_jsonable(counts).astype(np.int64),
            n_boot=int(d.get("n_boot", 0)),
            bootstrap_unit=d.get("bootstrap_unit", "frames"),
        )


def geometry_from_arrays(class_names, va, expr, au=None, n_boot: int = 1000, seed: int = 0,
                         groups=None) -> Geometry | None:
    """``Geometry`` from label arrays; None when no frame carries both EXPR and VA.

    ``groups`` (one id per frame): bootstrap whole groups rather than frames (``bootstrap_geometry``).
    """
    k = len(class_names)
    joint_va, joint_expr = _joint(va, expr, k)
    if len(joint_va) == 0:
        return None
    centroids = estimate_centroids(joint_va, joint_expr, k)
    cost = cost_matrix(centroids)
    boot = bootstrap_geometry(va, expr, k, n_resamples=n_boot, seed=seed, groups=groups)
    sigs = None
    if au is not None:
        au = np.asarray(au, dtype=np.float64)
        expr_all = np.asarray(expr).astype(np.int64)
        if (np.isfinite(au).any(axis=1) & (expr_all >= 0)).any():
            sigs = au_signatures(au, expr_all, k)
    return Geometry(
        class_names=tuple(class_names),
        centroids=centroids,
        cost=cost,
        radial_se=boot.radial_se,
        distance_ci=boot.distance_ci,
        isolation=class_isolation(cost),
        covariances=class_covariances(joint_va, joint_expr, k),
        au_signatures=sigs,
        n_joint=len(joint_va),
        degenerate_pair=_closest_pair(cost),
        class_counts=np.bincount(joint_expr, minlength=k),
        n_boot=n_boot,
        bootstrap_unit=boot.unit,
    )


def geometry_from_record(record: dict[str, Any]) -> Geometry:
    """A ``Geometry`` from a trial's ``circumplex.json`` (``circumplex_record``), e.g. to import it.

    The record carries no covariances or AU signatures (NaN / None here); its ``true_cost`` is the cost.
    """
    missing = [key for key in ("class_names", "centroids", "true_cost") if record.get(key) is None]
    if missing:
        raise ValueError(f"not a circumplex record: {', '.join(missing)} missing")
    names = tuple(record["class_names"])
    k = len(names)
    cost = _from_jsonable(record["true_cost"])
    if cost.shape != (k, k):
        raise ValueError(f"true_cost has shape {cost.shape} for {k} classes")

    def field(key: str, shape: tuple[int, ...]) -> np.ndarray:
        return _from_jsonable(record[key]) if record.get(key) is not None else np.full(shape, np.nan)

    pair = record.get("degenerate_pair")
    return Geometry(
        class_names=names,
        centroids=field("centroids", (k, 2)),
        cost=cost,
        radial_se=field("radial_se", (k,)),
        distance_ci=field("distance_ci", (k, k, 2)),
        isolation=class_isolation(cost),
        covariances=np.full((k, 2, 2), np.nan),
        au_signatures=None,
        n_joint=0,
        degenerate_pair=_closest_pair(cost) if pair is None else (int(pair[0]), int(pair[1])),
    )


def estimate_geometry(index_df, label_space, n_boot: int = 1000, seed: int = 0,
                      bootstrap_unit: str = "frames") -> Geometry | None:
    """The circumplex of an index DataFrame (INDEX CONTRACT columns) in ``label_space``'s class order.

    None when the dataset has no frame with both EXPR and VA (e.g. RAF-DB). AU signatures are
    estimated when the label space has AU labels and some EXPR frame carries them.
    ``bootstrap_unit``: "frames" (docs/methods.md §4) or "groups" (resample whole videos by the ``group``
    column; honest standard errors for temporally correlated frames). The estimates do not depend on it.
    """
    if bootstrap_unit not in ("frames", "groups"):
        raise ValueError(f"bootstrap_unit must be 'frames' or 'groups', got {bootstrap_unit!r}")
    if not getattr(label_space, "has_va", True) or len(index_df) == 0:
        return None
    va = index_df[["valence", "arousal"]].to_numpy(dtype=np.float64)
    expr = index_df["expr"].to_numpy()
    au = None
    if getattr(label_space, "has_au", False) and all(a in index_df.columns for a in AU_NAMES):
        au = index_df[list(AU_NAMES)].to_numpy(dtype=np.float64)
    groups = index_df["group"].to_numpy() if bootstrap_unit == "groups" else None
    return geometry_from_arrays(label_space.class_names, va, expr, au, n_boot=n_boot, seed=seed, groups=groups)


def import_geometry(source: Geometry, target_class_names) -> Geometry:
    """A source geometry carried into the target label order by class name (see ``imported_cost``).

    Target classes without a source counterpart get NaN centroid, covariance and SE, and the
    off-diagonal-mean cost of ``imported_cost``.
    """
    mapping = _class_map(source.class_names, target_class_names)
    k = len(mapping)

    def take(arr, shape):
        out = np.full((k, *shape), np.nan)
        for a, i in enumerate(mapping):
            if i is not None:
                out[a] = arr[i]
        return out

    cost = imported_cost(source, source.class_names, target_class_names)
    ci = np.full((k, k, 2), np.nan)
    for a, i in enumerate(mapping):
        for b, j in enumerate(mapping):
            if i is not None and j is not None:
                ci[a, b] = source.distance_ci[i, j]
    counts = None
    if source.class_counts is not None:
        counts = np.array([0 if i is None else int(source.class_counts[i]) for i in mapping])
    return Geometry(
        class_names=tuple(target_class_names),
        centroids=take(source.centroids, (2,)),
        cost=cost,
        radial_se=take(source.radial_se, ()),
        distance_ci=ci,
        isolation=class_isolation(cost),
        covariances=take(source.covariances, (2, 2)),
        au_signatures=None,
        n_joint=source.n_joint,
        degenerate_pair=_closest_pair(cost),
        class_counts=counts,
        n_boot=source.n_boot,
        bootstrap_unit=source.bootstrap_unit,
    )


# --- the source of an imported geometry (method.imported_from) ------------------------------------

def _preset_label_space(preset: str):
    from trainers.data.labels import LABEL_SPACES

    # same rule as TrialConfig.label_space
    return LABEL_SPACES["affectnet" if preset == "affectnet_like" else "affwild2"]


@functools.lru_cache(maxsize=8)
def _synthetic_geometry(preset: str) -> Geometry:
    # (not ``from trainers.data import synthetic``: once the submodule is imported, that name is the module)
    from trainers.data.synthetic import PRESETS, synthetic

    if preset not in PRESETS:
        raise ValueError(f"method.imported_from: unknown synthetic preset {preset!r} "
                         f"(choose from {', '.join(sorted(PRESETS))})")
    # labels do not depend on the image size (trainers.data.synthetic), so draw the smallest images
    frames = synthetic(preset, n=6000, seed=0, image_size=8)
    geometry = estimate_geometry(frames, _preset_label_space(preset), seed=0)
    if geometry is None:
        raise ValueError(f"synthetic preset {preset!r} has no frame with both EXPR and VA to import from")
    return geometry


def load_import_source(imported_from: str) -> Geometry:
    """The source geometry of ``cost: imported`` in its own class order.

    ``"synthetic:<preset>"``: estimated on ``synthetic(<preset>, n=6000, seed=0)``. Otherwise a path to
    a trial's ``circumplex.json`` (``class_names``, ``centroids``, ``true_cost``) or to a
    ``Geometry.to_json()`` file.
    """
    if imported_from.startswith("synthetic:"):
        return _synthetic_geometry(imported_from.split(":", 1)[1])
    path = Path(os.path.expandvars(imported_from)).expanduser()
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"method.imported_from: cannot read {path} ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"method.imported_from: {path} is not valid JSON ({e})") from None
    try:
        if "cost" in data and "covariances" in data:
            return Geometry.from_json(data)
        return geometry_from_record(data)
    except (KeyError, ValueError) as e:
        raise ValueError(f"method.imported_from: {path}: {e}") from None


# --- the cost a trial trains with ------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class CostChoice:
    """The ground cost of one trial (docs/methods.md §5; a source and a control, ``trainers.costs``).

    ``variant``: the cost's label (a shorthand such as ``permuted``, else e.g. ``uniform(file:x.json)``).
    ``matrix``: (K, K) cost fed to ``ot_loss`` (None for ``none``; for ``instance`` the class-level
    fallback rows). ``derangement``: pi for the ``permuted`` control. ``circumplex``: the unperturbed
    circumplex — the TRUE cost that error-structure metrics are scored under (§6).
    ``centroids``: (K, 2) centroids for ``instance`` rows (None without own VA geometry).
    ``source``: the geometry the cost came from in this label order (the dataset's own, or the imported
    one); ``trainers.circumplex.resolve_circumplex`` sets it so that ``circumplex_record`` can
    describe an imported circumplex.
    ``cost_source`` / ``control`` / ``source_cost`` / ``source_centroids`` / ``source_meta``: the
    source's name, the control, the source's own matrix (before the control) and centroids, and where
    it came from (a file's path and sha256, a function's name). ``per_frame``: instance rows.
    """

    variant: str
    matrix: np.ndarray | None
    derangement: np.ndarray | None = None
    circumplex: np.ndarray | None = None
    centroids: np.ndarray | None = None
    source: Geometry | None = None
    cost_source: str | None = None
    control: str = "none"
    source_cost: np.ndarray | None = None
    source_centroids: np.ndarray | None = None
    source_meta: dict[str, Any] | None = None
    per_frame: bool = False


def _fill_undefined(cost: np.ndarray) -> np.ndarray:
    """NaN entries (classes without a centroid) -> the mean of the defined off-diagonal entries."""
    c = np.asarray(cost, dtype=np.float64).copy()
    if np.isnan(c).any():
        c[np.isnan(c)] = _off_mean(c)
        np.fill_diagonal(c, 0.0)
    return c


def builtin_source_cost(source: str, geometry: Geometry | None, imported: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(source matrix, circumplex, centroids) of a built-in cost source (docs/methods.md §5).

    ``geometry``: the training split's circumplex (None for a dataset without VA). ``imported``: a
    (K, K) cost already in this label order (``imported_cost``); it is the ``imported`` source, and
    the circumplex that ``circumplex`` / ``instance`` are built from when the dataset has no geometry
    of its own. ``centroids`` are the source's places in valence-arousal where it has them (the
    dataset's own centroids for the circumplex and its VA-derived variants). Raises ValueError when a
    source cannot be built from what is available.
    """
    own = None if geometry is None else _fill_undefined(geometry.cost)
    imp = None if imported is None else _fill_undefined(np.asarray(imported, dtype=np.float64))
    if own is not None and imp is not None and imp.shape != own.shape:
        raise ValueError(f"imported cost has shape {imp.shape} but the dataset has {len(own)} classes")
    base = own if own is not None else imp
    centroids = None if geometry is None else geometry.centroids
    if source == "imported":
        if imp is None:
            raise ValueError("cost 'imported' needs method.imported_from (e.g. 'synthetic:affectnet_like' "
                             "or a circumplex.json path)")
        return imp, base, None
    if base is None:
        raise ValueError(f"cost {source!r} needs a circumplex, but this dataset has no frame with both "
                         "EXPR and VA; use cost: imported with method.imported_from")
    if source in ("circumplex", "instance"):
        return base, base, centroids
    if geometry is None:
        raise ValueError(f"cost {source!r} needs the dataset's own VA annotations (class covariances / AU "
                         "signatures); it cannot be imported")
    if source == "gaussian_w2":
        return _fill_undefined(gaussian_w2_cost(geometry.centroids, geometry.covariances)), base, centroids
    if source == "va_au":
        if geometry.au_signatures is None:
            raise ValueError("cost 'va_au' needs AU labels on the training split; this dataset has none")
        return _fill_undefined(au_composite_cost(geometry.cost, geometry.au_signatures)), base, centroids
    raise ValueError(f"unknown built-in cost source {source!r}")


def circumplex_record(geometry: Geometry | None, choice: CostChoice,
                      true_geometry: Geometry | None = None) -> dict[str, Any]:
    """The content of a trial's ``circumplex.json`` (strict-JSON lists; NaN written as null).

    ``true_geometry``: the geometry whose cost is the TRUE circumplex for error-structure scoring when
    it is not ``geometry`` (e.g. the imported geometry on RAF-DB); defaults to ``geometry``. The
    descriptive fields come from the first of ``geometry``, ``true_geometry``, ``choice.source`` that
    is given. ``true_cost`` is finite: undefined entries are filled as in the training cost.
    """
    desc = next((x for x in (geometry, true_geometry, choice.source) if x is not None), None)
    truth = next((x for x in (true_geometry, geometry, choice.source) if x is not None), None)
    if truth is not None:
        true_cost = _fill_undefined(truth.cost)
    else:
        true_cost = choice.circumplex
    pair = None if desc is None or desc.degenerate_pair is None else list(desc.degenerate_pair)
    return {
        "class_names": None if desc is None else list(desc.class_names),
        "centroids": None if desc is None else _to_jsonable(desc.centroids),
        "radial_se": None if desc is None else _to_jsonable(desc.radial_se),
        "true_cost": None if true_cost is None else _to_jsonable(true_cost),
        "cost_used": None if choice.matrix is None else _to_jsonable(choice.matrix),
        "cost_variant": choice.variant,
        "cost_source": choice.cost_source,
        "cost_control": choice.control,
        "source_cost": None if choice.source_cost is None else _to_jsonable(choice.source_cost),
        "source_centroids": None if choice.source_centroids is None else _to_jsonable(choice.source_centroids),
        "source_meta": choice.source_meta or None,
        "derangement": None if choice.derangement is None else [int(i) for i in choice.derangement],
        "degenerate_pair": pair,
        "degenerate_pair_names": None if pair is None else [desc.class_names[i] for i in pair],
        "isolation": None if desc is None else _to_jsonable(desc.isolation),
        "distance_ci": None if desc is None else _to_jsonable(desc.distance_ci),
    }
