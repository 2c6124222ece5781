"""The shared trainer: it learns, it is deterministic, it resumes exactly, it fails clearly."""

import json

import numpy as np
import pytest

from trainers.engine import NonFiniteLossError, fit


def chance_macro_f1(y: np.ndarray, k: int, seed: int = 0) -> float:
    """The best macro-F1 of image-blind predictors on these labels: always the majority class, uniform
    guessing, or guessing with the label frequencies (the last two averaged over 200 draws)."""
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(seed)
    labels = list(range(k))
    scores = [f1_score(y, np.full_like(y, np.bincount(y).argmax()), average="macro", labels=labels,
                       zero_division=0)]
    prior = np.bincount(y, minlength=k) / len(y)
    for p in (np.full(k, 1 / k), prior):
        scores.append(np.mean([f1_score(y, rng.choice(k, size=len(y), p=p), average="macro", labels=labels,
                                        zero_division=0) for _ in range(200)]))
    return max(scores)


def test_base_recipe_learns_above_chance(tiny_trial, tmp_path):
    """A few epochs of the base recipe on affwild2_like beat image-blind predictors by a clear margin."""
    from trainers.engine import prepare_data

    # the short-run departures the synthetic sweeps declare (sweeps/demo.yaml); the recipe's EMA decay
    # 0.999 from step 1 keeps ~85% of the initial weights after the ~150 steps of this trial
    cfg = tiny_trial(dataset={"n": 2500, "image_size": 48}, epochs=5, batch_size=64, lr=3e-3, ema_warmup=True)
    m = fit(cfg, tmp_path / "t", progress=False).metrics
    val = prepare_data(cfg).val_index
    y = val["expr"].to_numpy()
    chance = chance_macro_f1(y[y >= 0], cfg.label_space.num_classes)
    assert m["expr_f1"] > 1.5 * chance, (m["expr_f1"], chance)
    assert m["va_ccc"] > 0.2  # an image-blind constant has CCC 0
    assert np.isfinite(m["au_f1"]) and m["au_f1"] > 0
    assert m["p_mtl"] == pytest.approx(m["va_ccc"] + m["expr_f1"] + m["au_f1"])


def test_same_config_twice_gives_identical_metrics(tiny_trial, tmp_path):
    cfg = tiny_trial()
    a = fit(cfg, tmp_path / "a", progress=False).metrics
    b = fit(cfg, tmp_path / "b", progress=False).metrics
    drop = {"train_seconds", "images_per_second"}
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}


def test_conditions_sharing_a_seed_share_the_data_order(tiny_trial, tmp_path):
    """data_order_hash = the world and the seed's streams: equal across conditions of a seed, also
    when a condition samples differently by design (natural sampling) or injects label noise; a
    different seed, world size or split changes it. The realized order is sample_order_hash."""
    def run(name, **overrides):
        return fit(tiny_trial(epochs=1, max_steps_per_epoch=2, **overrides), tmp_path / name, progress=False).metrics

    base = run("a")
    ot = run("b", method={"cost": "uniform"})
    natural = run("c", method={"name": "logit_adjust"})
    noisy = run("d", label_noise={"rate": 0.3})
    other_seed = run("e", seed=1)
    other_n = run("f", dataset={"n": 900})
    other_split = run("g", dataset={"val_fraction": 0.3})
    assert base["data_order_hash"] == ot["data_order_hash"] == natural["data_order_hash"] == noisy["data_order_hash"]
    assert base["sample_order_hash"] == ot["sample_order_hash"] == noisy["sample_order_hash"]
    assert natural["sample_order_hash"] != base["sample_order_hash"]            # its own sampler, by design
    assert (base["sampling"], natural["sampling"]) == ("inverse_frequency", "natural")
    assert len({base["data_order_hash"], other_seed["data_order_hash"], other_n["data_order_hash"],
                other_split["data_order_hash"]}) == 4
    assert base["trial_id"] != ot["trial_id"]


