"""Circumplex geometry and cost variants (docs/methods.md §4-§5, §7) against independent oracles."""

import json
import time

import numpy as np
import ot
import pandas as pd
import pytest
from scipy.spatial.distance import cdist
from scipy.stats import rankdata

from trainers import geometry as g
from trainers.costs import COST_VARIANTS, build_cost
from trainers.data.labels import AFFECTNET, AFFWILD2, AU_NAMES, RAFDB


def labelled(rng, centroids, n, sd=0.1, va_missing=0.0, expr_missing=0.0):
    k = len(centroids)
    y = rng.integers(0, k, n)
    va = centroids[y] + sd * rng.standard_normal((n, 2))
    va[rng.random(n) < va_missing] = np.nan
    expr = np.where(rng.random(n) < expr_missing, -1, y)
    return va, expr


def spd(rng, d=2):
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.05 * np.eye(d)


# --- centroids, cost, covariances, isolation ------------------------------------------------------

def test_centroids_and_cost_match_a_groupby_oracle():
    rng = np.random.default_rng(0)
    mu = rng.uniform(-1, 1, (5, 2))
    va, expr = labelled(rng, mu, 400, va_missing=0.3, expr_missing=0.2)
    expr[expr == 4] = -1                                     # class 4 has no frame at all
    va[rng.random(400) < 0.1, 1] = np.nan                    # a half-missing VA is missing
    df = pd.DataFrame({"v": va[:, 0], "a": va[:, 1], "y": expr}).dropna()
    oracle = df[df.y >= 0].groupby("y")[["v", "a"]].mean()
    cent = g.estimate_centroids(va, expr, 5)
    np.testing.assert_allclose(cent[oracle.index.to_numpy()], oracle.to_numpy())
    assert np.isnan(cent[4]).all()
    cost = g.cost_matrix(cent[:4])
    np.testing.assert_allclose(cost, cdist(cent[:4], cent[:4]))
    assert (np.diag(cost) == 0).all()
    with pytest.raises(ValueError, match="num_classes"):
        g.estimate_centroids(va, expr, 3)


def test_covariances_and_isolation():
    rng = np.random.default_rng(1)
    mu = np.array([[0.0, 0.0], [0.5, 0.5], [-0.5, 0.5]])
    va, expr = labelled(rng, mu, 300, sd=0.2)
    covs = g.class_covariances(va, expr, 4)
    for k in range(3):
        np.testing.assert_allclose(covs[k], np.cov(va[expr == k].T))
    assert np.isnan(covs[3]).all()
    cost = g.cost_matrix(mu)
    np.testing.assert_allclose(g.class_isolation(cost), [np.sqrt(0.5), np.sqrt(0.5), np.sqrt(0.5)])
    cost2 = g.cost_matrix(np.array([[0, 0], [1, 0], [3, 0.0]]))
    np.testing.assert_allclose(g.class_isolation(cost2), [1, 1, 2])


# --- controls --------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [2, 3, 8])
def test_permuted_cost_is_a_derangement_of_the_same_costs(k):
    rng = np.random.default_rng(k)
    cost = g.cost_matrix(rng.uniform(-1, 1, (k, 2)))
    off = ~np.eye(k, dtype=bool)
    perms = []
    for seed in range(10):
        pi = g.derangement(k, seed)
        assert sorted(pi) == list(range(k)) and (pi != np.arange(k)).all()
        perm = g.permuted_cost(cost, seed)
        expected = np.array([[cost[pi[i], pi[j]] for j in range(k)] for i in range(k)])
        np.testing.assert_array_equal(perm, expected)
        np.testing.assert_allclose(np.sort(perm[off]), np.sort(cost[off]))
        assert (np.diag(perm) == 0).all()
        np.testing.assert_array_equal(g.permuted_cost(cost, seed), perm)     # same seed, same matrix
        perms.append(tuple(pi))
    if k > 2:                                               # k = 2 has a single derangement
        assert len(set(perms)) > 1
    with pytest.raises(ValueError):
        g.derangement(1, 0)


def test_derangements_are_uniform():
    # K = 4 has 9 derangements (!4 = 9); each should be drawn with probability 1/9
    draws = [tuple(g.derangement(4, s)) for s in range(1800)]
    counts = pd.Series(draws).value_counts()
    assert len(counts) == 9
    assert counts.min() > 140 and counts.max() < 260      # 200 expected, sd ~ 13


def test_uniform_cost():
    rng = np.random.default_rng(2)
    cost = g.cost_matrix(rng.uniform(-1, 1, (6, 2)))
    u = g.uniform_cost(cost)
    off = ~np.eye(6, dtype=bool)
    assert np.allclose(u[off], cost[off].mean()) and (np.diag(u) == 0).all()


