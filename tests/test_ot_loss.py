"""The circumplex-cost OT term (docs/methods.md §5) against POT's exact transport cost and the closed forms."""

import json

import numpy as np
import ot
import pytest
import torch

from tests.support.toy_index import CENTROIDS, make_ctx, toy_index
from trainers.data.labels import AFFECTNET, AFFWILD2, AU_NAMES, RAFDB
from trainers.geometry import CostChoice, circumplex_record, estimate_geometry, uniform_cost
from trainers.losses import consistency_loss, focal_loss, ot_loss
from trainers.losses.ot import OTTerm, build_ot_term, instance_cost_rows

torch.set_num_threads(1)


def random_cost(rng, k):
    """A non-negative cost with zero diagonal, deliberately asymmetric so that [k, y] indexing is tested."""
    c = rng.uniform(0.1, 2.0, (k, k))
    np.fill_diagonal(c, 0.0)
    return c


@pytest.mark.parametrize("k", [2, 3, 7, 8])
def test_ot_loss_is_the_exact_transport_cost_to_a_point_mass(k):
    rng = np.random.default_rng(k)
    b = 6
    cost = random_cost(rng, k)
    logits = torch.tensor(rng.normal(0, 2, (b, k)), dtype=torch.float64)
    target = torch.tensor(rng.integers(0, k, b))
    p = torch.softmax(logits, -1).numpy()
    exact = np.mean([ot.emd2(p[i] / p[i].sum(), np.eye(k)[target[i]], cost) for i in range(b)])
    ours = ot_loss(logits, target, torch.tensor(cost))
    assert ours.ndim == 0
    assert float(ours) == pytest.approx(exact, rel=1e-5, abs=1e-6)
    # the transpose is a different cost: the orientation C[k, y] matters
    assert float(ot_loss(logits, target, torch.tensor(cost.T))) != pytest.approx(exact, rel=1e-3)


@pytest.mark.parametrize("k", [3, 8])
def test_ot_gradient_matches_eq5(k):
    rng = np.random.default_rng(10 + k)
    b = 5
    cost = torch.tensor(random_cost(rng, k), dtype=torch.float32)
    logits = torch.tensor(rng.normal(0, 1.5, (b, k)), dtype=torch.float32, requires_grad=True)
    target = torch.tensor(rng.integers(0, k, b))
    ot_loss(logits, target, cost).backward()
    p = torch.softmax(logits.detach(), -1)
    col = cost[:, target].T                              # C_{k, y_b}
    cbar = (p * col).sum(-1, keepdim=True)
    expected = p * (col - cbar) / b
    torch.testing.assert_close(logits.grad, expected, rtol=1e-5, atol=1e-7)


def test_uniform_cost_is_a_confidence_penalty():
    rng = np.random.default_rng(1)
    k, b = 8, 9
    cost = np.abs(rng.normal(size=(k, k)))
    cost = cost + cost.T
    np.fill_diagonal(cost, 0.0)
    cbar_off = cost[~np.eye(k, dtype=bool)].mean()
    logits = torch.tensor(rng.normal(size=(b, k)), dtype=torch.float32)
    target = torch.tensor(rng.integers(0, k, b))
    p_y = torch.softmax(logits, -1)[torch.arange(b), target]
    ours = ot_loss(logits, target, torch.tensor(uniform_cost(cost)))
    assert float(ours) == pytest.approx(float((cbar_off * (1 - p_y)).mean()), rel=1e-5)