def test_killed_trial_resumes_to_the_same_metrics(tiny_trial, tmp_path):
    cfg = tiny_trial(epochs=3)
    full = fit(cfg, tmp_path / "full", progress=False).metrics

    class Killed(Exception):
        pass

    def kill_after_epoch_2(epoch, metrics, ckpt_dir):
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        fit(cfg, tmp_path / "resumed", report=kill_after_epoch_2, progress=False)
    assert not (tmp_path / "resumed" / "result.json").exists()
    seen = []
    resumed = fit(cfg, tmp_path / "resumed", report=lambda e, m, d: seen.append(e), progress=False).metrics
    assert seen == [3]  # only the missing epoch was trained
    drop = {"train_seconds", "images_per_second"}
    assert {k: v for k, v in resumed.items() if k not in drop} == {k: v for k, v in full.items() if k not in drop}


def test_trial_directory_contract(tiny_trial, tmp_path):
    cfg = tiny_trial(epochs=1, method={"cost": "permuted"})
    fit(cfg, tmp_path, progress=False, sweep="s", axes={"method.cost": "permuted"})
    result = json.loads((tmp_path / "result.json").read_text())
    # the whole result row in its one write (docs/design.md §2): head, axes, then the metrics
    assert list(result)[:5] == ["trial_id", "sweep", "seed", "status", "method.cost"]
    assert (result["sweep"], result["seed"], result["method.cost"]) == ("s", cfg.seed, "permuted")
    for key in ("trial_id", "seed", "status", "p_mtl", "va_ccc", "va_ccc_v", "va_ccc_a", "expr_f1", "au_f1",
                "expr_acc", "expr_f1/Anger", "au_f1/AU12", "error_severity", "quadrant_keep",
                "affect_weighted_acc", "rsa_rho", "epochs", "train_seconds", "images_per_second",
                "data_order_hash", "sample_order_hash", "sampling"):
        assert key in result, key
    confusion = json.loads((tmp_path / "confusion.json").read_text())
    assert np.asarray(confusion["matrix"]).shape == (8, 8)
    circ = json.loads((tmp_path / "circumplex.json").read_text())
    assert circ["cost_variant"] == "permuted"
    perm = np.asarray(circ["derangement"])
    assert (perm != np.arange(8)).all()
    true, used = np.asarray(circ["true_cost"]), np.asarray(circ["cost_used"])
    np.testing.assert_allclose(used, true[np.ix_(perm, perm)])
    assert (tmp_path / "checkpoints" / "last.pt").is_file()


def test_nan_loss_fails_with_a_clear_reason(tiny_trial, tmp_path):
    cfg = tiny_trial(epochs=1, lr=1e30, warmup_epochs=0)  # diverges at once
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 1, step \d+ \(.*expr="):
        fit(cfg, tmp_path, progress=False)


def test_missing_image_file_is_named(tmp_path):
    from PIL import Image

    from trainers.data.pipeline import ImageStore

    ok = tmp_path / "a.jpg"
    Image.new("RGB", (8, 8)).save(ok)
    import pandas as pd

    store = ImageStore(pd.DataFrame({"path": [str(ok), str(tmp_path / "missing.jpg")]}), image_size=8)
    assert tuple(store[0].shape) == (3, 8, 8)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        store[1]


def test_va_less_dataset_is_scored_under_its_imported_geometry_in_every_condition(tiny_trial, tmp_path):
    """RAF-DB-like data has no circumplex of its own: with method.imported_from, even the cost-free
    base condition is scored under the imported one, so its error structure can be compared."""
    dataset = {"preset": "affectnet_like", "seed": 1, "drop_tasks": ["va", "au"]}
    method = {"cost": "none", "imported_from": "synthetic:affectnet_like"}
    base = fit(tiny_trial(epochs=1, dataset=dataset, method=method), tmp_path / "a", progress=False).metrics
    alone = fit(tiny_trial(epochs=1, dataset=dataset), tmp_path / "b", progress=False).metrics
    assert np.isfinite(base["error_severity"]) and np.isfinite(base["quadrant_keep"])
    assert np.isnan(alone["error_severity"])  # no geometry at all: nothing to score against
    assert np.isnan(base["va_ccc"]) and np.isnan(base["au_f1"])
