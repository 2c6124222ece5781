"""``ldam_asl``: a frequency-based imbalance baseline of the study's §5.6 (docs/methods.md §8). It changes one
thing of the base recipe and keeps the rest (sampler, VA loss, weighting).

LDAM for EXPR (Cao et al. 2019) — margins ``Δ_k = C n_k^{-1/4}`` with C such that the
largest margin is 0.5, loss ``CE(s (cos - Δ_y onehot_y), y)`` with s = 30. The scale s = 30 belongs
to LDAM's normalised (cosine) classifier, so the EXPR head is a cosine head whose output
``s · cos(w_k, f)`` is the logit seen everywhere else (prediction, OT term); LDAM subtracts
``s Δ_y`` from the true logit. No deferred re-weighting (docs/methods.md §8 names none). AU: asymmetric loss
(Ridnik et al. 2021), ``γ- = 4, γ+ = 0``, probability shift (clip) 0.05, averaged over the
labelled units (the AU mask), in place of the weighted BCE.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trainers.methods.base import Method, MethodOptions, register_method

__all__ = ["LDAMASL", "CosineHead", "asl_loss", "ldam_loss", "ldam_margins"]


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
    """LDAM for EXPR (max margin 0.5, s = 30) with ASL for AU (γ- 4, γ+ 0, clip 0.05); docs/methods.md §8."""

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
