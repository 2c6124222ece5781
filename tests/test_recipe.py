"""The base multi-task recipe (docs/methods.md §2-§3) against hand formulas: masked CCC loss, class-weighted
focal CE, AU BCE with per-unit pos_weight, uncertainty weighting, P_MTL, inverse-frequency
oversampling, and the warm-up / partial-unfreezing schedule seen through the optimiser."""

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import chisquare

from trainers.data.labels import AU_NAMES, LABEL_SPACES
from trainers.data.pipeline import epoch_order, oversampling_weights, sampler_weights
from trainers.losses import UncertaintyWeighting, au_bce_loss, ccc_loss, focal_loss
from trainers.methods import MethodContext, StepState, create_method
from trainers.metrics import p_mtl


def _pop_ccc(x, y):
    """Lin's CCC with population moments, written out."""
    mx, my = sum(x) / len(x), sum(y) / len(y)
    vx = sum((a - mx) ** 2 for a in x) / len(x)
    vy = sum((b - my) ** 2 for b in y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y)) / len(x)
    return 2 * cov / (vx + vy + (mx - my) ** 2)


def test_masked_ccc_loss_is_one_minus_the_mean_of_the_two_cccs_over_valid_frames():
    pred = [[0.1, 0.5], [0.4, -0.2], [-0.3, 0.0], [0.8, 0.9], [99.0, -99.0]]
    target = [[0.0, 0.6], [0.5, -0.1], [-0.5, 0.2], [0.6, 0.7], [0.0, 0.0]]
    mask = [True, True, True, True, False]  # the last frame has no VA label: it must not count
    valid = [i for i, m in enumerate(mask) if m]
    cv = _pop_ccc([pred[i][0] for i in valid], [target[i][0] for i in valid])
    ca = _pop_ccc([pred[i][1] for i in valid], [target[i][1] for i in valid])
    got = ccc_loss(torch.tensor(pred), torch.tensor(target), torch.tensor(mask))
    assert float(got) == pytest.approx(1 - (cv + ca) / 2, rel=1e-5)
    # by hand: v has cov 0.17, variances 0.1625 and 0.1925, mean gap 0.1 -> CCC 0.34/0.365 = 68/73;
    # a has cov 0.1325, variances 0.185 and 0.1025, mean gap 0.05 -> CCC 0.265/0.29 = 53/58
    assert (cv, ca) == (pytest.approx(68 / 73), pytest.approx(53 / 58))
    assert float(got) == pytest.approx(1 - (68 / 73 + 53 / 58) / 2, rel=1e-5)


def test_class_weights_are_inverse_frequency_normalised_to_mean_one():
    ctx = MethodContext(label_space=LABEL_SPACES["affwild2"], train_index=pd.DataFrame(),
                        class_counts=np.array([60, 30, 10, 0, 0, 0, 0, 0]), au_pos_weight=None)
    # 1/60, 1/30, 1/10 have mean 1/20: weights 20/60, 20/30, 20/10; an absent class is never a target
    np.testing.assert_allclose(ctx.class_weights.numpy(), [1 / 3, 2 / 3, 2.0, 0, 0, 0, 0, 0], rtol=1e-6)


def test_focal_ce_is_weighted_gamma_two_and_averaged_over_expr_valid_frames():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [5.0, -5.0, 0.0]])
    target = torch.tensor([0, 2, 1, 0])
    mask = torch.tensor([True, True, True, False])
    weights = torch.tensor([1 / 3, 2 / 3, 2.0])
    expected = []
    for z, y in zip(logits.tolist()[:3], target.tolist()[:3]):
        p = math.exp(z[y]) / sum(math.exp(v) for v in z)
        expected.append(-weights[y].item() * (1 - p) ** 2 * math.log(p))
    got = focal_loss(logits, target, weights, gamma=2.0, mask=mask)
    assert float(got) == pytest.approx(sum(expected) / 3, rel=1e-6)
    # and the base recipe (focal, no OT term) uses exactly this with the context's weights and γ = 2
    ctx = MethodContext(label_space=LABEL_SPACES["affwild2"], train_index=pd.DataFrame(),
                        class_counts=np.array([60, 30, 10, 0, 0, 0, 0, 0]), au_pos_weight=None)
    method = create_method("focal", ctx)
    logits8 = torch.cat([logits, torch.full((4, 5), -30.0)], 1)  # 5 absent classes with ~0 mass
    batch = {"expr": target, "expr_mask": mask, "n": {"expr": 3}}
    assert float(method.expr_loss({"expr": logits8}, batch, StepState(1, 0, 1))) == pytest.approx(
        sum(expected) / 3, rel=1e-4)


