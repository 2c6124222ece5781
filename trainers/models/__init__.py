"""Backbones (registry over timm) and the multi-task network."""

from trainers.models import face_backbones  # noqa: F401  registers fsfm_/farl_/siglip2_vit_b16
from trainers.models.backbones import (
    BACKBONES,
    Backbone,
    WeightsError,
    create_backbone,
    fixed_input_size,
    register_backbone,
)
from trainers.models.heads import MultiTaskNet, upper_stages

__all__ = ["BACKBONES", "Backbone", "MultiTaskNet", "WeightsError", "create_backbone", "fixed_input_size",
           "register_backbone", "upper_stages"]
