"""Checkpoints once and small, and an evaluation schedule that never changes what a trial trains to."""

import json

import pytest
import torch

from trainers.engine import CHECKPOINT, fit

TIMES = {"train_seconds", "images_per_second"}


def metrics_without_times(m: dict) -> dict:
    return {k: v for k, v in m.items() if k not in TIMES}


def test_finished_trial_keeps_the_ema_weights_and_no_optimizer_state(tiny_trial, tmp_path):
    cfg = tiny_trial(epochs=2)
    fit(cfg, tmp_path / "a", progress=False)
    state = torch.load(tmp_path / "a" / "checkpoints" / CHECKPOINT, weights_only=False)
    assert "optimizer" not in state and "model" not in state
    assert state["epoch"] == 2 and state["ema"]  # the evaluated weights stay

    kept = tiny_trial(epochs=2, keep_optimizer=True)
    assert kept.trial_id == cfg.trial_id  # placement: not part of what the trial is
    fit(kept, tmp_path / "b", progress=False)
    full = torch.load(tmp_path / "b" / "checkpoints" / CHECKPOINT, weights_only=False)
    assert full["optimizer"]["state"] and "model" in full
    small, big = ((tmp_path / d / "checkpoints" / CHECKPOINT).stat().st_size for d in "ab")
    assert small < big


def test_finished_trial_killed_before_its_result_is_scored_from_the_small_checkpoint(tiny_trial, tmp_path):
    cfg = tiny_trial(epochs=2)
    first = fit(cfg, tmp_path, progress=False).metrics
    (tmp_path / "result.json").unlink()
    trained = []
    again = fit(cfg, tmp_path, report=lambda e, m, d: trained.append(e), progress=False).metrics
    assert trained == []  # nothing trained again: the EMA weights of the checkpoint are evaluated
    assert metrics_without_times(again) == metrics_without_times(first)


def test_evaluating_every_epoch_leaves_the_final_metrics_unchanged(tiny_trial, tmp_path):
    """Evaluation (BatchNorm re-estimation included) has no side effect on training: the final
    evaluation is the same whether or not the earlier epochs were evaluated."""
    every = tiny_trial(epochs=3, eval_every=1)
    last_only = tiny_trial(epochs=3)
    assert every.trial_id == last_only.trial_id
    a = fit(every, tmp_path / "every", progress=False)
    b = fit(last_only, tmp_path / "last", progress=False)
    assert metrics_without_times(a.metrics) == metrics_without_times(b.metrics)
    assert ["p_mtl" in row for row in a.history] == [True, True, True]
    assert ["p_mtl" in row for row in b.history] == [False, False, True]
    assert all("train/loss" in row for row in b.history)  # Tune and MLflow still get every epoch
    assert a.history[-1] == b.history[-1]
    assert json.loads((tmp_path / "last" / "history.json").read_text())[-1]["p_mtl"] == b.metrics["p_mtl"]


def test_resume_mid_run_with_evaluations_in_between_gives_the_same_metrics(tiny_trial, tmp_path):
    cfg = tiny_trial(epochs=3, eval_every=2)
    full = fit(cfg, tmp_path / "full", progress=False).metrics

    class Killed(Exception):
        pass

    def kill_after_epoch_2(epoch, metrics, ckpt_dir):
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        fit(cfg, tmp_path / "resumed", report=kill_after_epoch_2, progress=False)
    mid = torch.load(tmp_path / "resumed" / "checkpoints" / CHECKPOINT, weights_only=False)
    assert mid["epoch"] == 2 and mid["optimizer"]["state"]  # mid-run: everything a resume needs
    resumed = fit(cfg, tmp_path / "resumed", progress=False).metrics
    assert metrics_without_times(resumed) == metrics_without_times(full)


def test_timing_record_names_every_phase(tiny_trial, tmp_path):
    fit(tiny_trial(epochs=1), tmp_path, progress=False)
    timing = json.loads((tmp_path / "timing.json").read_text())
    for phase in ("setup", "data", "train", "eval", "bn_recalibration", "checkpoint", "fit"):
        assert timing[f"timing/{phase}_s"] >= 0, phase
    assert timing["timing/fit_s"] >= timing["timing/train_s"] + timing["timing/eval_s"]
    assert timing["checkpoint_bytes"] == (tmp_path / "checkpoints" / CHECKPOINT).stat().st_size
