"""Dual-domain affect label fusion (Neo et al., dual-domain affect fusion; docs/methods.md §9).

Each training frame's VA annotation is turned into a *mixed label* over the K classes — from its
distances to the class centroids (Euclidean, Eq. 3) or from the posterior of a Gaussian mixture
with one fixed component per class (GMM, Eq. 2) — and fused with the one-hot label:
``y = α onehot + (1 - α) mixed`` (Eq. 4). The EXPR objective is the paper's class-weighted
``W·CE(y, p) + W·(1 - cos(y, p))`` (Eqs. 5-7) plus its weighted VA regression ``W·||x - x̂||²``
(Eq. 8).

Choices this file makes (docs/methods.md §9 leaves them open):

- *Where the VA L2 goes.* The shared recipe keeps its CCC task loss for VA (docs/methods.md §2: only the
  EXPR side changes between conditions), and the paper's weighted L2 is added inside the EXPR
  objective with weight ``va_l2`` (default 1.0, the paper's Eq. 9; 0 drops it). It is averaged over
  the batch's VA-valid frames; a frame with VA but no EXPR label has no true class, so its weight
  W is 1.
- *Frames without their own VA* (Aff-Wild2 labels are partial). The mixed label is evaluated at the
  class centroid μ_y, the class's own point in VA space: the GMM gives the class's posterior at
  its centre, the Euclidean label is the limit one-hot(y) (d_y = 0, see the guard below). A class
  without any VA-labelled frame gives one-hot(y).
- *Guard d_k = 0.* ``s_k = max_j d_j / d_k`` diverges; its limit puts all mass on the classes at
  distance 0, which is what the label then is.
- *"Within one standard deviation".* Per class, frames with ``|v - m_v| <= s_v`` and
  ``|a - m_a| <= s_a`` (class mean m, population std s); if no frame passes both (possible in 2-D),
  the class keeps all its frames. The covariance of the kept frames is the population one
  (ddof 0) plus 1e-6·I so that a degenerate class still has a density.
- *Prior* ``π_k = N_k / N`` over all EXPR-labelled training frames (not only those with VA).
- *Sampling: natural (the paper's and docs/methods.md §9's).* The paper trains on the natural class
  distribution with ``W_k = N_max/N_k`` as its one imbalance correction; on top of the shared
  inverse-frequency oversampler W_k would compensate twice. So by default (``natural_sampling:
  true``) frames are drawn without class weights; ``natural_sampling: false`` uses the shared
  oversampler as well. The matched-seed hash does not depend on the sampler, so the method stays
  paired with the other conditions of its seed.

The statistics and the mixed label of every training frame depend on the labels only, so they are
computed once (on the split *after* label noise, as the paper's noisy-label protocol does) and kept
as an (N, K) table indexed by ``batch["index"]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from trainers.methods.base import Method, MethodOptions, register_method

__all__ = ["ClassVAStatistics", "DualFusion", "class_va_statistics", "euclidean_mixed_labels",
           "fused_labels", "gmm_mixed_labels", "mixed_label_table"]

COVARIANCE_RIDGE = 1e-6


@dataclass(frozen=True)
class ClassVAStatistics:
    """Per-class VA statistics of docs/methods.md §9; a class without VA frames has NaN centroid/covariance."""

    centroids: np.ndarray    # (K, 2)
    covariances: np.ndarray  # (K, 2, 2), population covariance of the frames within one std
    priors: np.ndarray       # (K,) N_k / N over all EXPR-labelled frames

    @property
    def defined(self) -> np.ndarray:
        return np.isfinite(self.centroids).all(axis=1)


def class_va_statistics(va, expr, num_classes: int, class_counts=None) -> ClassVAStatistics:
    """Centroid and covariance per class from the frames within one standard deviation of the
    class mean in both v and a (docs/methods.md §9); prior from ``class_counts`` (default: ``expr``)."""
    va = np.asarray(va, dtype=np.float64).reshape(-1, 2)
    expr = np.asarray(expr).astype(np.int64).reshape(-1)
    joint = (expr >= 0) & np.isfinite(va).all(axis=1)
    centroids = np.full((num_classes, 2), np.nan)
    covariances = np.full((num_classes, 2, 2), np.nan)
    for k in range(num_classes):
        x = va[joint & (expr == k)]
        if len(x) == 0:
            continue
        within = (np.abs(x - x.mean(axis=0)) <= x.std(axis=0)).all(axis=1)
        kept = x[within] if within.any() else x
        centroids[k] = kept.mean(axis=0)
        centred = kept - centroids[k]
        covariances[k] = centred.T @ centred / len(kept) + COVARIANCE_RIDGE * np.eye(2)
    if class_counts is None:
        class_counts = np.bincount(expr[expr >= 0], minlength=num_classes)
    counts = np.asarray(class_counts, dtype=np.float64)
    priors = counts / max(counts.sum(), 1.0)
    return ClassVAStatistics(centroids=centroids, covariances=covariances, priors=priors)


def euclidean_mixed_labels(va, centroids, squared: bool = False) -> np.ndarray:
    """(N, K) ``s_k = max_j d_j / d_k`` normalised to sum 1, ``d_k = ||x - μ_k||`` (squared with
    ``squared=True``, the paper's Eq. 3). Classes without a centroid get 0; where some ``d_k = 0``
    the label is uniform over those classes (the limit of the formula)."""
    va = np.asarray(va, dtype=np.float64).reshape(-1, 2)
    mu = np.asarray(centroids, dtype=np.float64)
    defined = np.isfinite(mu).all(axis=1)
    d = np.linalg.norm(va[:, None, :] - np.where(defined[:, None], mu, 0.0)[None], axis=-1)
    if squared:
        d = d ** 2
    d = np.where(defined[None], d, np.nan)
    at_centroid = defined[None] & (d <= 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.nanmax(d, axis=1, keepdims=True) / d
    s = np.where(defined[None] & ~at_centroid, s, 0.0)
    labels = s / s.sum(axis=1, keepdims=True)
    hit = at_centroid.any(axis=1)
    labels[hit] = at_centroid[hit] / at_centroid[hit].sum(axis=1, keepdims=True)
    return labels


def gmm_mixed_labels(va, centroids, covariances, priors) -> np.ndarray:
    """(N, K) posterior ``π_k N(x|μ_k,Σ_k) / Σ_j π_j N(x|μ_j,Σ_j)`` with fixed parameters (Eq. 2);
    classes without a centroid or with zero prior get 0."""
    va = np.asarray(va, dtype=np.float64).reshape(-1, 2)
    mu = np.asarray(centroids, dtype=np.float64)
    cov = np.asarray(covariances, dtype=np.float64)
    prior = np.asarray(priors, dtype=np.float64)
    use = np.isfinite(mu).all(axis=1) & np.isfinite(cov).all(axis=(1, 2)) & (prior > 0)
    log_joint = np.full((len(va), len(mu)), -np.inf)
    for k in np.flatnonzero(use):
        diff = va - mu[k]
        maha = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov[k]), diff)
        _, logdet = np.linalg.slogdet(cov[k])
        log_joint[:, k] = np.log(prior[k]) - 0.5 * (maha + logdet) - np.log(2 * np.pi)
    log_joint -= log_joint.max(axis=1, keepdims=True)
    post = np.exp(log_joint)
    return post / post.sum(axis=1, keepdims=True)


def mixed_label_table(va, expr, stats: ClassVAStatistics, mixed: str = "euclidean",
                      squared: bool = False) -> np.ndarray:
    """(N, K) mixed label of every frame: from its own VA, else from its class centroid, else
    one-hot; zeros for a frame without an EXPR label and without VA (never used)."""
    va = np.asarray(va, dtype=np.float64).reshape(-1, 2)
    expr = np.asarray(expr).astype(np.int64).reshape(-1)
    num_classes = len(stats.centroids)

    def label(points: np.ndarray) -> np.ndarray:
        if mixed == "gmm":
            return gmm_mixed_labels(points, stats.centroids, stats.covariances, stats.priors)
        return euclidean_mixed_labels(points, stats.centroids, squared=squared)

    table = np.zeros((len(va), num_classes))
    own = np.isfinite(va).all(axis=1)
    if own.any():
        table[own] = label(va[own])
    borrowed = ~own & (expr >= 0)
    if borrowed.any():
        y = expr[borrowed]
        rows = np.eye(num_classes)[y]
        has_centroid = stats.defined[y]
        if has_centroid.any():
            rows[has_centroid] = label(stats.centroids[y[has_centroid]])
        table[borrowed] = rows
    return table


def fused_labels(onehot: torch.Tensor, mixed: torch.Tensor, alpha: float) -> torch.Tensor:
    """``y = α onehot + (1 - α) mixed`` (Eq. 4)."""
    return alpha * onehot + (1 - alpha) * mixed


@register_method("dual_fusion")
class DualFusion(Method):
    """Fused one-hot/VA-mixed labels with the paper's weighted CE + cosine + VA L2 (docs/methods.md §9)."""

    class Options(MethodOptions):
        mixed: Literal["euclidean", "gmm"] = "euclidean"  # how a VA point becomes a mixed label
        alpha: float = Field(0.5, ge=0.0, le=1.0)         # α of y = α onehot + (1 - α) mixed (Eq. 4)
        squared: bool = False                             # squared distances in the Euclidean label
        va_l2: float = Field(1.0, ge=0.0)                 # weight of the VA L2 term (Eq. 9)
        natural_sampling: bool = True                     # uniform frames, as the paper: W_k alone compensates

    needs_labels = ("va",)

    def __init__(self, ctx, **kwargs) -> None:
        super().__init__(ctx, **kwargs)
        o = self.options
        index = ctx.train_index
        va = index[["valence", "arousal"]].to_numpy(np.float64)
        expr = index["expr"].to_numpy()
        if not np.isfinite(va).all(axis=1).any():
            raise ValueError("method dual_fusion needs VA labels on the training split (docs/methods.md §9)")
        self.stats = class_va_statistics(va, expr, ctx.num_classes, ctx.class_counts)
        table = mixed_label_table(va, expr, self.stats, o["mixed"], bool(o["squared"]))
        self.mixed_table = torch.as_tensor(table, dtype=torch.float32)
        counts = np.asarray(ctx.class_counts, dtype=np.float64)
        # Eq. 5: W_k = N_max / N_k; a class absent from training is never a true class (weight 0)
        self.class_weight = torch.as_tensor(np.where(counts > 0, counts.max() / np.maximum(counts, 1), 0.0),
                                            dtype=torch.float32)

    def _tables(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mixed_table.device != device:
            self.mixed_table = self.mixed_table.to(device)
            self.class_weight = self.class_weight.to(device)
        return self.mixed_table, self.class_weight

    def expr_objective(self, out, batch, mask, state):
        table, class_weight = self._tables(out["expr"].device)
        logits = out["expr"].float()
        y = batch["expr"]
        log_p = F.log_softmax(logits, dim=-1)
        target = fused_labels(F.one_hot(y, logits.shape[-1]).float(), table[batch["index"]],
                              float(self.options["alpha"]))
        w = class_weight[y]
        ce = -(target * log_p).sum(-1)                                        # Eq. 6
        cos = F.cosine_similarity(target, log_p.exp(), dim=-1)                # Eq. 7
        m = mask.float()
        loss = (w * (ce + 1 - cos) * m).sum() / m.sum().clamp(min=1)
        if self.options["va_l2"] > 0 and batch["n"]["va"] > 0:                # Eq. 8
            vm = batch["va_mask"].float()
            w_va = torch.where(mask, w, torch.ones_like(w))  # VA without EXPR: no true class, W = 1
            sq = ((out["va"].float() - batch["va"]) ** 2).sum(-1)
            loss = loss + self.options["va_l2"] * (w_va * sq * vm).sum() / vm.sum().clamp(min=1)
        return loss

    def sampling(self):
        return "natural" if self.options["natural_sampling"] else None
