import os

import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
torch.set_num_threads(1)


@pytest.fixture
def tiny_trial():
    """A trial small enough to train in seconds on one CPU core."""
    from trainers.config import TrialConfig

    def make(**overrides):
        base = dict(
            dataset=dict(name="synthetic", preset="affwild2_like", n=1000, image_size=24),
            backbone=dict(name="test_resnet", pretrained=False),
            epochs=2, batch_size=32, lr=3e-3, warmup_epochs=0, unfreeze_fraction=1.0, encoder_lr_factor=1.0,
            eval_batch_size=128,
        )
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return TrialConfig.model_validate(base)

    return make
