"""The circumplex-cost OT term and the prediction-level consistency term (docs/methods.md §5, study §3.4-3.6).

``ot_loss`` is the linear Wasserstein case: the target is a point mass at the true class, so the
transport plan is trivial and ``L_OT = sum_k p_k C_{k,y}`` (Eq. 4; no Sinkhorn). ``OTTerm`` is what a
``Method`` adds to its EXPR loss: ``lam * L_OT + consistency * L_cons`` on the right frames, with the
cost the trial's ``trainers.circumplex.TrialCircumplex`` chose.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainers.geometry import CostChoice, Geometry, circumplex_record

__all__ = ["OTTerm", "build_ot_term", "consistency_loss", "instance_cost_rows", "ot_loss"]


def ot_loss(logits: torch.Tensor, target: torch.Tensor, cost: torch.Tensor, *,
            per_frame: bool | None = None) -> torch.Tensor:
    """Batch mean of ``sum_k p_k C_{k,y}`` with ``p = softmax(logits)`` (docs/methods.md §5, Eq. 4).

    ``cost`` is a (K, K) class cost indexed ``[k, y]`` (column ``C_{., y}`` taken per frame) or a (B, K)
    per-frame cost (the ``instance`` variant). A square (K, K) cost is read as the class cost unless
    ``per_frame=True`` (needed only when B == K). The gradient w.r.t. the logits is
    ``p_k (C_{k,y} - c_bar) / B`` with ``c_bar = sum_j p_j C_{j,y}`` (Eq. 5). Computed in float32.
    """
    return _frame_cost(logits, target, cost, per_frame).mean()


def _frame_cost(logits: torch.Tensor, target: torch.Tensor, cost: torch.Tensor,
                per_frame: bool | None) -> torch.Tensor:
    """(B,) expected transport cost ``sum_k p_k C_{k,y}`` of each frame."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be (B, K), got shape {tuple(logits.shape)}")
    b, k = logits.shape
    cost = torch.as_tensor(cost, device=logits.device).float()
    if per_frame is None:
        per_frame = cost.shape != (k, k)
    if per_frame:
        if cost.shape != (b, k):
            raise ValueError(f"per-frame cost must be (B, K) = {(b, k)}, got {tuple(cost.shape)}")
        rows = cost
    else:
        if cost.shape != (k, k):
            raise ValueError(f"class cost must be (K, K) = {(k, k)}, got {tuple(cost.shape)}")
        rows = cost.index_select(1, target.long()).T          # row b = C_{., y_b}
    return (F.softmax(logits.float(), dim=-1) * rows).sum(-1)


def instance_cost_rows(va: torch.Tensor, va_valid: torch.Tensor, target: torch.Tensor,
                       centroids: torch.Tensor | None, cost: torch.Tensor) -> torch.Tensor:
    """(B, K) instance-adaptive cost (study §3.6): ``c_k = ||x - mu_k||`` on frames with their own VA,
    else the class row ``C_{., y}``. A class without a centroid (NaN) keeps the class-level entry."""
    cost = torch.as_tensor(cost, device=va.device).float()
    rows = cost.index_select(1, target.long()).T
    if centroids is None:
        return rows
    mu = torch.as_tensor(centroids, device=va.device).float()
    dist = torch.cdist(va.float(), mu)                       # (B, K)
    use = va_valid.bool()[:, None] & torch.isfinite(dist)
    return torch.where(use, torch.nan_to_num(dist), rows)