def test_au_pos_weight_is_n_neg_over_n_pos_and_bce_masks_missing_units():
    from trainers.engine import method_context

    rng = np.random.default_rng(0)
    n = 40
    index = pd.DataFrame({"valence": rng.uniform(-1, 1, n), "arousal": rng.uniform(-1, 1, n),
                          "expr": rng.integers(0, 8, n), "group": np.arange(n), "frame": 0})
    au = (rng.uniform(size=(n, 12)) < np.linspace(0.1, 0.6, 12)).astype(float)
    au[:5] = np.nan          # five frames without AU labels
    au[10, 3] = np.nan       # one missing unit
    for k, name in enumerate(AU_NAMES):
        index[name] = au[:, k]
    cfg = SimpleNamespace(label_space=LABEL_SPACES["affwild2"], seed=0, epochs=1, backbone=SimpleNamespace(name=""),
                          method=SimpleNamespace(name="focal", cost=None, imported_from=None))
    ctx = method_context(cfg, SimpleNamespace(train_index=index, true_geometry=None), torch.device("cpu"))
    n_pos = np.array([np.sum(au[:, k] == 1) for k in range(12)])
    n_neg = np.array([np.sum(au[:, k] == 0) for k in range(12)])
    np.testing.assert_allclose(ctx.au_pos_weight, n_neg / n_pos)

    logits = torch.tensor([[0.5, -1.0], [2.0, 0.3], [-0.7, 1.1]])
    target = torch.tensor([[1.0, 0.0], [float("nan"), 1.0], [0.0, 1.0]])
    pw = torch.tensor([3.0, 0.5])

    def bce(x, y, w):
        s = 1 / (1 + math.exp(-x))
        return -(w * y * math.log(s) + (1 - y) * math.log(1 - s))

    terms = [bce(0.5, 1, 3.0), bce(-1.0, 0, 0.5), bce(0.3, 1, 0.5), bce(-0.7, 0, 3.0), bce(1.1, 1, 0.5)]
    assert float(au_bce_loss(logits, target, pw)) == pytest.approx(sum(terms) / 5, rel=1e-6)


def test_uncertainty_weighting_by_hand_and_a_task_without_frames_adds_zero():
    weighting = UncertaintyWeighting()
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor([0.5, -0.3, 1.0]))
    total, weighted = weighting({"va": torch.tensor(2.0), "expr": None, "au": torch.tensor(3.0)})
    assert float(total.detach()) == pytest.approx(math.exp(-0.5) * 2 + 0.5 + math.exp(-1.0) * 3 + 1.0, rel=1e-6)
    assert set(weighted) == {"va", "au"}
    total.backward()
    g = weighting.log_vars.grad
    assert float(g[1]) == 0.0  # the absent task's s_t is not pulled either way (no "+ s_t")
    assert float(g[0]) == pytest.approx(1 - 2 * math.exp(-0.5), rel=1e-6)  # d/ds (e^-s L + s)
    fresh = UncertaintyWeighting()
    assert torch.equal(fresh.log_vars.detach(), torch.zeros(3))  # s_t initialised to 0
    nothing, _ = fresh({"va": None, "expr": None, "au": None})
    assert float(nothing.detach()) == 0.0

    # the base recipe reports a task with no valid frame in the batch as None
    ctx = MethodContext(label_space=LABEL_SPACES["affwild2"], train_index=pd.DataFrame(),
                        class_counts=np.ones(8, int), au_pos_weight=np.ones(12))
    method = create_method("focal", ctx)
    out = {"va": torch.zeros(4, 2), "expr": torch.zeros(4, 8), "au": torch.zeros(4, 12)}
    batch = {"va": torch.zeros(4, 2), "va_mask": torch.zeros(4, dtype=torch.bool), "expr": torch.zeros(4, dtype=int),
             "expr_mask": torch.zeros(4, dtype=torch.bool), "au": torch.full((4, 12), float("nan")),
             "au_mask": torch.zeros(4, dtype=torch.bool), "n": {"va": 0, "expr": 0, "au": 0}}
    assert method.task_losses(out, batch, StepState(1, 0, 1)) == {"va": None, "expr": None, "au": None}


def test_p_mtl_is_mean_va_ccc_plus_expr_f1_plus_au_f1():
    # the study's Table I base row (docs/methods.md §3): 0.438 + 0.288 + 0.489 = 1.215
    assert p_mtl(0.438, 0.288, 0.489) == pytest.approx(1.215)
    assert p_mtl(float("nan"), 0.5, float("nan")) == pytest.approx(0.5)  # only the parts a dataset has


