"""GReFEL reliability balancing (docs/methods.md §11): confidence, fusion, anchors, losses, sampler."""

import math

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from trainers.data.labels import LABEL_SPACES
from trainers.methods import MethodContext, StepState, create_method
from trainers.methods.grefel import (
    GReFELNet,
    ReliabilityBalancing,
    anchor_loss,
    center_loss,
    confidence,
    confidence_fusion,
)


def test_confidence_is_zero_for_uniform_and_one_for_one_hot():
    k = 8
    assert float(confidence(torch.full((1, k), 1 / k))) == pytest.approx(0.0, abs=1e-6)
    assert float(confidence(torch.eye(k)[:1])) == pytest.approx(1.0)
    q = torch.tensor([[0.5, 0.25, 0.25]])
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert float(confidence(q)) == pytest.approx(1 - entropy / math.log(3))


def test_confidence_fusion_weights_each_distribution_by_its_confidence():
    sure, unsure = torch.eye(4)[:1], torch.full((1, 4), 0.25)
    torch.testing.assert_close(confidence_fusion(sure, unsure), sure, atol=1e-5, rtol=0)
    a, b = torch.tensor([[0.7, 0.2, 0.1]]), torch.tensor([[0.2, 0.3, 0.5]])
    ca, cb = float(confidence(a)), float(confidence(b))
    expected = (ca * a + cb * b) / (ca + cb)
    torch.testing.assert_close(confidence_fusion(a, b), expected, atol=1e-5, rtol=0)
    zero = confidence_fusion(unsure, unsure)  # both confidences 0: the average, not 0/0
    torch.testing.assert_close(zero, unsure)


def test_anchor_loss_is_minus_the_mean_pairwise_squared_distance_over_dim():
    a = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    pairs = [((a[i] - a[j]) ** 2).sum() for i in range(6) for j in range(6) if i != j]
    assert float(anchor_loss(a)) == pytest.approx(-float(torch.stack(pairs).mean()) / 5, rel=1e-5)


def test_center_loss_is_the_nearest_anchor_of_the_true_class():
    dist2 = torch.tensor([[[4.0, 1.0], [0.5, 9.0]],
                          [[3.0, 2.0], [7.0, 6.0]]])  # (B=2, K=2, K_a=2)
    np.testing.assert_allclose(center_loss(dist2, torch.tensor([0, 1])), [1.0, 6.0])


def test_geometric_correction_sums_anchor_similarities_per_class():
    rb = ReliabilityBalancing(feat_dim=2, num_classes=2, anchors_per_class=2, delta=1.0, tokens=2, attn_dim=4)
    with torch.no_grad():
        rb.anchors.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.0, 4.0]]))
    e = torch.tensor([[0.0, 0.0]])
    rb.eval()
    out = rb(e)
    s = torch.softmax(-torch.tensor([0.0, 1.0, 3.0, 4.0]), 0)
    torch.testing.assert_close(out["t_g"], torch.stack([s[:2].sum(), s[2:].sum()])[None], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["anchor_dist2"], torch.tensor([[[0.0, 1.0], [9.0, 16.0]]]))
    # L_final is a distribution fused from l and t = fuse(t_g, t_a)
    t = confidence_fusion(out["t_g"], out["t_a"])
    torch.testing.assert_close(out["final"], confidence_fusion(out["primary_logits"].softmax(-1), t))


def _context(expr):
    space = LABEL_SPACES["affwild2"]
    expr = np.asarray(expr)
    index = pd.DataFrame({"expr": expr, "valence": 0.0, "arousal": 0.0})
    return MethodContext(label_space=space, train_index=index,
                         class_counts=np.bincount(expr[expr >= 0], minlength=8), au_pos_weight=np.ones(12))


def test_model_prediction_is_l_final_and_loss_is_nll_plus_center():
    method = create_method("grefel", _context(np.arange(16) % 8))
    torch.manual_seed(0)
    encoder = timm.create_model("test_resnet", num_classes=0)
    model = method.build_model(encoder, encoder.num_features).eval()
    with torch.no_grad():
        out = model(torch.randn(4, 3, 24, 24))
    probs = method.expr_probabilities(out)
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))
    torch.testing.assert_close(out["expr"].softmax(-1), probs)  # logits read anywhere give L_final
    y, mask = torch.tensor([0, 3, 5, 7]), torch.tensor([True, True, False, True])
    loss = method.expr_objective(out, {"expr": y}, mask, StepState(1, 0, 1))
    nll = -torch.log(probs[torch.arange(4), y])
    l_c = center_loss(out["anchor_dist2"], y)
    assert float(loss) == pytest.approx(float((nll + l_c)[mask].mean()), rel=1e-5)


def test_anchor_loss_enters_the_gradient_outside_the_task_weighting():
    method = create_method("grefel", _context(np.arange(16) % 8), lambda_a=2.0)
    encoder = timm.create_model("test_resnet", num_classes=0)
    model = method.build_model(encoder, encoder.num_features)
    anchors = model.reliability.anchors
    zero = (anchors * 0).sum()
    method.backward(zero, {}, model)
    expected = torch.autograd.grad(2.0 * anchor_loss(anchors), anchors)[0]
    torch.testing.assert_close(anchors.grad, expected)


def test_balanced_batches_give_every_class_the_same_expected_share():
    from trainers.data.pipeline import sampler_weights

    expr = np.array([0] * 10 + [1] * 3 + [2] * 1 + [-1] * 4 + [7] * 2)
    method = create_method("grefel", _context(expr), balanced=True)
    assert method.sampling() == "class_balanced"
    w = sampler_weights(method.sampling(), expr)
    assert (w[expr < 0] == 0).all()
    # by hand: each present class totals 1 -> 1/10, 1/3, 1/1, 1/2 per frame
    np.testing.assert_allclose(w[expr >= 0], [0.1] * 10 + [1 / 3] * 3 + [1.0] + [0.5] * 2)
    assert create_method("grefel", _context(expr)).sampling() is None  # the recipe's sampler


def test_net_schedules_every_parameter():
    encoder = timm.create_model("test_resnet", num_classes=0)
    net = GReFELNet(encoder, encoder.num_features, 8, 12)
    stages, heads = net.schedule_groups()
    grouped = [id(p) for s in stages for p in s] + [id(p) for p in heads]
    assert sorted(grouped) == sorted(id(p) for p in net.parameters())


def test_a_training_batch_of_one_frame_does_not_fail():
    rb = ReliabilityBalancing(feat_dim=16, num_classes=8).train()
    out = rb(torch.randn(1, 16))
    torch.testing.assert_close(out["final"].sum(-1), torch.ones(1))