def consistency_loss(va_pred: torch.Tensor, probs: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``mean_b ||VA_hat_b - sum_k p_bk mu_k||^2`` (docs/methods.md §5 ablation, study §3.5)."""
    mu = torch.as_tensor(centroids, device=probs.device).float()
    expected = probs.float() @ mu
    return ((va_pred.float() - expected) ** 2).sum(-1).mean()


class OTTerm:
    """``lam * L_OT`` over the EXPR-valid frames + ``consistency * L_cons`` over frames with EXPR and VA.

    Called as ``term(out, batch, mask)`` by ``Method.expr_loss``. ``choice`` is the ``CostChoice``
    (for ``circumplex.json``); ``geometry`` the circumplex it came from (the dataset's own, or the
    imported one carried into this label order). Cost tensors move to the logits' device lazily.
    """

    def __init__(self, choice: CostChoice, lam: float = 1.0, consistency: float = 0.0,
                 centroids: np.ndarray | None = None, geometry: Geometry | None = None) -> None:
        self.choice = choice
        self.lam = float(lam)
        self.consistency = float(consistency)
        self.geometry = geometry
        if self.consistency > 0:
            if centroids is None:
                raise ValueError("the consistency term needs class centroids in valence-arousal, but this "
                                 "dataset has no circumplex")
            # a class without a centroid contributes the circumplex origin to the expected VA
            centroids = np.nan_to_num(np.asarray(centroids, dtype=np.float64), nan=0.0)
        self._numpy = {"cost": choice.matrix, "centroids": choice.centroids, "cons_centroids": centroids}
        self._tensors: dict[tuple[str, torch.device], torch.Tensor | None] = {}

    def _get(self, name: str, device: torch.device) -> torch.Tensor | None:
        key = (name, device)
        if key not in self._tensors:
            arr = self._numpy[name]
            self._tensors[key] = None if arr is None else torch.as_tensor(
                np.asarray(arr, dtype=np.float32), device=device)
        return self._tensors[key]

    @property
    def source_geometry(self) -> dict[str, np.ndarray] | None:
        """``{"cost", "centroids"}`` of the circumplex this term was built from, in this label order
        (the imported one on a dataset without VA); None without any. Cost entries are finite."""
        if self.geometry is None:
            return None
        return {"cost": self.geometry.finite_cost, "centroids": self.geometry.centroids}

    def record(self) -> dict[str, Any]:
        """The trial's ``circumplex.json`` content for this term (``trainers.geometry.circumplex_record``)."""
        return circumplex_record(self.geometry, self.choice)

    def __call__(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                 mask: torch.Tensor) -> torch.Tensor:
        # Masked means by weights rather than boolean indexing: no host-device sync per step.
        logits = out["expr"]
        device = logits.device
        weight = mask.to(device=device, dtype=torch.float32)
        total = logits.new_zeros((), dtype=torch.float32)
        cost = self._get("cost", device)
        if cost is not None and self.lam != 0:
            target = torch.where(mask.bool(), batch["expr"].long(), 0)     # masked-out labels are arbitrary
            if self.choice.per_frame or self.choice.variant == "instance":
                rows = instance_cost_rows(batch["va"], batch["va_mask"], target, self._get("centroids", device),
                                          cost)
                per = _frame_cost(logits, target, rows, per_frame=True)
            else:
                per = _frame_cost(logits, target, cost, per_frame=False)
            total = total + self.lam * (per * weight).sum() / weight.sum().clamp(min=1)
        if self.consistency > 0:
            joint = weight * batch["va_mask"].to(device=device, dtype=torch.float32)
            probs = F.softmax(logits.float(), dim=-1)
            expected = probs @ self._get("cons_centroids", device)
            err = ((out["va"].float() - expected) ** 2).sum(-1)          # docs/methods.md §5: ||VA_hat - sum p mu||^2
            total = total + self.consistency * (err * joint).sum() / joint.sum().clamp(min=1)
        return total


def build_ot_term(ctx, cost, lam: float = 1.0, consistency: float = 0.0,
                  imported_from: str | None = None) -> OTTerm:
    """The OT/consistency term of a trial, as ``Method.__init__`` builds it.

    ``ctx`` is a ``MethodContext``. Its ``circumplex`` (the ``trainers.circumplex.TrialCircumplex`` the
    engine resolved once for this trial) supplies the cost and the circumplex of record; a context
    without one (a unit test, a benchmark) has it resolved here from its ``label_space``,
    ``train_index``, ``geometry`` and ``seed``, with ``imported_from``. ``cost``: a ``method.cost``
    value, a shorthand or a source and a control (``trainers.costs``).
    """
    from trainers.circumplex import resolve_circumplex

    circ = getattr(ctx, "circumplex", None)
    if circ is None:
        circ = resolve_circumplex(ctx.label_space, ctx.train_index, ctx.seed, cost, imported_from,
                                  geometry=ctx.geometry)
    elif circ.cost != cost:
        raise ValueError(f"the trial's circumplex was resolved for cost {circ.cost!r}, not {cost!r}")
    record = circ.of_record
    return OTTerm(circ.choice, lam=lam, consistency=consistency,
                  centroids=None if record is None else record.centroids, geometry=record)
