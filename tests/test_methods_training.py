"""Every method of docs/methods.md §8-§12 trains through ``affsweep train`` on the synthetic world and beats
chance; train-only modules are reported in result.json; the method sweeps validate."""

import json

import numpy as np
import pytest
import yaml
from sklearn.metrics import f1_score

from orchestrator.cli import main as affsweep
from trainers.config import load_trial_config
from trainers.engine import prepare_data

# affectnet_like: i.i.d. images with VA on almost every frame (fusion, Ada-DF, GReFEL, CAF, logit
# adjustment, PCGrad over VA and EXPR); affwild2_like: the study's world with AU labels, which ASL needs.
TRIALS = {
    "dual_fusion": ("affectnet_like", 6),
    "ada_df": ("affectnet_like", 5),
    "grefel": ("affectnet_like", 5),
    "caf": ("affectnet_like", 3),
    "ldam_asl": ("affwild2_like", 5),
    "logit_adjust": ("affectnet_like", 5),
    "pcgrad": ("affectnet_like", 5),
}
CHANCE_MARGIN = 0.05


def image_blind_macro_f1(y: np.ndarray, k: int) -> float:
    """Macro-F1 of the best predictor that ignores the image: a constant class, or random guessing
    (uniform or with the label frequencies, mean of 100 seeded draws)."""
    rng = np.random.default_rng(0)
    labels = list(range(k))
    scores = [f1_score(y, np.full_like(y, c), average="macro", labels=labels, zero_division=0) for c in labels]
    for p in (np.full(k, 1 / k), np.bincount(y, minlength=k) / len(y)):
        scores.append(np.mean([f1_score(y, rng.choice(k, len(y), p=p), average="macro", labels=labels,
                                        zero_division=0) for _ in range(100)]))
    return float(max(scores))


def _train(tmp_path, method: str) -> tuple[dict, list, float]:
    preset, epochs = TRIALS[method]
    trial = dict(dataset=dict(name="synthetic", preset=preset, n=2000, image_size=24),
                 backbone=dict(name="test_resnet", pretrained=False), method=dict(name=method),
                 epochs=epochs, batch_size=32, lr=3e-3, warmup_epochs=0, unfreeze_fraction=1.0,
                 encoder_lr_factor=1.0, eval_batch_size=256,
                 ema_warmup=True)  # a short run: the departure the synthetic sweeps declare (README)
    config = tmp_path / f"{method}.yaml"
    config.write_text(yaml.safe_dump(trial))
    out = tmp_path / method
    assert affsweep(["train", str(config), "--out", str(out), "--no-progress"]) == 0
    y = prepare_data(load_trial_config(config)).val_index["expr"].to_numpy()
    chance = max(1 / 8, image_blind_macro_f1(y[y >= 0], 8))
    return json.loads((out / "result.json").read_text()), json.loads((out / "history.json").read_text()), chance


@pytest.mark.parametrize("method", sorted(TRIALS))
def test_method_trains_above_chance_through_the_cli(tmp_path, method):
    result, history, chance = _train(tmp_path, method)
    if method == "caf":  # a VA method (docs/methods.md §12): its own loss is on VA
        assert result["va_ccc"] > 0.1
        assert {"train/caf/critic", "train/caf/adv"} <= set(history[-1])
    else:
        assert result["expr_f1"] > chance + CHANCE_MARGIN, (result["expr_f1"], chance)
    # parameter counts from the architecture, counted independently: the test ResNet encoder and
    # three linear heads (VA 2, EXPR 8, AU 12); LDAM's cosine EXPR head has no bias
    import timm
    import torch

    encoder = timm.create_model("test_resnet", num_classes=0)
    f = encoder.num_features
    heads = (f + 1) * (2 + 8 + 12) - (8 if method == "ldam_asl" else 0)
    if method not in ("ada_df", "grefel"):  # those two build their own model (branches, reliability module)
        assert result["params/model"] == sum(p.numel() for p in encoder.parameters()) + heads
    train_only = result["params/auxiliary"] if method == "ada_df" else 0
    assert result["params/inference"] == result["params/model"] - train_only
    # the sampler each method's paper assumes (docs/methods.md §8-§9): natural for logit adjustment and fusion
    assert result["sampling"] == ("natural" if method in ("dual_fusion", "logit_adjust") else "inverse_frequency")
    if method == "ada_df":  # the auxiliary branch is trained but not part of the inference model
        assert result["params/auxiliary"] > 0
        # mined rows = classes whose saved distribution is not the threshold row (t = 0.5, K = 8)
        state = torch.load(tmp_path / method / "checkpoints" / "last.pt", weights_only=False)["method_state"]
        rows = state["class_distributions"]
        threshold_row = torch.full((8, 8), 0.5 / 7).fill_diagonal_(0.5)
        mined = int((~torch.isclose(rows, threshold_row).all(1)).sum())
        assert history[-1]["ada_df/mined_rows"] == mined
    if method == "caf":     # the critic lives outside the model, trained only
        assert result["params/critic"] == (f * 64 + 64) + (64 * 32 + 32) + (32 * 16 + 16)  # MLP 64-32-16
        assert result["params/inference"] == result["params/model"]


@pytest.mark.parametrize("sweep,trials", [("sweeps/label_distribution_methods.yaml", 54),
                                          ("sweeps/label_noise.yaml", 48)])
def test_method_sweeps_validate_and_expand(sweep, trials):
    from orchestrator.expand import load_sweep

    plan = load_sweep(sweep)
    assert len(plan.trials) == trials
    methods = {t.config.method.name for t in plan.trials}
    if "noise" in sweep:
        assert methods == {"focal", "ot", "dual_fusion", "ada_df"}
        assert {t.config.label_noise.rate for t in plan.trials} == {0.0, 0.1, 0.2, 0.3}
    else:
        assert methods == {"focal", "ot", "dual_fusion", "ada_df", "grefel", "caf", "ldam_asl", "logit_adjust",
                           "pcgrad"}


class _Killed(Exception):
    pass


@pytest.mark.parametrize("method,options", [("ada_df", {"threshold": 0.1}), ("caf", {})])
def test_method_state_survives_a_kill_and_resume(tmp_path, method, options):
    """Ada-DF's mined class distributions and CAF's critic and optimisers are checkpointed: a trial
    killed after epoch 1 and resumed ends with the metrics of an uninterrupted run. (Ada-DF with a low
    threshold, so that epoch 1 mines real rows rather than the initial threshold rows.)"""
    from trainers.config import TrialConfig
    from trainers.engine import fit

    cfg = TrialConfig.model_validate(dict(
        dataset=dict(name="synthetic", preset="affectnet_like", n=500, image_size=24),
        backbone=dict(name="test_resnet"), method=dict(name=method, **options), epochs=2, batch_size=32, lr=3e-3,
        warmup_epochs=0, unfreeze_fraction=1.0, encoder_lr_factor=1.0))
    full = fit(cfg, tmp_path / "full", progress=False).metrics

    def kill_after_epoch_1(epoch, metrics, ckpt_dir):
        if epoch == 1:
            raise _Killed

    with pytest.raises(_Killed):
        fit(cfg, tmp_path / "resumed", report=kill_after_epoch_1, progress=False)
    resumed = fit(cfg, tmp_path / "resumed", progress=False).metrics
    drop = {"train_seconds", "images_per_second"}
    np.testing.assert_equal({k: v for k, v in resumed.items() if k not in drop},   # NaN == NaN (no AU here)
                            {k: v for k, v in full.items() if k not in drop})
