"""Frequency-based imbalance baselines of the study's §5.6 (METHODS §8): ``ldam_asl``, ``logit_adjust``,
``pcgrad``. Each changes one thing of the base recipe and keeps the rest (sampler, VA loss, weighting).

- ``ldam_asl``: LDAM for EXPR (Cao et al. 2019) — margins ``Δ_k = C n_k^{-1/4}`` with C such that the
  largest margin is 0.5, loss ``CE(s (cos - Δ_y onehot_y), y)`` with s = 30. The scale s = 30 belongs
  to LDAM's normalised (cosine) classifier, so the EXPR head is a cosine head whose output
  ``s · cos(w_k, f)`` is the logit seen everywhere else (prediction, OT term); LDAM subtracts
  ``s Δ_y`` from the true logit. No deferred re-weighting (METHODS names none). AU: asymmetric loss
  (Ridnik et al. 2021), ``γ- = 4, γ+ = 0``, probability shift (clip) 0.05, averaged over the
  labelled units (the AU mask), in place of the weighted BCE.
- ``logit_adjust``: the logit-adjusted loss (Menon et al. 2021), ``CE(z + τ log π, y)`` with τ = 1 and
  π the training class frequencies; training-time only — prediction is ``argmax z``, which is the
  balanced-error decision rule the adjustment targets. *Sampling: natural.* The adjustment's
  derivation assumes the training distribution follows the natural prior π; fed the shared
  inverse-frequency oversampler, it would correct for an imbalance the sampler already removed
  (a strawman). So by default (``natural_sampling: true``) frames are drawn without class weights;
  ``natural_sampling: false`` restores the shared oversampler. The matched-seed hash does not
  depend on the sampler, so the method stays paired with the other conditions of its seed.
- ``pcgrad``: gradient surgery (Yu et al. 2020) across the uncertainty-weighted task losses on the
  shared encoder parameters: each task gradient is projected off every other task gradient it
  conflicts with (negative dot product), in random order, and the projected gradients are summed
  (the paper's Algorithm 1); head, weighting and method parameters keep their plain gradients.
  The EXPR loss is the base focal loss.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trainers.methods.base import Method, MethodOptions, register_method

__all__ = ["LDAMASL", "CosineHead", "LogitAdjust", "PCGrad", "asl_loss", "ldam_loss", "ldam_margins",
           "logit_adjusted_loss", "pcgrad_combine"]


# --- LDAM + ASL ------------------------------------------------------------------------------------

def ldam_margins(class_counts, max_margin: float = 0.5) -> np.ndarray:
    """``Δ_k ∝ n_k^{-1/4}`` scaled so that the rarest present class gets ``max_margin``; a class
    without training frames (never a target) gets ``max_margin``."""
    n = np.asarray(class_counts, dtype=np.float64)
    present = n > 0
    raw = np.where(present, np.maximum(n, 1) ** -0.25, 0.0)
    return np.where(present, raw * (max_margin / raw[present].max()), max_margin)


def ldam_loss(logits: torch.Tensor, target: torch.Tensor, margins: torch.Tensor, scale: float,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """``CE(logits - s Δ_y onehot_y, y)`` with ``logits = s cos``, i.e. ``CE(s (cos - Δ_y onehot), y)``."""
    shifted = logits.float() - scale * margins[target][:, None] * F.one_hot(target, logits.shape[-1])
    loss = F.cross_entropy(shifted, target, reduction="none")
    if mask is None:
        return loss.mean()
    m = mask.float()
    return (loss * m).sum() / m.sum().clamp(min=1)


def asl_loss(logits: torch.Tensor, target: torch.Tensor, gamma_neg: float = 4.0, gamma_pos: float = 0.0,
             clip: float = 0.05, eps: float = 1e-8) -> torch.Tensor:
    """Asymmetric loss, mean over labelled units (``target`` NaN = unlabelled):
    ``-y (1-p)^γ+ log p - (1-y) p_m^γ- log(1 - p_m)``, ``p_m = max(p - clip, 0)``."""
    valid = ~torch.isnan(target)
    y = torch.nan_to_num(target).float()
    p = torch.sigmoid(logits.float())
    p_m = (p - clip).clamp(min=0)
    pos = y * (1 - p).pow(gamma_pos) * torch.log(p.clamp(min=eps))
    neg = (1 - y) * p_m.pow(gamma_neg) * torch.log((1 - p_m).clamp(min=eps))
    return -((pos + neg) * valid).sum() / valid.sum().clamp(min=1)


class CosineHead(nn.Module):
    """``s · cos(w_k, f)`` logits (LDAM's normalised linear classifier)."""

    def __init__(self, feat_dim: int, num_classes: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(num_classes, feat_dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(feat, dim=-1) @ F.normalize(self.weight, dim=-1).T


@register_method("ldam_asl")
class LDAMASL(Method):
    """LDAM for EXPR (max margin 0.5, s = 30) with ASL for AU (γ- 4, γ+ 0, clip 0.05); METHODS §8."""

    class Options(MethodOptions):
        max_margin: float = Field(0.5, ge=0.0)       # LDAM margin of the rarest class
        scale: float = Field(30.0, gt=0.0)           # s of the cosine logits
        gamma_neg: float = Field(4.0, ge=0.0)        # ASL γ-
        gamma_pos: float = Field(0.0, ge=0.0)        # ASL γ+
        clip: float = Field(0.05, ge=0.0, lt=1.0)    # ASL probability margin

    def __init__(self, ctx, **kwargs) -> None:
        super().__init__(ctx, **kwargs)
        self.margins = torch.as_tensor(ldam_margins(ctx.class_counts, float(self.options["max_margin"])),
                                       dtype=torch.float32)

    def build_model(self, encoder, feat_dim):
        model = super().build_model(encoder, feat_dim)
        model.expr_head = CosineHead(feat_dim, self.ctx.num_classes, float(self.options["scale"]))
        return model

    def expr_objective(self, out, batch, mask, state):
        if self.margins.device != out["expr"].device:
            self.margins = self.margins.to(out["expr"].device)
        return ldam_loss(out["expr"], batch["expr"], self.margins, float(self.options["scale"]), mask)

    def au_loss(self, out, batch):
        if self.ctx.au_pos_weight is None or batch["n"]["au"] == 0:
            return None
        o = self.options
        return asl_loss(out["au"], batch["au"], float(o["gamma_neg"]), float(o["gamma_pos"]), float(o["clip"]))


# --- logit adjustment ------------------------------------------------------------------------------

def logit_adjusted_loss(logits: torch.Tensor, target: torch.Tensor, log_prior: torch.Tensor, tau: float = 1.0,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """``CE(z + τ log π, y)`` (the logit-adjusted loss)."""
    loss = F.cross_entropy(logits.float() + tau * log_prior, target, reduction="none")
    if mask is None:
        return loss.mean()
    m = mask.float()
    return (loss * m).sum() / m.sum().clamp(min=1)


@register_method("logit_adjust")
class LogitAdjust(Method):
    """``CE(z_k + τ log π_k)`` at training, τ = 1, π the training class frequencies (METHODS §8)."""

    class Options(MethodOptions):
        tau: float = Field(1.0, ge=0.0)              # τ of the logit adjustment
        natural_sampling: bool = True                # the natural prior the adjustment assumes (METHODS §8)

    def __init__(self, ctx, **kwargs) -> None:
        super().__init__(ctx, **kwargs)
        counts = np.asarray(ctx.class_counts, dtype=np.float64)
        prior = counts / max(counts.sum(), 1.0)
        # a class without training frames is never a target; a finite floor keeps its logit usable
        self.log_prior = torch.as_tensor(np.log(np.maximum(prior, 1e-12)), dtype=torch.float32)

    def expr_objective(self, out, batch, mask, state):
        if self.log_prior.device != out["expr"].device:
            self.log_prior = self.log_prior.to(out["expr"].device)
        return logit_adjusted_loss(out["expr"], batch["expr"], self.log_prior, float(self.options["tau"]), mask)

    def sampling(self):
        return "natural" if self.options["natural_sampling"] else None


# --- PCGrad ----------------------------------------------------------------------------------------

def pcgrad_combine(grads: list[torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
    """Σ_i g_i^PC where g_i^PC is g_i projected, in random order over j != i, off each original g_j
    it conflicts with: ``g_i ← g_i - min(g_i·g_j, 0) / ||g_j||² g_j`` (Yu et al. 2020, Alg. 1).
    Written without data-dependent branches (no host sync on a GPU)."""
    combined = torch.zeros_like(grads[0])
    for i, g in enumerate(grads):
        g_pc = g.clone()
        others = [j for j in torch.randperm(len(grads), generator=generator).tolist() if j != i]
        for j in others:
            dot = (g_pc * grads[j]).sum()
            g_pc = g_pc - dot.clamp(max=0) / (grads[j].pow(2).sum() + 1e-20) * grads[j]
        combined += g_pc
    return combined


@register_method("pcgrad")
class PCGrad(Method):
    """Focal EXPR loss; PCGrad across the weighted VA/EXPR/AU losses on the shared encoder (METHODS §8)."""

    class Options(MethodOptions):
        gamma: float = Field(2.0, ge=0.0)            # focal γ of the EXPR loss

    def backward(self, total, weighted, model):
        stages, _ = model.schedule_groups()
        shared = [p for stage in stages for p in stage if p.requires_grad]
        tasks = [loss for loss in weighted.values() if loss.requires_grad]
        if len(tasks) < 2 or not shared:
            total.backward()
            return
        def flatten(grads):
            return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(shared, grads)])

        for p in shared:
            p.grad = None
        flat = [flatten(torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True))
                for loss in tasks[:-1]]
        total.backward()  # heads, log-variances, method modules: plain gradients (one pass for all)
        # the last task's shared gradient is the total's minus the others' (saves a backward pass)
        flat.append(flatten([p.grad for p in shared]) - sum(flat))
        surgery = pcgrad_combine(flat)  # random order from torch's RNG, seeded per epoch by the loop
        offset = 0
        for p in shared:
            n = p.numel()
            p.grad = surgery[offset:offset + n].view_as(p).to(p.dtype)
            offset += n