# --- distributional / enriched costs --------------------------------------------------------------

def test_gaussian_w2_matches_pot_bures_wasserstein():
    rng = np.random.default_rng(3)
    k = 5
    means = rng.uniform(-1, 1, (k, 2))
    covs = np.stack([spd(rng) * 0.05 for _ in range(k)])
    ours = g.gaussian_w2_cost(means, covs)
    pot = ot.gaussian.bures_wasserstein_distance(means, means, covs, covs)
    off = ~np.eye(k, dtype=bool)
    np.testing.assert_allclose(ours[off], np.asarray(pot)[off], rtol=1e-6, atol=1e-7)
    assert (np.diag(ours) == 0).all()
    np.testing.assert_allclose(ours, ours.T, atol=1e-10)
    # equal covariances: W2 reduces to the distance between the means
    same = np.repeat(spd(rng)[None] * 0.1, k, axis=0)
    np.testing.assert_allclose(g.gaussian_w2_cost(means, same), g.cost_matrix(means), atol=1e-7)
    # commuting (diagonal, possibly singular) covariances: W2^2 = |dmu|^2 + |S_i^1/2 - S_j^1/2|_F^2;
    # dispersion separates co-located classes
    diag = np.array([[0.1, 0.0], [0.0, 0.1], [0.04, 0.09]])
    mus = np.array([[0.0, 0.0], [0.0, 0.0], [0.3, -0.4]])
    w2 = g.gaussian_w2_cost(mus, np.stack([np.diag(d) for d in diag]))
    closed = np.sqrt(cdist(mus, mus) ** 2 + cdist(np.sqrt(diag), np.sqrt(diag)) ** 2)
    np.testing.assert_allclose(w2, closed, atol=1e-7)
    assert w2[0, 1] == pytest.approx(np.sqrt(2 * 0.1))


def test_au_signatures_and_composite_rescaling():
    rng = np.random.default_rng(4)
    n, k = 500, 4
    y = rng.integers(0, k, n)
    au = (rng.random((n, 12)) < rng.uniform(0.1, 0.9, (k, 12))[y]).astype(float)
    au[rng.random((n, 12)) < 0.2] = np.nan
    expr = np.where(rng.random(n) < 0.1, -1, y)
    sig = g.au_signatures(au, expr, k)
    for c in range(k):
        np.testing.assert_allclose(sig[c], np.nanmean(au[expr == c], axis=0))
    cost = g.cost_matrix(rng.uniform(-1, 1, (k, 2)))
    comp = g.au_composite_cost(cost, sig)
    d = 2 * comp - cost                                       # the rescaled AU distance
    off = ~np.eye(k, dtype=bool)
    assert d[off].mean() == pytest.approx(cost[off].mean())
    np.testing.assert_allclose(d / d[0, 1], cdist(sig, sig) / cdist(sig, sig)[0, 1], rtol=1e-10, atol=1e-12)
    # co-located classes with different AU patterns become separated
    co = cost.copy()
    co[0, 1] = co[1, 0] = 0.0
    assert g.au_composite_cost(co, sig)[0, 1] > 0.05
    with pytest.raises(ValueError):
        g.au_composite_cost(cost, np.ones((k, 12)))


# --- bootstrap ------------------------------------------------------------------------------------

def test_bootstrap_ci_contains_estimate_and_se_shrinks_with_n():
    mu = np.array([[0.0, 0.0], [0.6, 0.2], [-0.5, 0.5], [0.1, -0.7]])
    sd, k = 0.2, 4
    ses = {}
    for n in (400, 4000):
        rng = np.random.default_rng(n)
        va, expr = labelled(rng, mu, n, sd=sd, va_missing=0.2)
        res = g.bootstrap_geometry(va, expr, k, n_resamples=1000, seed=0)
        point = g.cost_matrix(g.estimate_centroids(va, expr, k))
        assert res.distance_ci.shape == (k, k, 2)
        assert (res.distance_ci[..., 0] <= point + 1e-12).all() and (point <= res.distance_ci[..., 1] + 1e-12).all()
        # radial SE = RMS distance of the resampled centroid from the estimate = sqrt(2 sd^2 / n_k)
        n_k = np.bincount(expr[np.isfinite(va).all(1)], minlength=k)
        np.testing.assert_allclose(res.radial_se, np.sqrt(2 * sd**2 / n_k), rtol=0.15)
        ses[n] = res.radial_se
    assert (ses[4000] < 0.5 * ses[400]).all()


