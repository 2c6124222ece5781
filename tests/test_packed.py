"""Packed mode: K trials interleaved step by step in one process, each as if it ran alone."""

import json

import pytest

from trainers.engine import fit
from trainers.packed import fit_packed

TIMES = {"train_seconds", "images_per_second"}


def same(a: dict) -> dict:
    return {k: v for k, v in a.items() if k not in TIMES}


def test_packed_trials_give_the_metrics_they_give_alone(tiny_trial, tmp_path):
    cfgs = [tiny_trial(seed=0), tiny_trial(seed=1), tiny_trial(seed=0, method={"cost": "uniform"})]
    seen = {c.trial_id: [] for c in cfgs}
    reports = [lambda e, m, d, tid=c.trial_id: seen[tid].append(e) for c in cfgs]
    packed = fit_packed(cfgs, [tmp_path / "packed" / c.trial_id for c in cfgs], reports)
    for cfg, result in zip(cfgs, packed):
        alone = fit(cfg, tmp_path / "alone" / cfg.trial_id, progress=False)
        assert same(result.metrics) == same(alone.metrics), cfg.trial_id
        assert [same(h) for h in result.history] == [same(h) for h in alone.history]
        written = json.loads((tmp_path / "packed" / cfg.trial_id / "result.json").read_text())
        assert written["trial_id"] == cfg.trial_id
        assert seen[cfg.trial_id] == [1, 2]
    assert len({r.metrics["p_mtl"] for r in packed}) == 3  # three different trials, not one thrice


def test_a_failing_packed_trial_does_not_stop_the_others(tiny_trial, tmp_path):
    from trainers.engine import NonFiniteLossError

    good, bad = tiny_trial(epochs=2), tiny_trial(epochs=2, lr=1e30)
    events = []
    results = fit_packed([bad, good], [tmp_path / "bad", tmp_path / "good"],
                         reports=[None, lambda e, m, d: events.append(("good reports", e))],
                         on_end=lambda i, outcome: events.append((i, type(outcome).__name__)))
    assert isinstance(results[0], NonFiniteLossError)
    assert results[1].metrics["status"] == "done"
    # each end is announced once, as it happens: the NaN before the good trial's first epoch ends
    assert events == [(0, "NonFiniteLossError"), ("good reports", 1), ("good reports", 2), (1, "TrialResult")]


def test_trials_that_share_no_dataset_are_not_packed(tiny_trial, tmp_path):
    with pytest.raises(ValueError, match="differ in dataset"):
        fit_packed([tiny_trial(), tiny_trial(dataset={"n": 1200})], [tmp_path / "a", tmp_path / "b"])
