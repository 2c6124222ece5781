"""``logit_adjust``: a frequency-based imbalance baseline of the study's §5.6 (docs/methods.md §8). It changes
one thing of the base recipe and keeps the rest (VA loss, weighting; the sampler: see below).

The logit-adjusted loss (Menon et al. 2021), ``CE(z + τ log π, y)`` with τ = 1 and
π the training class frequencies; training-time only — prediction is ``argmax z``, which is the
balanced-error decision rule the adjustment targets. *Sampling: natural.* The adjustment's
derivation assumes the training distribution follows the natural prior π; fed the shared
inverse-frequency oversampler, it would correct for an imbalance the sampler already removed
(a strawman). So by default (``natural_sampling: true``) frames are drawn without class weights;
``natural_sampling: false`` restores the shared oversampler. The matched-seed hash does not
depend on the sampler, so the method stays paired with the other conditions of its seed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from trainers.methods.base import Method, MethodOptions, register_method

__all__ = ["LogitAdjust", "logit_adjusted_loss"]


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
    """``CE(z_k + τ log π_k)`` at training, τ = 1, π the training class frequencies (docs/methods.md §8)."""

    class Options(MethodOptions):
        tau: float = Field(1.0, ge=0.0)              # τ of the logit adjustment
        natural_sampling: bool = True                # the natural prior the adjustment assumes (docs/methods.md §8)

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