def test_bootstrap_is_fast_and_seeded():
    rng = np.random.default_rng(5)
    va, expr = labelled(rng, rng.uniform(-1, 1, (8, 2)), 5000)
    start = time.perf_counter()
    a = g.bootstrap_geometry(va, expr, 8, n_resamples=1000, seed=7)
    assert time.perf_counter() - start < 1.5
    b = g.bootstrap_geometry(va, expr, 8, n_resamples=1000, seed=7)
    np.testing.assert_array_equal(a.radial_se, b.radial_se)
    assert a.n_joint == 5000 and a.n_resamples == 1000


# --- representational similarity (docs/methods.md §7) -----------------------------------------------------

def test_rsa_is_one_for_prototypes_monotone_in_cost():
    rng = np.random.default_rng(6)
    k = 8
    t = np.sort(rng.uniform(0, 1, k))                        # classes on a line: C_ij = |t_i - t_j|
    cost = np.abs(t[:, None] - t[None, :])
    theta = np.pi * (t - t[0]) / (t[-1] - t[0])              # cosine distance 1 - cos(dtheta), monotone
    protos = np.stack([np.cos(theta), np.sin(theta), np.zeros(k)], axis=1) * rng.uniform(1, 3, (k, 1))
    labels = np.repeat(np.arange(k), 4)
    noise = rng.normal(size=(k, 2, 3))
    noise = np.concatenate([noise, -noise], axis=1).reshape(-1, 3)   # zero mean within each class
    feats = protos[labels] + 0.1 * noise
    res = g.representational_similarity(feats, labels, cost)
    assert res.rho == pytest.approx(1.0) and res.n_pairs == 28 and res.pvalue < 1e-6
    # a shuffled geometry is not aligned; the value matches a rank-correlation oracle
    perm_cost = g.permuted_cost(cost, 0)
    shuffled = g.representational_similarity(feats, labels, perm_cost)
    iu = np.triu_indices(k, 1)
    unit = protos / np.linalg.norm(protos, axis=1, keepdims=True)
    fd = (1 - unit @ unit.T)[iu]
    oracle = np.corrcoef(rankdata(fd), rankdata(perm_cost[iu]))[0, 1]
    assert shuffled.rho == pytest.approx(oracle) and shuffled.rho < 0.9
    sub = g.representational_similarity(feats, labels, cost, classes=[0, 2, 5, 7])
    assert sub.n_pairs == 6 and sub.rho == pytest.approx(1.0)


# --- geometry transfer -----------------------------------------------------------------------------

def test_imported_cost_through_name_aliases():
    src_names = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")
    rng = np.random.default_rng(7)
    src = g.cost_matrix(rng.uniform(-1, 1, (8, 2)))
    tgt_names = ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt")
    out = g.imported_cost(src, src_names, tgt_names)
    by_hand = {"Neutral": 0, "Happy": 4, "Sad": 5, "Surprise": 6, "Fear": 3, "Disgust": 2, "Anger": 1}
    for a, na in enumerate(tgt_names[:7]):
        for b, nb in enumerate(tgt_names[:7]):
            assert out[a, b] == src[by_hand[na], by_hand[nb]]
    off_mean = src[~np.eye(8, dtype=bool)].mean()
    assert np.allclose(out[7, :7], off_mean) and np.allclose(out[:7, 7], off_mean) and out[7, 7] == 0
    assert np.isfinite(out).all()
    # a Geometry can be the source too, and RAF-DB's label space (AffectNet order) is the target
    va, expr = labelled(rng, rng.uniform(-1, 1, (8, 2)), 800)
    geo = g.geometry_from_arrays(src_names, va, expr, n_boot=50)
    via_geo = g.imported_cost(geo, src_names, RAFDB.class_names)
    np.testing.assert_allclose(via_geo[1, 2], geo.cost[4, 5])              # Happy-Sad
    moved = g.import_geometry(geo, RAFDB.class_names)
    np.testing.assert_allclose(moved.centroids[6], geo.centroids[1])         # Anger
    assert np.isnan(moved.centroids[7]).all()                                # Contempt
    with pytest.raises(ValueError, match="counterpart"):
        g.imported_cost(src, src_names, ("Joyless", "Calm"))


# --- Geometry, build_cost, circumplex_record ------------------------------------------------

def index_frame(rng, label_space, n=1500, with_va=True):
    mu = rng.uniform(-0.8, 0.8, (label_space.num_classes, 2))
    va, expr = labelled(rng, mu, n, sd=0.1, va_missing=0.2, expr_missing=0.1)
    df = pd.DataFrame({"valence": va[:, 0], "arousal": va[:, 1], "expr": expr})
    if not with_va:
        df["valence"] = df["arousal"] = np.nan
    for a in AU_NAMES:
        df[a] = (rng.random(n) < 0.5).astype(float) if label_space.has_au else np.nan
    df["group"], df["frame"], df["path"] = "g", np.arange(n), "x.jpg"
    return df, mu