def test_instance_rows_follow_the_per_frame_formula():
    rng = np.random.default_rng(2)
    k = b = 4                                           # B == K: the per-frame form must be asked for
    mu = rng.uniform(-1, 1, (k, 2))
    mu[2] = np.nan                                      # a class without a centroid keeps C_{., y}
    cost = random_cost(rng, k)
    va = rng.uniform(-1, 1, (b, 2))
    va_valid = np.array([True, False, True, True])
    target = np.array([0, 1, 3, 2])
    expected = np.empty((b, k))
    for i in range(b):
        for j in range(k):
            if va_valid[i] and np.isfinite(mu[j]).all():
                expected[i, j] = np.hypot(*(va[i] - mu[j]))
            else:
                expected[i, j] = cost[j, target[i]]
    rows = instance_cost_rows(torch.tensor(va), torch.tensor(va_valid), torch.tensor(target),
                              torch.tensor(mu), torch.tensor(cost))
    np.testing.assert_allclose(rows.numpy(), expected, rtol=1e-5)
    logits = torch.tensor(rng.normal(size=(b, k)), dtype=torch.float32)
    p = torch.softmax(logits, -1).numpy()
    ours = ot_loss(logits, torch.tensor(target), rows, per_frame=True)
    assert float(ours) == pytest.approx(float((p * expected).sum(1).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="per-frame cost"):
        ot_loss(logits[:3], torch.tensor(target[:3]), rows, per_frame=True)


def test_consistency_term_on_a_hand_example():
    mu = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    va_pred = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    # frame 1: expected VA (0.5, 0.5), squared error 0.5; frame 2: expected (1, 0), squared error 1
    assert float(consistency_loss(va_pred, probs, mu)) == pytest.approx(0.75)


def test_ot_term_uses_masked_frames_and_weights():
    rng = np.random.default_rng(4)
    k, b = 3, 6
    cost = random_cost(rng, k)
    mu = rng.uniform(-1, 1, (k, 2))
    logits = torch.tensor(rng.normal(size=(b, k)), dtype=torch.float32, requires_grad=True)
    va_pred = torch.tanh(torch.tensor(rng.normal(size=(b, 2)), dtype=torch.float32))
    expr = torch.tensor([0, 2, -1, 1, -1, 2])          # arbitrary (-1) where the mask is False
    mask = expr >= 0
    va_mask = torch.tensor([True, False, True, True, False, False])
    batch = {"expr": expr, "va": torch.zeros(b, 2), "va_mask": va_mask}
    out = {"expr": logits, "va": va_pred}
    term = OTTerm(CostChoice("circumplex", cost), lam=0.5, consistency=2.0, centroids=mu)
    value = term(out, batch, mask)

    p = torch.softmax(logits.detach(), -1).numpy()
    y = expr.numpy()
    sel = np.flatnonzero(mask.numpy())
    l_ot = np.mean([sum(p[i, j] * cost[j, y[i]] for j in range(k)) for i in sel])
    joint = np.flatnonzero(mask.numpy() & va_mask.numpy())          # frames 0 and 3
    l_cons = np.mean([np.sum((va_pred[i].numpy() - p[i] @ mu) ** 2) for i in joint])
    assert float(value.detach()) == pytest.approx(0.5 * l_ot + 2.0 * l_cons, rel=1e-5)
    value.backward()
    assert logits.grad[~mask].abs().max() == 0                     # unmasked frames get no gradient

    # no cost ("none") and no joint frame: the term is exactly zero
    none = OTTerm(CostChoice("none", None), lam=1.0, consistency=1.0, centroids=mu)
    no_va = {**batch, "va_mask": torch.zeros(b, dtype=torch.bool)}
    assert float(none(out, no_va, mask).detach()) == 0.0
    assert float(term(out, batch, torch.zeros(b, dtype=torch.bool)).detach()) == 0.0


def test_ot_term_instance_variant_prices_frames_at_their_own_va():
    rng = np.random.default_rng(5)
    k, b = 3, 6
    mu = rng.uniform(-1, 1, (k, 2))
    cost = np.linalg.norm(mu[:, None] - mu[None], axis=-1)
    logits = torch.tensor(rng.normal(size=(b, k)), dtype=torch.float32)
    va = rng.uniform(-1, 1, (b, 2))
    va_mask = np.array([True, True, False, True, False, True])
    expr = torch.tensor([1, 0, 2, -1, 1, 2])
    mask = expr >= 0
    batch = {"expr": expr, "va": torch.tensor(np.where(va_mask[:, None], va, 0.0), dtype=torch.float32),
             "va_mask": torch.tensor(va_mask)}
    term = OTTerm(CostChoice("instance", cost, centroids=mu), lam=2.0)
    p = torch.softmax(logits, -1).numpy()
    per_frame = []
    for i in np.flatnonzero(mask.numpy()):
        c = np.linalg.norm(va[i] - mu, axis=1) if va_mask[i] else cost[:, int(expr[i])]
        per_frame.append(p[i] @ c)
    assert float(term({"expr": logits}, batch, mask)) == pytest.approx(2.0 * np.mean(per_frame), rel=1e-5)


# --- build_ot_term with a MethodContext, and a few training steps per cost variant -----------------

def test_build_ot_term_variants_and_errors(tmp_path):
    df, _ = toy_index()
    ctx = make_ctx(df, seed=3)
    circ = build_ot_term(ctx, "circumplex", 1.0, 0.0, None)
    np.testing.assert_allclose(circ.choice.matrix, ctx.geometry.cost)
    perm = build_ot_term(ctx, "permuted", 1.0, 0.0, None)
    pi = perm.choice.derangement
    assert (pi != np.arange(8)).all()
    np.testing.assert_allclose(perm.choice.matrix, ctx.geometry.cost[np.ix_(pi, pi)])
    other_seed = build_ot_term(make_ctx(df, seed=4), "permuted", 1.0, 0.0, None)
    same_seed = build_ot_term(make_ctx(df, seed=3), "permuted", 1.0, 0.0, None)
    np.testing.assert_array_equal(same_seed.choice.derangement, pi)
    assert not np.array_equal(other_seed.choice.derangement, pi)

    # the geometry is estimated from the training index when the context carries none
    lazy = build_ot_term(make_ctx(df, geometry=None), "circumplex", 1.0, 0.0, None)
    np.testing.assert_allclose(lazy.choice.matrix, ctx.geometry.cost)

    # circumplex.json content is strict JSON and can be imported back by path
    record = perm.record()
    path = tmp_path / "circumplex.json"
    path.write_text(json.dumps(record, allow_nan=False))
    assert record["cost_variant"] == "permuted" and record["derangement"] == [int(i) for i in pi]
    np.testing.assert_allclose(record["true_cost"], ctx.geometry.cost)

    # RAF-DB: no VA -> no geometry; any cost needs an import, which maps ABAW names into AffectNet order
    raf = df.assign(valence=np.nan, arousal=np.nan)
    raf_ctx = make_ctx(raf, label_space=RAFDB)
    assert raf_ctx.geometry is None
    with pytest.raises(ValueError, match="imported"):
        build_ot_term(raf_ctx, "circumplex", 1.0, 0.0, None)
    with pytest.raises(ValueError, match="imported_from"):
        build_ot_term(raf_ctx, "imported", 1.0, 0.0, None)
    imp = build_ot_term(raf_ctx, "imported", 1.0, 0.0, str(path))
    src = {n: i for i, n in enumerate(AFFWILD2.class_names)}
    alias = {"Happy": "Happiness", "Sad": "Sadness"}
    tgt = [src.get(alias.get(n, n)) for n in AFFECTNET.class_names]   # Contempt: None
    for a, i in enumerate(tgt):
        for b, j in enumerate(tgt):
            if i is not None and j is not None:
                assert imp.choice.matrix[a, b] == pytest.approx(ctx.geometry.cost[i, j])
    uni_raf = build_ot_term(raf_ctx, "uniform", 1.0, 0.0, str(path))
    assert np.isfinite(uni_raf.choice.matrix).all()
    # what the engine records on RAF-DB: the imported circumplex, in AffectNet order, stands in as the truth
    raf_record = circumplex_record(None, uni_raf.choice)
    assert raf_record["class_names"] == list(AFFECTNET.class_names)
    np.testing.assert_allclose(raf_record["true_cost"], imp.choice.matrix)
    np.testing.assert_allclose(uni_raf.source_geometry["cost"], imp.choice.matrix)
    assert raf_record["centroids"][7] == [None, None]                    # Contempt: no source centroid
    with pytest.raises(ValueError, match="va_au"):
        build_ot_term(make_ctx(df.assign(**{a: np.nan for a in AU_NAMES})), "va_au", 1.0, 0.0, None)
    with pytest.raises(ValueError, match="AU"):
        build_ot_term(make_ctx(df, label_space=AFFECTNET), "va_au", 1.0, 0.0, None)
    with pytest.raises(ValueError, match="unknown cost"):
        build_ot_term(ctx, "circumplx", 1.0, 0.0, None)


@pytest.mark.parametrize("variant", ["none", "circumplex", "permuted", "uniform", "instance", "gaussian_w2",
                                     "va_au", "imported"])
def test_training_with_each_cost_variant_reduces_the_loss(variant, tmp_path):
    torch.manual_seed(0)
    df, y_all = toy_index(n=600)
    ctx = make_ctx(df, seed=1)
    imported_from = None
    if variant == "imported":
        imported_from = str(tmp_path / "src.json")
        (tmp_path / "src.json").write_text(ctx.geometry.to_json())
    consistency = 1.0 if variant == "none" else 0.0       # "none" alone is no term; test the ablation
    term = build_ot_term(ctx, variant, 1.0, consistency, imported_from)
    assert term.choice.variant == variant

    # features whose class structure follows the geometry: a class code plus its centroid plus noise
    rng = np.random.default_rng(0)
    n, k = len(df), 8
    feats = np.concatenate([np.eye(k)[y_all] + 0.8 * rng.standard_normal((n, k)),
                            CENTROIDS[y_all] + 0.2 * rng.standard_normal((n, 2))], axis=1)
    x = torch.tensor(feats, dtype=torch.float32)
    va = df[["valence", "arousal"]].to_numpy()
    batch = {"expr": torch.tensor(df["expr"].to_numpy()),
             "va": torch.tensor(np.nan_to_num(va), dtype=torch.float32),
             "va_mask": torch.tensor(np.isfinite(va).all(1))}
    mask = batch["expr"] >= 0
    model = torch.nn.Linear(k + 2, k + 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)

    def losses():
        z = model(x)
        out = {"expr": z[:, :k], "va": torch.tanh(z[:, k:])}
        focal = focal_loss(out["expr"][mask], batch["expr"][mask], ctx.class_weights)
        extra = term(out, batch, mask)
        return focal + extra, extra

    with torch.no_grad():
        total0, term0 = losses()
    assert float(term0) > 0
    for _ in range(50):
        opt.zero_grad()
        total, _ = losses()
        total.backward()
        opt.step()
    with torch.no_grad():
        total1, term1 = losses()
    assert float(total1) < 0.7 * float(total0)
    assert float(term1) < float(term0)


def test_imported_from_a_synthetic_world():
    from trainers.data.synthetic import synthetic

    df, _ = toy_index()
    raf_ctx = make_ctx(df.assign(valence=np.nan, arousal=np.nan), label_space=RAFDB)
    term = build_ot_term(raf_ctx, "imported", 1.0, 0.0, "synthetic:affectnet_like")
    source = estimate_geometry(synthetic("affectnet_like", n=6000, seed=0, image_size=8), AFFECTNET, n_boot=10)
    np.testing.assert_allclose(term.choice.matrix, source.cost)      # same class order: carried unchanged
    assert term.record()["class_names"] == list(AFFECTNET.class_names)
    # from ABAW names into AffectNet order; Contempt has no counterpart -> off-diagonal mean
    abaw = build_ot_term(raf_ctx, "imported", 1.0, 0.0, "synthetic:affwild2_like").choice.matrix
    src = estimate_geometry(synthetic("affwild2_like", n=6000, seed=0, image_size=8), AFFWILD2, n_boot=10).cost
    assert abaw[1, 2] == pytest.approx(src[4, 5])                      # Happy-Sad = Happiness-Sadness
    assert np.allclose(abaw[7, :7], src[~np.eye(8, dtype=bool)].mean())
    with pytest.raises(ValueError, match="preset"):
        build_ot_term(raf_ctx, "imported", 1.0, 0.0, "synthetic:nonexistent")
    with pytest.raises(ValueError, match="cannot read"):
        build_ot_term(raf_ctx, "imported", 1.0, 0.0, "/nonexistent/circumplex.json")
