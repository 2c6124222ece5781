"""CAF (docs/methods.md §12): Otsu against scikit-image, the strong/weak split, L_AV, the critic loss and margin by
hand, and the three-step update with a train-only critic."""

import math

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from skimage.filters import threshold_otsu

from trainers.data.labels import AU_NAMES, LABEL_SPACES
from trainers.methods import MethodContext, StepState, create_method
from trainers.methods.caf import adaptive_margin, caf_va_loss, critic_loss, otsu_threshold, strong_weak_split


@pytest.mark.parametrize("sample", [
    lambda rng: np.abs(rng.normal(size=1000)),
    lambda rng: np.concatenate([rng.normal(0.2, 0.05, 300), rng.normal(0.7, 0.1, 700)]),
    lambda rng: rng.uniform(size=37),
    lambda rng: np.array([0.1, 0.1, 0.5, 0.5, 0.9]),
    lambda rng: np.abs(rng.uniform(-1, 1, size=5000)).round(2),
])
def test_otsu_threshold_equals_scikit_image(sample):
    x = sample(np.random.default_rng(7))
    assert otsu_threshold(x) == threshold_otsu(x)


def test_strong_weak_split_uses_the_radius_of_otsu_thresholds():
    rng = np.random.default_rng(0)
    va = np.concatenate([rng.normal(0, 0.1, (200, 2)), rng.normal(0.6, 0.1, (200, 2))])
    va[5] = np.nan
    group, th = strong_weak_split(va)
    valid = np.isfinite(va).all(1)
    assert th["delta_v"] == threshold_otsu(np.abs(va[valid, 0]))
    assert th["delta_a"] == threshold_otsu(np.abs(va[valid, 1]))
    assert th["delta_r"] == pytest.approx(math.hypot(th["delta_v"], th["delta_a"]))
    r = np.linalg.norm(va, axis=1)
    assert group[5] == -1
    np.testing.assert_array_equal(group[valid], (r[valid] >= th["delta_r"]).astype(int))
    assert 0 < (group == 1).sum() < valid.sum()


def test_va_loss_is_rmse_plus_half_pcc_and_ccc_losses():
    rng = np.random.default_rng(1)
    target = rng.uniform(-1, 1, (30, 2))
    pred = 0.5 * target + rng.normal(0, 0.2, (30, 2))
    mask = np.ones(30, dtype=bool)
    mask[[3, 17]] = False
    t, p = target[mask], pred[mask]
    rmse = np.sqrt(((p - t) ** 2).mean(0)).sum()
    pcc = np.mean([np.corrcoef(p[:, d], t[:, d])[0, 1] for d in range(2)])
    ccc = np.mean([2 * np.cov(p[:, d], t[:, d], ddof=0)[0, 1] / (p[:, d].var() + t[:, d].var()
                                                                   + (p[:, d].mean() - t[:, d].mean()) ** 2)
                   for d in range(2)])
    got = caf_va_loss(torch.tensor(pred), torch.tensor(target), torch.tensor(mask))
    assert float(got) == pytest.approx(rmse + 0.5 * (1 - pcc) + 0.5 * (1 - ccc), rel=1e-5)


def test_critic_loss_by_hand():
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.5], [3.0, 0.0], [9.0, 9.0]])
    strong = torch.tensor([True, True, False, False, False])
    weak = torch.tensor([False, False, True, True, False])      # frame 4 has no VA
    margin = 2.0
    compact = 1.0                                                # the one strong pair: D² = 1
    cross = [0.25, 9.0, 1.25, 4.0]                               # (0,2), (0,3), (1,2), (1,3)
    separate = np.mean([max(0.0, margin - d) for d in cross])
    assert float(critic_loss(z, strong, weak, margin)) == pytest.approx(compact + 0.5 * separate)