def test_inverse_frequency_weights_by_hand_and_equal_class_shares_when_drawn():
    expr = np.array([0, 0, 0, 1, -1, 2, 2])
    # N_expr = 6, 3 classes: each class totals 6/3 = 2 -> 2/3 per frame of class 0, 2 for class 1, 1 for class 2
    np.testing.assert_allclose(oversampling_weights(expr), [2 / 3] * 3 + [2.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(sampler_weights("inverse_frequency", expr), oversampling_weights(expr))
    assert sampler_weights("natural", expr) is None
    rng = np.random.default_rng(0)
    labels = rng.choice(4, 20000, p=[0.7, 0.2, 0.07, 0.03])
    order = epoch_order(len(labels), seed=0, epoch=1, weights=oversampling_weights(labels))
    assert chisquare(np.bincount(labels[order], minlength=4)).pvalue > 1e-3  # equal shares in expectation
    natural = epoch_order(len(labels), seed=0, epoch=1, weights=None)
    np.testing.assert_array_equal(np.sort(natural), np.arange(len(labels)))  # a permutation


def test_schedule_warmup_freezes_the_encoder_then_only_the_upper_half_moves_at_factor_times_lr(tiny_trial, tmp_path):
    """docs/methods.md §2 through the optimiser: epoch 1 (warm-up) changes no encoder parameter and no
    BatchNorm statistic; epoch 2 changes only the upper half of the blocks (layer3, layer4 of the test
    ResNet), whose first Adam step moves each element by exactly the encoder LR = 0.1 × head LR; the
    stem, layer1 and layer2 (parameters and running statistics) never change."""
    import timm

    from trainers.engine import fit
    from trainers.models import upper_stages
    from trainers.models.backbones import encoder_stages

    torch.manual_seed(123)
    # zero_init_last=False: timm zeroes each block's last BN scale, which zeroes every gradient of
    # the block's branch on its first step and would hide whether that step was taken
    init = timm.create_model("test_resnet", num_classes=0, zero_init_last=False).state_dict()
    weights = tmp_path / "init.pt"
    torch.save(init, weights)
    lr, factor = 3e-3, 0.1
    cfg = tiny_trial(backbone={"pretrained": str(weights)}, epochs=2, max_steps_per_epoch=1, lr=lr,
                     weight_decay=0.0, warmup_epochs=1, unfreeze_fraction=0.5, encoder_lr_factor=factor,
                     keep_optimizer=True)  # the last checkpoint keeps the raw weights and the optimiser
    snapshots = {}

    def keep(epoch, metrics, ckpt_dir):
        snapshots[epoch] = torch.load(ckpt_dir / "last.pt", weights_only=False)

    result = fit(cfg, tmp_path / "t", report=keep, progress=False).metrics
    encoder = timm.create_model("test_resnet", num_classes=0)
    names = {id(p): n for n, p in encoder.named_parameters()}
    upper = {names[id(p)] for p in upper_stages(encoder_stages(encoder), 0.5)}
    assert {n.split(".")[0] for n in upper} == {"layer3", "layer4"}

    def encoder_state(epoch):
        return {k.removeprefix("encoder."): v for k, v in snapshots[epoch]["model"].items() if k.startswith("encoder.")}

    after1, after2 = encoder_state(1), encoder_state(2)
    for key, value in init.items():  # parameters AND BatchNorm buffers: nothing moved in the warm-up
        assert torch.equal(after1[key], value), key
    moved = {k for k in init if not torch.equal(after2[k], after1[k])}
    lower = {k for k in init if k.split(".")[0] not in ("layer3", "layer4")}
    assert moved and not (moved & lower), sorted(moved & lower)
    assert upper <= moved  # every upper parameter took its step
    for key in upper:
        step = (after2[key] - after1[key]).abs()
        step = step[step > 0]
        # Adam's first step is lr · g/(|g| + eps): exactly the LR, less only where |g| is near eps
        assert float(step.max()) == pytest.approx(lr * factor, rel=2e-3), key
        assert float(step.median()) == pytest.approx(lr * factor, rel=2e-3), key
    head = {k: v for k, v in snapshots[1]["model"].items() if k.startswith("expr_head.")}
    assert all(not torch.equal(v, snapshots[2]["model"][k]) for k, v in head.items())  # heads train throughout
    groups = snapshots[2]["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([lr, lr * factor, lr])
    assert len(groups[1]["params"]) == len(upper)
    (log_vars,) = groups[2]["params"]  # the uncertainty log-variances s_t: no weight decay (docs/methods.md §2)
    assert groups[2]["weight_decay"] == 0.0
    assert tuple(snapshots[2]["optimizer"]["state"][log_vars]["exp_avg"].shape) == (3,)
    # P_MTL's VA part is the mean of the two CCCs
    assert result["va_ccc"] == pytest.approx((result["va_ccc_v"] + result["va_ccc_a"]) / 2)
    assert result["p_mtl"] == pytest.approx(result["va_ccc"] + result["expr_f1"] + result["au_f1"])


def test_every_k_subsamples_affwild2_training_only(tmp_path):
    """The official protocol scores every validation frame (docs/methods.md §3): ``every_k`` thins the
    training split; the validation split is thinned only by the explicit ``val_every_k``."""
    from tests.support.datasets import make_affwild2_tree
    from trainers.config import DatasetConfig
    from trainers.data.affwild2 import load_affwild2
    from trainers.data.pipeline import load_split

    make_affwild2_tree(tmp_path, frames=20)
    ds = DatasetConfig(name="affwild2", root=str(tmp_path), every_k=3)
    full_train, full_val = load_affwild2(tmp_path, "train"), load_affwild2(tmp_path, "val")
    train, val = load_split(ds, "train"), load_split(ds, "val")
    for video, frames in full_train.groupby("group")["frame"]:
        assert train.loc[train["group"] == video, "frame"].tolist() == frames.tolist()[::3]
    pd.testing.assert_frame_equal(val, full_val)
    thinned = load_split(ds.model_copy(update={"val_every_k": 2}), "val")
    assert len(thinned) < len(full_val)
