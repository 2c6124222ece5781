"""Masked per-task losses of the base multi-task recipe (docs/methods.md §2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Masks weight frames instead of indexing them: boolean indexing makes the GPU wait for the CPU
# at every step, multiplying by a 0/1 mask does not.


def ccc(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
        eps: float = 1e-8) -> torch.Tensor:
    """Concordance correlation per column with population moments over the masked frames (docs/methods.md §2)."""
    pred, target = pred.float(), target.float()
    w = torch.ones(len(pred), device=pred.device) if mask is None else mask.float()
    w = (w / w.sum().clamp(min=1))[:, None]
    mp, mt = (w * pred).sum(0), (w * target).sum(0)
    vp, vt = (w * (pred - mp) ** 2).sum(0), (w * (target - mt) ** 2).sum(0)
    cov = (w * (pred - mp) * (target - mt)).sum(0)
    return 2 * cov / (vp + vt + (mp - mt) ** 2 + eps)


def ccc_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """L_VA = 1 - (CCC_v + CCC_a)/2 over the VA-valid frames."""
    return 1 - ccc(pred, target, mask).mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None = None,
               gamma: float = 2.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Class-weighted focal CE, mean over (masked) frames of -w_y (1-p_y)^γ log p_y (docs/methods.md §2)."""
    logp = F.log_softmax(logits.float(), dim=-1).gather(1, target[:, None]).squeeze(1)
    loss = -((1 - logp.exp()) ** gamma) * logp
    if class_weights is not None:
        loss = loss * class_weights[target]
    if mask is None:
        return loss.mean()
    m = mask.float()
    return (loss * m).sum() / m.sum().clamp(min=1)


def au_bce_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    """Per-unit BCE with pos_weight = N_neg/N_pos; ``target`` NaN marks missing units (masked)."""
    valid = ~torch.isnan(target)
    loss = F.binary_cross_entropy_with_logits(logits.float(), torch.nan_to_num(target), reduction="none",
                                              pos_weight=pos_weight.float())
    return (loss * valid).sum() / valid.sum().clamp(min=1)


class UncertaintyWeighting(nn.Module):
    """Homoscedastic uncertainty weighting, L = Σ_t exp(-s_t) L_t + s_t, s_t = log σ_t² init 0.

    (Kendall et al. 2018; docs/methods.md §2.) A task whose loss is None this batch adds 0.
    """

    def __init__(self, tasks: tuple[str, ...] = ("va", "expr", "au")) -> None:
        super().__init__()
        self.tasks = tasks
        self.log_vars = nn.Parameter(torch.zeros(len(tasks)))

    def forward(self, losses: dict[str, torch.Tensor | None]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        weighted: dict[str, torch.Tensor] = {}
        for i, task in enumerate(self.tasks):
            loss = losses.get(task)
            if loss is not None:
                weighted[task] = torch.exp(-self.log_vars[i]) * loss + self.log_vars[i]
        if not weighted:
            return self.log_vars.sum() * 0.0, weighted
        return torch.stack(list(weighted.values())).sum(), weighted