def test_adaptive_margin_by_hand():
    """Eq. 8 on a case worked by hand. With kernel_var 0.5 the Gaussian-kernel feature is exp(-z²):
    z = 0, sqrt(ln 2), sqrt(ln 4) give 1, 1/2, 1/4. Strong frames 0, 1 and weak frame 3 sit at
    (0, sqrt ln2, sqrt ln4): features (1, 1/2, 1/4); weak frame 2 at the mirror point: (1/4, 1/2, 1).
    Strong mean (1, 1/2, 1/4), weak mean (5/8, 1/2, 5/8): deviations (10, -2, -8)/24 and (1, -2, 1)/24,
    so η = 6 / sqrt(168 · 6) = sqrt(1/28) and MI = -½ log(1 - 1/28) = ½ log(28/27). Frame 3 is at
    distance 0 from frames 0 and 1, frame 2 at D² = 2 ln 4 ≫ MI from both: K = 3 frames lie inside
    the margin; N = 4, so α̂ = ½ log(28/27) + log(4 / 0.05) / (2 · 3)."""
    a, b = math.sqrt(math.log(2)), math.sqrt(math.log(4))
    z = torch.tensor([[0.0, a, b], [0.0, a, b], [b, a, 0.0], [0.0, a, b]])
    strong = torch.tensor([True, True, False, False])
    m = adaptive_margin(z, strong, ~strong, c=0.05, kernel_var=0.5)
    assert float(m["eta"]) == pytest.approx(math.sqrt(1 / 28), rel=1e-5)
    assert float(m["mi"]) == pytest.approx(0.5 * math.log(28 / 27), rel=1e-4)
    assert float(m["k"]) == 3 and float(m["n"]) == 4
    assert float(m["margin"]) == pytest.approx(0.5 * math.log(28 / 27) + math.log(80) / 6, rel=1e-5)
    # no weak frame near a strong one: K is at least 1 (the clamp), so α̂ = MI + log(N/c)/2
    far = adaptive_margin(z[:3], strong[:3], ~strong[:3], c=0.05, kernel_var=0.5)
    assert float(far["k"]) == 1
    assert float(far["margin"]) == pytest.approx(float(far["mi"]) + math.log(3 / 0.05) / 2, rel=1e-5)


def _context(n=64):
    rng = np.random.default_rng(0)
    index = pd.DataFrame({"valence": rng.uniform(-1, 1, n), "arousal": rng.uniform(-1, 1, n),
                          "expr": rng.integers(0, 8, n)})
    for au in AU_NAMES:
        index[au] = rng.integers(0, 2, n).astype(float)
    return MethodContext(label_space=LABEL_SPACES["affwild2"], train_index=index,
                         class_counts=np.bincount(index["expr"], minlength=8), au_pos_weight=np.ones(12))


def test_critic_is_train_only_and_steps_update_critic_and_encoder_only():
    torch.manual_seed(0)
    ctx = _context()
    method = create_method("caf", ctx)
    encoder = timm.create_model("test_resnet", num_classes=0)
    model = method.build_model(encoder, encoder.num_features)
    method.setup(model, encoder.num_features)
    critic = method.modules["critic"]
    calls = []
    critic.register_forward_hook(lambda *_: calls.append(1))
    assert method.main_optimizer_modules() == []
    counts = method.parameter_counts(model)
    assert counts["params/critic"] == sum(p.numel() for p in critic.parameters()) > 0
    assert counts["params/inference"] == counts["params/model"]

    x = torch.randn(16, 3, 24, 24)
    model.eval()
    with torch.no_grad():
        model(x)
    assert calls == []                                   # inference never runs the critic
    model.train()
    idx = torch.arange(16)
    out = model(x)
    batch = {"image": x, "index": idx}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    critic_before = [p.detach().clone() for p in critic.parameters()]
    logged = method.extra_step(model, batch, out, StepState(1, 0, 1))
    assert len(calls) == 2 and {"caf/critic", "caf/adv"} <= set(logged)
    assert any(not torch.equal(a, p) for a, p in zip(critic_before, critic.parameters()))
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all(n.startswith("encoder.") for n in changed)  # heads untouched by steps 2-3
