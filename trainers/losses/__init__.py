"""Losses of the shared trainer (docs/methods.md §2, §5)."""

from trainers.losses.multitask import UncertaintyWeighting, au_bce_loss, ccc, ccc_loss, focal_loss
from trainers.losses.ot import consistency_loss, ot_loss

__all__ = ["UncertaintyWeighting", "au_bce_loss", "ccc", "ccc_loss", "consistency_loss", "focal_loss",
           "ot_loss"]