def test_estimate_geometry_and_json_round_trip():
    rng = np.random.default_rng(8)
    df, mu = index_frame(rng, AFFWILD2)
    geo = g.estimate_geometry(df, AFFWILD2, n_boot=200)
    joint = (df.expr >= 0) & df.valence.notna()
    assert geo.n_joint == int(joint.sum())
    np.testing.assert_allclose(geo.cost, g.cost_matrix(geo.centroids))
    i, j = geo.degenerate_pair
    off = geo.cost + np.eye(8) * 9
    assert geo.cost[i, j] == off.min() and i < j
    assert geo.au_signatures.shape == (8, 12)
    back = g.Geometry.from_json(json.loads(geo.to_json()))
    for f in ("centroids", "cost", "radial_se", "distance_ci", "isolation", "covariances", "au_signatures"):
        np.testing.assert_array_equal(getattr(back, f), getattr(geo, f))
    assert back.class_names == geo.class_names and back.degenerate_pair == geo.degenerate_pair
    raf, _ = index_frame(rng, RAFDB, with_va=False)
    assert g.estimate_geometry(raf, RAFDB) is None
    assert g.estimate_geometry(index_frame(rng, AFFECTNET)[0], AFFECTNET).au_signatures is None


def test_build_cost_and_record():
    rng = np.random.default_rng(9)
    df, _ = index_frame(rng, AFFWILD2)
    df.loc[df.expr == 7, ["valence", "arousal"]] = np.nan     # "Other" has no joint frame
    geo = g.estimate_geometry(df, AFFWILD2, n_boot=100)
    assert np.isnan(geo.cost[7, :7]).all()
    off = ~np.eye(8, dtype=bool)
    defined = geo.cost[:7, :7][~np.eye(7, dtype=bool)].mean()
    for variant in COST_VARIANTS:
        if variant == "imported":
            continue
        choice = build_cost(variant, geo, seed=2)
        assert choice.variant == variant
        if variant == "none":
            assert choice.matrix is None
            continue
        assert choice.matrix.shape == (8, 8) and np.isfinite(choice.matrix).all()
        assert (np.diag(choice.matrix) == 0).all() and (choice.matrix[off] > 0).all()
        assert np.allclose(choice.matrix[7, :7], defined) or variant in ("permuted", "gaussian_w2", "va_au")
    perm = build_cost("permuted", geo, seed=2)
    np.testing.assert_array_equal(perm.derangement, g.derangement(8, 2))
    record = g.circumplex_record(geo, perm)
    text = json.dumps(record, allow_nan=False)
    assert set(json.loads(text)) >= {"class_names", "centroids", "radial_se", "true_cost", "cost_used", "cost_variant",
                                     "derangement", "degenerate_pair", "isolation", "distance_ci"}
    assert record["centroids"][7] == [None, None]
    np.testing.assert_allclose(record["cost_used"], perm.matrix)
    with pytest.raises(ValueError, match="needs a circumplex"):
        build_cost("uniform", None, seed=0)
    with pytest.raises(ValueError, match="imported_from"):
        build_cost("imported", geo, seed=0)
    imported = build_cost("circumplex", None, seed=0, imported=geo.cost)
    assert np.isfinite(imported.matrix).all()
    with pytest.raises(ValueError, match="AU"):
        build_cost("va_au", g.estimate_geometry(index_frame(rng, AFFECTNET)[0], AFFECTNET), seed=0)


# --- the synthetic world (trainers.data.synthetic) -------------------------------------------------

@pytest.mark.parametrize("preset, pair", [("affwild2_like", ("Anger", "Fear")),
                                          ("affectnet_like", ("Anger", "Contempt"))])
def test_synthetic_world_geometry_is_recovered(preset, pair):
    from trainers.data.synthetic import PRESETS, synthetic

    world = PRESETS[preset]
    df = synthetic(preset, n=6000, seed=0, image_size=8)     # labels do not depend on the image size
    frames = g.estimate_geometry(df, world.label_space, bootstrap_unit="frames")
    geo = g.estimate_geometry(df, world.label_space, bootstrap_unit="groups")
    np.testing.assert_array_equal(frames.centroids, geo.centroids)
    # every estimated centroid lies within a few (cluster-)bootstrap standard errors of the truth
    err = np.linalg.norm(geo.centroids - world.centroids, axis=1)
    assert (err < 4 * geo.radial_se).all(), err / geo.radial_se
    assert geo.degenerate_pair_names == pair
    assert geo.degenerate_pair == tuple(sorted(world.degenerate_pair))
    assert (geo.au_signatures is not None) == world.label_space.has_au
    if world.videos:
        # frames of a video are correlated: the frame bootstrap understates the standard error
        assert np.mean(geo.radial_se / frames.radial_se) > 1.2
