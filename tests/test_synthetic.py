"""The embedded synthetic world (trainers/data/synthetic.py): contract, determinism, and the generative
structure the studies rely on (docs/design.md §8, docs/methods.md §1, §4)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier
from sklearn.metrics import balanced_accuracy_score, f1_score
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from trainers.data.labels import AFFECTNET, AFFWILD2, AU_NAMES
from trainers.data.synthetic import PRESETS, WorldPreset, synthetic

COLUMNS = ["image", "valence", "arousal", "expr", *AU_NAMES, "group", "frame"]
AW, AN = "affwild2_like", "affectnet_like"


@pytest.fixture(scope="module")
def aw() -> pd.DataFrame:
    return synthetic(AW, 3000, 0, image_size=32)


@pytest.fixture(scope="module")
def an() -> pd.DataFrame:
    return synthetic(AN, 3000, 0, image_size=32)


def _images(df: pd.DataFrame) -> np.ndarray:
    return np.stack(df["image"].to_numpy())


def _pixels(df: pd.DataFrame, factor: int = 2) -> np.ndarray:
    """Images average-pooled by ``factor``, flattened, in [0, 1]."""
    x = _images(df).astype(np.float32) / 255.0
    n, h, w, c = x.shape
    return x.reshape(n, h // factor, factor, w // factor, factor, c).mean((2, 4)).reshape(n, -1)


def _class_means(df: pd.DataFrame, k: int) -> np.ndarray:
    """Per-class VA means over frames with EXPR and VA (the centroid subset, docs/methods.md §4)."""
    ok = df["valence"].notna() & df["arousal"].notna() & (df["expr"] >= 0)
    sub = df[ok]
    return np.array([sub.loc[sub["expr"] == c, ["valence", "arousal"]].mean().to_numpy() for c in range(k)])


def _closest_pair(points: np.ndarray) -> set[int]:
    pairs = itertools.combinations(range(len(points)), 2)
    return set(min(pairs, key=lambda p: np.linalg.norm(points[p[0]] - points[p[1]])))


# ---------------------------------------------------------------------------------------------- contract


@pytest.mark.parametrize("preset", [AW, AN])
def test_contract_columns_dtypes_ranges(preset, aw, an):
    df = aw if preset == AW else an
    p = PRESETS[preset]
    assert list(df.columns) == COLUMNS
    assert len(df) == 3000
    assert df["image"].dtype == object
    first = df["image"].iloc[0]
    assert isinstance(first, np.ndarray) and first.shape == (32, 32, 3) and first.dtype == np.uint8
    assert {im.shape for im in df["image"]} == {(32, 32, 3)}
    for c in ("valence", "arousal", *AU_NAMES):
        assert df[c].dtype == np.float64, c
    assert df["expr"].dtype == np.int64 and df["frame"].dtype == np.int64
    assert pd.api.types.is_string_dtype(df["group"])

    va = df[["valence", "arousal"]].to_numpy()
    assert np.isnan(va[:, 0]).tolist() == np.isnan(va[:, 1]).tolist()  # VA is missing as a pair
    assert np.nanmin(va) >= -1.0 and np.nanmax(va) <= 1.0
    assert df["expr"].between(-1, p.num_classes - 1).all()
    assert set(np.unique(df["expr"])) >= set(range(p.num_classes))  # every class occurs
    au = df[list(AU_NAMES)].to_numpy()
    assert np.isin(au[~np.isnan(au)], [0.0, 1.0]).all()
    assert df.attrs == {"label_space": p.label_space.name, "preset": preset, "separability": p.separability}


def test_contract_groups_and_frames(aw, an):
    # videos: ids like vid0007, frames 0..L-1 in order, contiguous, 30-120 frames except a short tail
    assert aw["group"].str.fullmatch(r"vid\d{4,}").all()
    lengths = []
    for _, g in aw.groupby("group", sort=False):
        assert g["frame"].tolist() == list(range(len(g)))
        assert g.index.to_numpy().tolist() == list(range(g.index[0], g.index[0] + len(g)))
        lengths.append(len(g))
    assert min(lengths[:-1]) >= 30 and max(lengths) <= 180
    assert aw["group"].nunique() >= 20  # enough videos at n=3000 for a group-disjoint split
    assert synthetic(AW, 1000, 3, image_size=16)["group"].nunique() >= 10
    # images: each its own group, frame 0
    assert an["group"].str.fullmatch(r"img\d{6,}").all()
    assert an["group"].is_unique and (an["frame"] == 0).all()


def test_unknown_preset_and_bad_arguments():
    with pytest.raises(ValueError, match=r"'affwild3_like'.*affectnet_like.*affwild2_like"):
        synthetic("affwild3_like", 10, 0)
    with pytest.raises(ValueError, match="separability"):
        synthetic(AW, 10, 0, separability=1.5)
    with pytest.raises(ValueError, match="n must be"):
        synthetic(AW, 0, 0)


def test_presets_are_well_formed():
    assert set(PRESETS) == {AW, AN}
    assert PRESETS[AW].label_space is AFFWILD2 and PRESETS[AN].label_space is AFFECTNET
    for p in PRESETS.values():
        assert isinstance(p, WorldPreset)
        k = p.num_classes
        assert p.centroids.shape == (k, 2) and p.au_patterns.shape == (k, len(AU_NAMES))
        assert np.isclose(p.class_freq.sum(), 1.0) and (np.abs(p.centroids) <= 1).all()
        assert ((p.au_patterns >= 0) & (p.au_patterns <= 1)).all()
        names = tuple(p.class_names[i] for i in p.degenerate_pair)
        assert names == p.label_space.degenerate_pair
        with pytest.raises(ValueError):  # arrays are frozen with the preset
            p.centroids[0, 0] = 0.5


def test_preset_rejects_inconsistent_pair_spread():
    p = PRESETS[AW]
    a, _ = p.degenerate_pair
    std = p.va_std.copy()
    std[a] *= 2  # the pair could no longer be made one distribution at separability 0
    with pytest.raises(ValueError, match="degenerate pair"):
        WorldPreset(name="x", label_space=p.label_space, centroids=p.centroids, va_std=std,
                    class_freq=p.class_freq, au_patterns=p.au_patterns,
                    unilateral_smile=p.unilateral_smile, degenerate_pair=p.degenerate_pair)


# ----------------------------------------------------------------------------------------- determinism


def test_deterministic_and_seed_dependent():
    a = synthetic(AW, 400, 5, image_size=32)
    b = synthetic(AW, 400, 5, image_size=32)
    np.testing.assert_array_equal(_images(a), _images(b))
    pd.testing.assert_frame_equal(a.drop(columns="image"), b.drop(columns="image"))
    c = synthetic(AW, 400, 6, image_size=32)
    assert not np.array_equal(_images(a), _images(c))
    assert not np.allclose(a["valence"].fillna(9), c["valence"].fillna(9))


def test_labels_paired_across_separability_and_size():
    # Worlds differing only in separability or resolution share every label: conditions compared on
    # them are paired frame by frame; only the pictures change.
    base = synthetic(AN, 500, 2, image_size=32, separability=0.0)
    sep = synthetic(AN, 500, 2, image_size=32, separability=1.0)
    big = synthetic(AN, 500, 2, image_size=48, separability=0.0)
    pd.testing.assert_frame_equal(base.drop(columns="image"), sep.drop(columns="image"))
    pd.testing.assert_frame_equal(base.drop(columns="image"), big.drop(columns="image"))
    assert big["image"].iloc[0].shape == (48, 48, 3)
    pair = base["expr"].isin([AFFECTNET.class_names.index(c) for c in AFFECTNET.degenerate_pair])
    diff = np.abs(_images(base).astype(int) - _images(sep).astype(int)).mean((1, 2, 3))
    # separability redraws the pair only; other classes differ by nothing
    assert diff[~pair.to_numpy()].max() == 0 and diff[pair.to_numpy()].mean() > 0.5


# ---------------------------------------------------------------------------------------------- labels


def test_label_availability_affwild2(aw):
    va = aw["valence"].notna()
    ex = aw["expr"] >= 0
    au = aw[list(AU_NAMES)].notna()
    assert (au.all(axis=1) == au.any(axis=1)).all()  # AUs are annotated as a block
    au = au.all(axis=1)
    assert 0.25 <= (va & ex & au).mean() <= 0.45
    assert (va & ex).mean() >= 0.4  # the centroid subset is the largest joint one
    assert 0.0 < (~va).mean() and 0.0 < (~ex).mean() and 0.0 < (~au).mean()
    assert (va | ex | au).mean() > 0.95
    # partial labels are per video plus short gaps: some videos lack a task entirely
    per_video = aw.assign(has_au=au).groupby("group")["has_au"].mean()
    assert (per_video == 0).any() and (per_video > 0.8).any()


def test_label_availability_affectnet(an):
    assert an[list(AU_NAMES)].isna().all().all()
    assert (an["expr"] >= 0).all()
    assert an["valence"].notna().mean() >= 0.97


# -------------------------------------------------------------------------------------------- geometry


def test_geometry_affwild2():
    p = PRESETS[AW]
    df = synthetic(AW, 6000, 1, image_size=16)
    means = _class_means(df, p.num_classes)
    assert np.linalg.norm(means - p.centroids, axis=1).max() < 0.07
    assert _closest_pair(means) == set(p.degenerate_pair)
    # the preset's own circumplex: anger-fear closest, anger-happiness farthest, and anger crowded
    # (three neighbours within a sixth of the largest distance, study §3.3)
    names = p.class_names
    cost = np.linalg.norm(p.centroids[:, None] - p.centroids[None], axis=-1)
    anger, fear, happy = (names.index(c) for c in ("Anger", "Fear", "Happiness"))
    assert _closest_pair(p.centroids) == {anger, fear} and 0.05 <= cost[anger, fear] <= 0.08
    assert set(np.unravel_index(cost.argmax(), cost.shape)) == {anger, happy}
    assert np.sum(cost[anger] < cost.max() / 6) - 1 == 3


def test_geometry_affectnet(an):
    p = PRESETS[AN]
    means = _class_means(an, p.num_classes)
    assert np.linalg.norm(means - p.centroids, axis=1).max() < 0.05
    assert _closest_pair(means) == set(p.degenerate_pair)
    cost = np.linalg.norm(p.centroids[:, None] - p.centroids[None], axis=-1)
    names = p.class_names
    # contempt-happy is the farthest pair: the far corner of the circumplex
    assert set(np.unravel_index(cost.argmax(), cost.shape)) == {names.index("Contempt"), names.index("Happy")}


@pytest.mark.parametrize("preset", [AW, AN])
def test_class_frequencies_long_tailed(preset, aw, an):
    df = aw if preset == AW else an
    p = PRESETS[preset]
    labelled = df.loc[df["expr"] >= 0, "expr"]
    freq = np.bincount(labelled, minlength=p.num_classes) / len(labelled)
    np.testing.assert_allclose(freq, p.class_freq, atol=0.03)
    assert freq.max() / freq.min() > 8
    order = np.argsort(p.class_freq)
    # the common half of the classes stays more common than the rare half
    assert freq[order[-4:]].min() > freq[order[:4]].max()


# -------------------------------------------------------------------------------------------- videos


def test_temporal_smoothness(aw):
    rng = np.random.default_rng(0)
    steps, spread = [], []
    for _, g in aw.groupby("group"):
        va = g[["valence", "arousal"]].to_numpy()
        if np.isnan(va).all():
            continue
        step = np.linalg.norm(np.diff(va, axis=0), axis=1)
        steps.append(step[~np.isnan(step)])
        i, j = rng.integers(0, len(g), (2, 200))
        far = np.linalg.norm(va[i] - va[j], axis=1)
        spread.append(far[~np.isnan(far)])
    assert np.median(np.concatenate(steps)) < 0.3 * np.median(np.concatenate(spread))
    # identity and lighting persist within a video: consecutive frames look alike, videos do not
    img = _images(aw).astype(np.float32)
    same = aw["group"].to_numpy()[1:] == aw["group"].to_numpy()[:-1]
    consecutive = np.abs(img[1:] - img[:-1]).mean((1, 2, 3))[same]
    i, j = rng.integers(0, len(aw), (2, 500))
    other = aw["group"].to_numpy()[i] != aw["group"].to_numpy()[j]
    across = np.abs(img[i] - img[j]).mean((1, 2, 3))[other]
    assert np.median(consecutive) < 0.4 * np.median(across)


# ------------------------------------------------------------------------------------ appearance


def _pair_accuracy(preset: str, n: int, separability: float) -> float:
    """Group-disjoint cross-validated balanced accuracy of anger vs its degenerate partner."""
    p = PRESETS[preset]
    df = synthetic(preset, n, 0, image_size=32, separability=separability)
    df = df[df["expr"].isin(p.degenerate_pair)]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000, class_weight="balanced"))
    pred = cross_val_predict(clf, _pixels(df), df["expr"], groups=df["group"], cv=GroupKFold(5))
    return balanced_accuracy_score(df["expr"], pred)


def test_separability_controls_anger_fear():
    # study §6.2: the pair is told apart by AUs alone; separability sets how visible they are
    hidden = _pair_accuracy(AW, 8000, 0.0)
    visible = _pair_accuracy(AW, 8000, 1.0)
    assert hidden < 0.62
    assert visible > 0.72 and visible - hidden > 0.2


def test_au_labels_ignore_separability():
    # the AU labels keep the class-typical anger/fear difference even when nothing of it is drawn
    df = synthetic(AW, 6000, 0, image_size=16, separability=0.0)
    anger, fear = PRESETS[AW].degenerate_pair
    au = df[list(AU_NAMES)]
    sig = {k: au[df["expr"] == k].mean() for k in (anger, fear)}
    for unit in ("AU1", "AU2", "AU25"):
        assert sig[fear][unit] - sig[anger][unit] > 0.35, unit
    for unit in ("AU7", "AU23", "AU24"):
        assert sig[anger][unit] - sig[fear][unit] > 0.35, unit


def test_learnability_linear_proxy(aw):
    # a linear model on pooled pixels, trained and tested on disjoint videos, beats chance clearly
    k = PRESETS[AW].num_classes
    x = _pixels(aw, 2)
    groups = aw["group"].to_numpy()
    te = np.isin(groups, np.unique(groups)[::3])
    ex = (aw["expr"] >= 0).to_numpy()
    expr = aw["expr"].to_numpy()
    clf = make_pipeline(StandardScaler(), RidgeClassifier(alpha=100.0, class_weight="balanced"))
    clf.fit(x[~te & ex], expr[~te & ex])
    assert f1_score(expr[te & ex], clf.predict(x[te & ex]), average="macro") > 2.0 / k
    va_ok = aw["valence"].notna().to_numpy()
    target = aw[["valence", "arousal"]].to_numpy()
    reg = make_pipeline(StandardScaler(), Ridge(alpha=100.0)).fit(x[~te & va_ok], target[~te & va_ok])
    out = reg.predict(x[te & va_ok])
    for d in range(2):
        assert np.corrcoef(out[:, d], target[te & va_ok, d])[0, 1] > 0.35


def test_contempt_smiles_like_happiness_on_one_side():
    # The far-corner confound (study §5.8): a classifier that never saw contempt, shown the right
    # half of the face, calls contempt happy; shown the left half, it does not. Contempt sits at
    # anger's VA, the far corner from happiness (test_geometry_affectnet).
    df = synthetic(AN, 3000, 0, image_size=32, separability=1.0)
    names = AFFECTNET.class_names
    expr = df["expr"].to_numpy()
    x = _images(df).astype(np.float32).reshape(len(df), 16, 2, 16, 2, 3).mean((2, 4)) / 255.0
    contempt = expr == names.index("Contempt")
    share_happy = {}
    for side, cols in (("right", slice(8, 16)), ("left", slice(0, 8))):
        feats = x[:, :, cols].reshape(len(df), -1)
        clf = make_pipeline(StandardScaler(), RidgeClassifier(alpha=100.0, class_weight="balanced"))
        clf.fit(feats[~contempt], expr[~contempt])
        share_happy[side] = np.mean(clf.predict(feats[contempt]) == names.index("Happy"))
    assert share_happy["right"] > 0.45
    assert share_happy["left"] < 0.2
