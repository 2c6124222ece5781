"""Matched-seed integrity end to end: trials trained by the engine, paired by analysis.pairing.

What a seed must hold fixed is the world and its random streams (``data_order_hash``), not the
realized order a condition's own sampler produces; so a label-noise contrast and a natural-sampling
method stay paired, while a trial of another world (another n) is caught and listed."""

import pandas as pd

from analysis.pairing import Contrast, pair_trials
from trainers.engine import fit


def _row(cfg, tmp_path, name):
    m = fit(cfg, tmp_path / name, progress=False).metrics
    return {"trial_id": m["trial_id"], "seed": cfg.seed, "status": "done", "label_noise.rate": cfg.label_noise.rate,
            "method.name": cfg.method.name, "data_order_hash": m["data_order_hash"], "p_mtl": m["p_mtl"]}


def test_noise_rates_and_natural_sampling_stay_paired_another_world_does_not(tiny_trial, tmp_path):
    small = dict(epochs=1, max_steps_per_epoch=1)
    rows = [_row(tiny_trial(seed=s, label_noise={"rate": r}, **small), tmp_path, f"{s}-{r}")
            for s in (0, 1, 2) for r in (0.0, 0.3)]
    frame = pd.DataFrame(rows)
    noise = pair_trials(frame, Contrast.of({"label_noise.rate": 0.3}, {"label_noise.rate": 0.0}),
                        ["label_noise.rate", "method.name"])
    assert len(noise.pairs) == 3 and not noise.integrity and not noise.unmatched  # sweeps/label_noise.yaml's contrast

    natural = _row(tiny_trial(seed=0, method={"name": "logit_adjust"}, **small), tmp_path, "la")
    other_world = _row(tiny_trial(seed=1, method={"name": "logit_adjust"}, dataset={"n": 900}, **small), tmp_path, "lb")
    frame = pd.DataFrame([*rows, natural, other_world])
    clean = frame[frame["label_noise.rate"] == 0.0]
    methods = pair_trials(clean, Contrast.of({"method.name": "logit_adjust"}, {"method.name": "focal"}),
                          ["method.name"])
    assert [p.seed for p in methods.pairs] == [0]                      # natural sampling: still paired
    assert [(v.seed, v.trial_b) for v in methods.integrity] == [(1, rows[2]["trial_id"])]  # n differs: listed
