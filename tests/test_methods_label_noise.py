"""Synthetic label noise of the fusion and Ada-DF protocols (docs/methods.md §9-§10): ``apply_label_noise``."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chisquare

from trainers.config import TrialConfig
from trainers.data.pipeline import apply_label_noise
from trainers.engine import prepare_data


def _index(n=6000, k=8, missing=500, seed=0):
    rng = np.random.default_rng(seed)
    expr = rng.integers(0, k, n)
    expr[rng.choice(n, missing, replace=False)] = -1
    return pd.DataFrame({"expr": expr, "valence": rng.uniform(-1, 1, n)})


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.3])
def test_exactly_round_rate_times_n_expr_labels_flip_each_to_another_class(rate):
    index = _index()
    noisy = apply_label_noise(index, rate, seed=4, classes=8)
    old, new = index["expr"].to_numpy(), noisy["expr"].to_numpy()
    n_expr = int((old >= 0).sum())
    changed = old != new
    assert changed.sum() == round(rate * n_expr)
    assert (old[changed] >= 0).all() and (new[changed] >= 0).all() and (new[changed] < 8).all()
    np.testing.assert_array_equal(noisy["noisy"].to_numpy(), changed)   # flagged exactly where flipped
    np.testing.assert_array_equal(new[old < 0], -1)                     # unlabelled frames untouched
    assert (index["expr"].to_numpy() == old).all()                       # the input is not modified


def test_new_labels_are_uniform_over_the_other_classes():
    k = 5
    index = _index(n=40000, k=k, missing=0, seed=1)
    noisy = apply_label_noise(index, 0.5, seed=11, classes=k)
    old, new = index["expr"].to_numpy(), noisy["expr"].to_numpy()
    flipped = old != new
    for c in range(k):  # given the true class, the noisy class is uniform over the K-1 others
        counts = np.bincount(new[flipped & (old == c)], minlength=k)
        assert counts[c] == 0
        others = np.delete(counts, c)
        assert chisquare(others).pvalue > 1e-3, (c, others)
    # and the flipped frames are a uniform draw: every class loses about rate of its frames
    lost = np.array([flipped[old == c].mean() for c in range(k)])
    np.testing.assert_allclose(lost, 0.5, atol=0.03)


def test_same_seed_same_flips_other_seed_other_flips_rate_zero_no_flip():
    index = _index()
    a = apply_label_noise(index, 0.2, seed=3, classes=8)
    b = apply_label_noise(index, 0.2, seed=3, classes=8)
    c = apply_label_noise(index, 0.2, seed=4, classes=8)
    pd.testing.assert_frame_equal(a, b)
    assert (a["expr"] != c["expr"]).any() and (a["noisy"] != c["noisy"]).any()
    clean = apply_label_noise(index, 0.0, seed=3, classes=8)
    assert (clean["expr"] == index["expr"]).all() and not clean["noisy"].any()


def test_noise_does_not_depend_on_the_trial_seed():
    def train_labels(seed, noise_seed):
        cfg = TrialConfig.model_validate(dict(dataset=dict(n=400, image_size=16), seed=seed,
                                              label_noise=dict(rate=0.3, seed=noise_seed)))
        return prepare_data(cfg).train_index["expr"].to_numpy()

    same = train_labels(0, 5)
    np.testing.assert_array_equal(same, train_labels(1, 5))
    np.testing.assert_array_equal(same, train_labels(7, 5))
    assert (same != train_labels(0, 6)).any()


def test_rafdb_noise_flips_only_to_its_seven_classes_never_contempt():
    """RAF-DB has 7 of AffectNet's 8 classes (docs/methods.md §1, §9): a flip goes to one of the 6 other
    PRESENT classes, uniformly; Contempt (index 7) never appears."""
    from trainers.data.labels import LABEL_SPACES, RAFDB_TO_AFFECTNET

    present = sorted(RAFDB_TO_AFFECTNET.values())
    assert present == [0, 1, 2, 3, 4, 5, 6]
    rng = np.random.default_rng(2)
    index = pd.DataFrame({"expr": rng.choice(present, 30000)})
    noisy = apply_label_noise(index, 0.3, seed=0, classes=LABEL_SPACES["rafdb"].scored_classes)
    old, new = index["expr"].to_numpy(), noisy["expr"].to_numpy()
    assert (new != 7).all()
    flipped = old != new
    assert flipped.sum() == 9000
    for c in present:
        counts = np.bincount(new[flipped & (old == c)], minlength=8)
        assert counts[c] == 0 and counts[7] == 0
        assert chisquare(np.delete(counts[:7], c)).pvalue > 1e-3, (c, counts)


def test_a_label_outside_the_dataset_classes_is_an_error():
    index = pd.DataFrame({"expr": [0, 1, 7]})
    with pytest.raises(ValueError, match=r"labels \[7\] are not among"):
        apply_label_noise(index, 0.5, seed=0, classes=[0, 1, 2])


def test_noise_leaves_sampler_order_and_true_circumplex_as_distributed():
    """docs/methods.md §9: the sampler weights, hence the data order, and the TRUE circumplex come from the
    labels as distributed, so a noise rate is matched with the clean condition of the same seed."""
    from trainers.data.pipeline import epoch_order, matched_seed_hash, sampler_weights
    from trainers.geometry import estimate_geometry

    def data(rate):
        cfg = TrialConfig.model_validate(dict(dataset=dict(n=600, image_size=16), seed=3,
                                              label_noise=dict(rate=rate, seed=1)))
        return cfg, prepare_data(cfg)

    (cfg0, clean), (_, noisy) = data(0.0), data(0.3)
    assert (noisy.train_index["expr"] != clean.train_index["expr"]).any()           # noise was injected
    pd.testing.assert_frame_equal(noisy.distributed_index, clean.distributed_index)  # ... not into the data
    order = {name: epoch_order(len(d.train_index), 3, 1, sampler_weights("inverse_frequency",
                                                                           d.distributed_index["expr"].to_numpy()))
             for name, d in (("clean", clean), ("noisy", noisy))}
    np.testing.assert_array_equal(order["clean"], order["noisy"])
    hashes = {matched_seed_hash("synthetic", d.distributed_index, d.val_index, 3) for d in (clean, noisy)}
    assert len(hashes) == 1
    truth = estimate_geometry(clean.train_index, cfg0.label_space)
    np.testing.assert_allclose(noisy.true_geometry.cost, truth.cost)   # scored under the clean circumplex
    learnt = estimate_geometry(noisy.train_index, cfg0.label_space)
    assert not np.allclose(learnt.cost, truth.cost)                    # the noisy one differs
