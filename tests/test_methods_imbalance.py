"""The §5.6 baselines (docs/methods.md §8): LDAM margins and loss, ASL, logit adjustment (trainers/methods/ldam_asl.py,
logit_adjust.py) and PCGrad surgery (pcgrad.py)."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainers.data.labels import LABEL_SPACES
from trainers.methods import MethodContext, StepState, create_method
from trainers.methods.ldam_asl import CosineHead, asl_loss, ldam_loss, ldam_margins
from trainers.methods.logit_adjust import logit_adjusted_loss
from trainers.methods.pcgrad import pcgrad_combine


def test_ldam_margins_scale_as_n_to_the_minus_quarter_with_max_half():
    counts = np.array([10000, 625, 16, 1, 0])
    m = ldam_margins(counts)
    np.testing.assert_allclose(m[:4], [0.05, 0.1, 0.25, 0.5])  # 10000^-1/4 = 0.1, 625^-1/4 = 0.2, …
    assert m[4] == 0.5                                          # absent class: never a target
    np.testing.assert_allclose(m[:4] * counts[:4] ** 0.25, 0.5)


def test_ldam_loss_subtracts_the_scaled_margin_from_the_true_cosine():
    cos = torch.tensor([[0.2, 0.9, -0.1], [0.5, 0.4, 0.3]])
    y = torch.tensor([1, 2])
    margins = torch.tensor([0.1, 0.2, 0.5])
    s = 30.0
    expected = F.cross_entropy(s * torch.tensor([[0.2, 0.9 - 0.2, -0.1], [0.5, 0.4, 0.3 - 0.5]]), y)
    assert float(ldam_loss(s * cos, y, margins, s)) == pytest.approx(float(expected), rel=1e-6)


def test_cosine_head_outputs_scaled_cosines():
    head = CosineHead(4, 3, scale=30.0)
    f = torch.randn(5, 4)
    expected = 30 * F.cosine_similarity(f[:, None, :], head.weight[None], dim=-1)
    torch.testing.assert_close(head(f), expected)


def test_asl_by_hand_with_the_au_mask():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0]])
    target = torch.tensor([[1.0, 0.0, 0.0, float("nan")]])
    p = torch.sigmoid(logits)[0]
    pos = -torch.log(p[0])                                    # γ+ = 0: plain log-likelihood
    pm1, pm2 = (p[1] - 0.05).clamp(min=0), (p[2] - 0.05).clamp(min=0)
    neg1 = -(pm1 ** 4) * torch.log(1 - pm1)
    neg2 = -(pm2 ** 4) * torch.log(1 - pm2)
    expected = (pos + neg1 + neg2) / 3                        # the NaN unit is not labelled
    assert float(asl_loss(logits, target)) == pytest.approx(float(expected), rel=1e-6)
    easy_negative = torch.tensor([[-4.0]])                    # p = 0.018 < clip: no loss at all
    assert float(asl_loss(easy_negative, torch.tensor([[0.0]]))) == 0.0


def test_logit_adjustment_adds_tau_log_prior_at_training_only():
    z = torch.tensor([[1.0, 0.0, -1.0]])
    prior = torch.tensor([0.7, 0.2, 0.1])
    y = torch.tensor([2])
    adjusted = z + prior.log()
    expected = -(adjusted[0, 2] - torch.logsumexp(adjusted[0], 0))
    assert float(logit_adjusted_loss(z, y, prior.log(), tau=1.0)) == pytest.approx(float(expected), rel=1e-6)
    space = LABEL_SPACES["affectnet"]
    index = pd.DataFrame({"expr": [0] * 7 + [1] * 2 + [2], "valence": 0.0, "arousal": 0.0})
    ctx = MethodContext(label_space=space, train_index=index, class_counts=np.array([7, 2, 1, 0, 0, 0, 0, 0]),
                        au_pos_weight=None)
    method = create_method("logit_adjust", ctx)
    logits = torch.randn(4, 8)
    torch.testing.assert_close(method.expr_probabilities({"expr": logits}), logits.softmax(-1))  # raw z
    loss = method.expr_objective({"expr": logits}, {"expr": torch.tensor([0, 1, 2, 0])},
                                 torch.tensor([True, True, True, False]), StepState(1, 0, 1))
    log_prior = torch.log(torch.tensor([0.7, 0.2, 0.1] + [1e-12] * 5))
    expected = F.cross_entropy(logits[:3] + log_prior, torch.tensor([0, 1, 2]))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert method.sampling() == "natural"  # the natural prior its derivation assumes (not the oversampler)
    assert create_method("logit_adjust", ctx, natural_sampling=False).sampling() is None


def test_pcgrad_projects_two_conflicting_gradients():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])   # g1·g2 = -1 < 0
    g1_pc = g1 - (g1 @ g2) / (g2 @ g2) * g2                         # [0.5, 0.5]
    g2_pc = g2 - (g2 @ g1) / (g1 @ g1) * g1                         # [0, 1]
    torch.testing.assert_close(pcgrad_combine([g1, g2]), g1_pc + g2_pc)
    torch.testing.assert_close(pcgrad_combine([g1, g2]), torch.tensor([0.5, 1.5]))
    assert float(g1_pc @ g2) == pytest.approx(0) and float(g2_pc @ g1) == pytest.approx(0)
    agree = [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])]   # no conflict: plain sum
    torch.testing.assert_close(pcgrad_combine(agree), torch.tensor([2.0, 1.0]))


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(3, 4)
        self.head_a, self.head_b = nn.Linear(4, 1), nn.Linear(4, 1)

    def schedule_groups(self):
        return [list(self.encoder.parameters())], [*self.head_a.parameters(), *self.head_b.parameters()]


def test_pcgrad_backward_does_surgery_on_shared_parameters_only():
    torch.manual_seed(0)
    model = _Toy()
    with torch.no_grad():  # head weights u, v with u·v < 0: the two encoder gradients conflict
        model.head_a.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
        model.head_b.weight.copy_(torch.tensor([[-1.0, 1.0, 0.0, 0.0]]))
    x = torch.randn(8, 3)
    h = model.encoder(x)
    la, lb = model.head_a(h).mean(), model.head_b(h).mean()
    weighted = {"va": la, "expr": lb}
    shared = list(model.encoder.parameters())
    ga = torch.cat([g.reshape(-1) for g in torch.autograd.grad(la, shared, retain_graph=True)])
    gb = torch.cat([g.reshape(-1) for g in torch.autograd.grad(lb, shared, retain_graph=True)])
    head_a = torch.autograd.grad(la, list(model.head_a.parameters()), retain_graph=True)
    ctx = MethodContext(label_space=LABEL_SPACES["affwild2"], train_index=pd.DataFrame({"expr": [0]}),
                        class_counts=np.ones(8), au_pos_weight=None)
    create_method("pcgrad", ctx).backward(la + lb, weighted, model)
    got = torch.cat([p.grad.reshape(-1) for p in shared])
    torch.testing.assert_close(got, pcgrad_combine([ga, gb]))
    assert float(ga @ gb) < 0, "the toy losses must conflict for the test to mean anything"
    assert not torch.allclose(got, ga + gb)
    for p, g in zip(model.head_a.parameters(), head_a):
        torch.testing.assert_close(p.grad, g)
