"""Dual-domain affect fusion (docs/methods.md §9): mixed labels against hand values and scikit-learn's GMM."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy.linalg import cholesky, solve_triangular
from sklearn.mixture import GaussianMixture

from trainers.data.labels import AU_NAMES, LABEL_SPACES
from trainers.methods import MethodContext, StepState, create_method
from trainers.methods.dual_fusion import (
    class_va_statistics,
    euclidean_mixed_labels,
    gmm_mixed_labels,
    mixed_label_table,
)

CENTROIDS = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])


def test_euclidean_mixed_label_hand_example():
    # x = (0.5, 0): distances 0.5, 0.5, sqrt(0.25 + 4); s_k = max d / d_k, normalised
    x = np.array([[0.5, 0.0]])
    d = np.array([0.5, 0.5, math.sqrt(4.25)])
    expected = (d.max() / d) / (d.max() / d).sum()
    np.testing.assert_allclose(euclidean_mixed_labels(x, CENTROIDS), [expected], rtol=1e-12)
    np.testing.assert_allclose(expected, [4.25 ** 0.5 / (2 * 4.25 ** 0.5 + 0.5)] * 2 + [0.5 / (2 * 4.25 ** 0.5 + 0.5)])
    # the paper's Eq. 3 squares the distances
    d2 = d ** 2
    np.testing.assert_allclose(euclidean_mixed_labels(x, CENTROIDS, squared=True),
                               [(4.25 / d2) / (4.25 / d2).sum()], rtol=1e-12)


def test_euclidean_mixed_label_guards_zero_distance_and_missing_class():
    at_centroid = euclidean_mixed_labels(np.array([[1.0, 0.0]]), CENTROIDS)
    np.testing.assert_array_equal(at_centroid, [[0.0, 1.0, 0.0]])  # the limit of max d / d_k
    with_missing = np.vstack([CENTROIDS, [np.nan, np.nan]])
    label = euclidean_mixed_labels(np.array([[0.5, 0.0]]), with_missing)
    assert label[0, 3] == 0 and label.sum() == pytest.approx(1)
    np.testing.assert_allclose(label[0, :3], euclidean_mixed_labels(np.array([[0.5, 0.0]]), CENTROIDS)[0])


def test_gmm_mixed_labels_equal_sklearn_posterior_with_fixed_parameters():
    rng = np.random.default_rng(3)
    k = 4
    means = rng.uniform(-0.8, 0.8, size=(k, 2))
    covs = np.stack([a @ a.T + 0.02 * np.eye(2) for a in rng.normal(scale=0.3, size=(k, 2, 2))])
    weights = np.array([0.5, 0.2, 0.2, 0.1])
    gmm = GaussianMixture(n_components=k, covariance_type="full")
    gmm.weights_, gmm.means_, gmm.covariances_ = weights, means, covs
    gmm.precisions_cholesky_ = np.stack([solve_triangular(cholesky(c, lower=True), np.eye(2), lower=True).T
                                         for c in covs])
    x = rng.uniform(-1, 1, size=(200, 2))
    np.testing.assert_allclose(gmm_mixed_labels(x, means, covs, weights), gmm.predict_proba(x), atol=1e-10)


def test_class_statistics_use_frames_within_one_std_and_population_covariance():
    # class 0: the point (2, 2) lies beyond one std of the class mean in both v and a
    va = np.array([[0.0, 0.0], [0.2, 0.2], [-0.2, -0.2], [2.0, 2.0], [0.5, -0.5], [np.nan, np.nan]])
    expr = np.array([0, 0, 0, 0, 1, 1])
    stats = class_va_statistics(va, expr, num_classes=3)
    np.testing.assert_allclose(stats.centroids[0], [0.0, 0.0], atol=1e-12)
    var = (0.2 ** 2 + 0.2 ** 2) / 3  # population moments of the three kept frames
    np.testing.assert_allclose(stats.covariances[0], [[var + 1e-6, var], [var, var + 1e-6]], atol=1e-12)
    np.testing.assert_allclose(stats.centroids[1], [0.5, -0.5])
    assert np.isnan(stats.centroids[2]).all()
    np.testing.assert_allclose(stats.priors, [4 / 6, 2 / 6, 0])  # over all EXPR-labelled frames


def test_frames_without_va_take_the_mixed_label_of_their_class_centroid():
    stats = class_va_statistics(np.vstack([CENTROIDS, [[np.nan, np.nan]] * 3]), [0, 1, 2, 1, 2, 3], 4)
    va = np.array([[0.5, 0.0], [np.nan, np.nan], [np.nan, np.nan], [np.nan, np.nan]])
    table = mixed_label_table(va, np.array([1, 2, 3, -1]), stats, mixed="gmm")
    np.testing.assert_allclose(table[1], gmm_mixed_labels(CENTROIDS[2:3], stats.centroids, stats.covariances,
                                                          stats.priors)[0])
    np.testing.assert_array_equal(table[2], [0, 0, 0, 1])   # class 3 has no VA at all: one-hot
    np.testing.assert_array_equal(table[3], [0, 0, 0, 0])   # neither label: never used
    euclid = mixed_label_table(va, np.array([1, 2, 3, -1]), stats, mixed="euclidean")
    np.testing.assert_array_equal(euclid[1], [0, 0, 1, 0])  # d_y = 0 at the centroid: one-hot(y)


def _context(index: pd.DataFrame) -> MethodContext:
    space = LABEL_SPACES["affwild2"]
    expr = index["expr"].to_numpy()
    return MethodContext(label_space=space, train_index=index,
                         class_counts=np.bincount(expr[expr >= 0], minlength=space.num_classes),
                         au_pos_weight=np.ones(12))


def test_objective_is_weighted_ce_plus_cosine_plus_weighted_va_l2():
    rng = np.random.default_rng(0)
    n = 40
    index = pd.DataFrame({"valence": rng.uniform(-1, 1, n), "arousal": rng.uniform(-1, 1, n),
                          "expr": np.r_[np.arange(8).repeat(4), [0] * 6, [-1] * 2]})
    index.loc[[3, 7], ["valence", "arousal"]] = np.nan
    for au in AU_NAMES:
        index[au] = np.nan
    ctx = _context(index)
    method = create_method("dual_fusion", ctx)
    batch_idx = torch.tensor([0, 3, 9, 17, 38, 39])
    y = torch.as_tensor(index["expr"].to_numpy()[batch_idx.numpy()]).clamp(min=0)
    expr_mask = torch.as_tensor(index["expr"].to_numpy()[batch_idx.numpy()] >= 0)
    va = torch.as_tensor(index[["valence", "arousal"]].to_numpy(np.float32)[batch_idx.numpy()])
    va_mask = ~torch.isnan(va).any(1)
    logits = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    va_pred = torch.rand(6, 2, generator=torch.Generator().manual_seed(2)) * 2 - 1
    batch = {"expr": y, "expr_mask": expr_mask, "va": torch.nan_to_num(va), "va_mask": va_mask, "index": batch_idx,
             "n": {"expr": int(expr_mask.sum()), "va": int(va_mask.sum()), "au": 0}}
    loss = method.expr_objective({"expr": logits, "va": va_pred}, batch, expr_mask, StepState(1, 0, 1))

    # oracle: numpy from the paper's equations
    stats = class_va_statistics(index[["valence", "arousal"]].to_numpy(), index["expr"].to_numpy(), 8)
    counts = np.bincount(index["expr"].to_numpy()[index["expr"].to_numpy() >= 0], minlength=8)
    w = counts.max() / counts
    p = F.softmax(logits.double(), -1).numpy()
    terms, l2 = [], []
    for b, i in enumerate(batch_idx.tolist()):
        x = index[["valence", "arousal"]].to_numpy()[i]
        k = index["expr"].iloc[i]
        if k >= 0:
            point = x if np.isfinite(x).all() else stats.centroids[k]
            mixed = euclidean_mixed_labels(point[None], stats.centroids)[0]
            fused = 0.5 * np.eye(8)[k] + 0.5 * mixed
            cos = fused @ p[b] / np.linalg.norm(fused) / np.linalg.norm(p[b])
            terms.append(w[k] * (-(fused * np.log(p[b])).sum() + 1 - cos))
        if np.isfinite(x).all():
            l2.append((w[k] if k >= 0 else 1.0) * ((x - va_pred[b].numpy()) ** 2).sum())
    assert float(loss) == pytest.approx(np.mean(terms) + np.mean(l2), rel=1e-5)

    no_l2 = create_method("dual_fusion", ctx, va_l2=0.0, mixed="gmm", alpha=1.0)
    plain = no_l2.expr_objective({"expr": logits, "va": va_pred}, batch, expr_mask, StepState(1, 0, 1))
    ce = -np.log(p[np.arange(6), y.numpy()])
    cos = p[np.arange(6), y.numpy()] / np.linalg.norm(p, axis=1)
    wy = w[y.numpy()]
    m = expr_mask.numpy()
    assert float(plain) == pytest.approx((wy * (ce + 1 - cos))[m].mean(), rel=1e-5)  # α = 1: one-hot labels


def test_unknown_mixed_option_is_an_error():
    index = pd.DataFrame({"valence": [0.1, 0.2], "arousal": [0.0, 0.3], "expr": [0, 1]})
    with pytest.raises(ValueError, match="mixed"):
        create_method("dual_fusion", _context(index), mixed="kmeans")
