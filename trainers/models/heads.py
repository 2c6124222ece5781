"""The shared encoder with the three linear heads of the base recipe (docs/methods.md §2)."""

from __future__ import annotations

import math

import torch
from torch import nn

from trainers.models.backbones import encoder_stages


class MultiTaskNet(nn.Module):
    """encoder -> feature -> VA (2, tanh), EXPR (K logits), AU (12 logits)."""

    def __init__(self, encoder: nn.Module, feat_dim: int, num_classes: int, num_aus: int = 12) -> None:
        super().__init__()
        self.encoder = encoder
        self.va_head = nn.Linear(feat_dim, 2)
        self.expr_head = nn.Linear(feat_dim, num_classes)
        self.au_head = nn.Linear(feat_dim, num_aus)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.encoder(x)
        return {"feat": feat, "va": torch.tanh(self.va_head(feat)), "expr": self.expr_head(feat),
                "au": self.au_head(feat)}

    def schedule_groups(self) -> tuple[list[list[nn.Parameter]], list[nn.Parameter]]:
        """(encoder stages bottom -> top, head parameters) for warm-up and partial unfreezing."""
        heads = [*self.va_head.parameters(), *self.expr_head.parameters(), *self.au_head.parameters()]
        return encoder_stages(self.encoder), heads


def upper_stages(stages: list[list[nn.Parameter]], fraction: float) -> list[nn.Parameter]:
    """The parameters of the top ``fraction`` of the blocks. The stem (stage 0: patch/position
    embedding, or a CNN's first convolution) counts only at ``fraction`` = 1, the whole encoder,
    which is what a scratch encoder needs."""
    if fraction >= 1:
        return [p for stage in stages for p in stage]
    blocks = stages[1:]
    n = math.ceil(fraction * len(blocks) - 1e-9)
    return [p for stage in blocks[len(blocks) - n:] for p in stage] if n > 0 else []
