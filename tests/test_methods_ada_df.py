"""Ada-DF (docs/methods.md §10): ramps, threshold rows, mining, normalisation, rank regularisation, the fused
KL objective by hand, and the two-branch network (auxiliary branch train-only)."""

import contextlib
import math

import numpy as np
import pandas as pd
import pytest
import timm
import torch
import torch.nn.functional as F

from trainers.data.labels import LABEL_SPACES
from trainers.methods import MethodContext, StepState, create_method
from trainers.methods.ada_df import (
    AdaDFNet,
    mine_class_distributions,
    normalise_attention,
    ramp_weights,
    rank_regularisation,
    threshold_rows,
)
from trainers.models import upper_stages


def test_epoch_ramps_follow_eqs_15_16():
    assert ramp_weights(1, 5) == (1.0, pytest.approx(math.exp(-0.64)))      # e <= β: α1 = 1
    assert ramp_weights(5, 5) == (1.0, 1.0)
    assert ramp_weights(10, 5) == (pytest.approx(math.exp(-0.25)), 1.0)     # e > β: α2 = 1
    a1, a2 = ramp_weights(2, 3)
    assert a1 == 1.0 and a2 == pytest.approx(math.exp(-(1 / 3) ** 2))


def test_threshold_rows_put_t_on_the_class_and_share_the_rest():
    rows = threshold_rows(4, 0.5)
    np.testing.assert_allclose(rows.diagonal(), [0.5] * 4)
    np.testing.assert_allclose(rows[0, 1:], [0.5 / 3] * 3)
    np.testing.assert_allclose(rows.sum(1), [1.0] * 4)


def test_mining_keeps_confident_class_means_and_thresholds_the_rest():
    probs = torch.tensor([[0.8, 0.1, 0.1],   # class 0: mean own value 0.7 >= t
                          [0.6, 0.2, 0.2],
                          [0.5, 0.3, 0.2],   # class 1: mean own value 0.3 < t
                          [0.4, 0.3, 0.3]])
    labels = torch.tensor([0, 0, 1, 1])
    d = mine_class_distributions(probs, labels, 3, t=0.5)
    np.testing.assert_allclose(d[0], [0.7, 0.15, 0.15], atol=1e-6)
    np.testing.assert_allclose(d[1], [0.25, 0.5, 0.25], atol=1e-6)   # threshold row
    np.testing.assert_allclose(d[2], [0.25, 0.25, 0.5], atol=1e-6)   # no samples: threshold row


def test_min_max_normalisation_into_w_min_1_over_masked_frames():
    w = torch.tensor([0.2, 0.6, 0.4, 1.0])
    mask = torch.tensor([True, True, True, False])
    np.testing.assert_allclose(normalise_attention(w, mask, 0.2), [0.2, 1.0, 0.6, 0.2], atol=1e-6)
    np.testing.assert_allclose(normalise_attention(torch.full((3,), 0.5), torch.ones(3, dtype=torch.bool), 0.2),
                               [0.2] * 3)


def test_rank_regularisation_by_hand():
    # 10 valid weights: high group = top floor(0.7 * 10) = 7
    w = torch.tensor([0.50, 0.52, 0.49, 0.51, 0.53, 0.48, 0.50, 0.47, 0.55, 0.46, 0.99])
    mask = torch.tensor([True] * 10 + [False])
    ranked = sorted(w[:10].tolist(), reverse=True)
    high, low = np.mean(ranked[:7]), np.mean(ranked[7:])
    expected = max(0.0, 0.07 - (high - low))
    assert expected > 0
    assert float(rank_regularisation(w, mask, 10, 0.7, 0.07)) == pytest.approx(expected, abs=1e-6)
    spread = torch.tensor([0.9] * 7 + [0.1] * 3)
    assert float(rank_regularisation(spread, torch.ones(10, dtype=torch.bool), 10, 0.7, 0.07)) == 0.0


def _context(n=24, k=8):
    space = LABEL_SPACES["affectnet"]
    expr = np.arange(n) % k
    index = pd.DataFrame({"expr": expr, "valence": 0.0, "arousal": 0.0})
    return MethodContext(label_space=space, train_index=index, class_counts=np.bincount(expr, minlength=k),
                         au_pos_weight=None)


def test_objective_is_rr_plus_ramped_ce_and_kl_to_the_fused_target():
    method = create_method("ada_df", _context(), threshold=0.5, beta=5)
    g = torch.Generator().manual_seed(0)
    b, k = 6, 8
    aux, tar = torch.randn(b, k, generator=g), torch.randn(b, k, generator=g)
    att = torch.rand(b, generator=g)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    mask = torch.tensor([True, True, True, True, True, False])
    out = {"expr": tar, "expr_aux": aux, "attention": att}
    batch = {"expr": y, "n": {"expr": 5}}
    loss = method.expr_objective(out, batch, mask, StepState(epoch=2, step=0, epochs=10))

    a1, a2 = 1.0, math.exp(-(1 - 2 / 5) ** 2)
    v = att[:5].numpy()
    w = (v - v.min()) / (v.max() - v.min()) * 0.8 + 0.2
    rows = threshold_rows(k, 0.5).numpy()  # before the first mining
    p_aux = F.softmax(aux[:5].double(), -1).numpy()
    d = w[:, None] * rows[y[:5].numpy()] + (1 - w[:, None]) * p_aux
    log_p_tar = F.log_softmax(tar[:5].double(), -1).numpy()
    kl = (d * (np.log(d) - log_p_tar)).sum(1).mean()
    ce = -np.log(p_aux[np.arange(5), y[:5].numpy()]).mean()
    ranked = np.sort(v)[::-1]
    rr = max(0.0, 0.07 - (ranked[:3].mean() - ranked[3:].mean()))  # floor(0.7 * 5) = 3
    assert float(loss) == pytest.approx(rr + a1 * ce + a2 * kl, rel=1e-5)


def test_on_epoch_end_mines_auxiliary_softmax_of_labelled_training_frames():
    ctx = _context(n=24)
    ctx.train_index.loc[[5, 6], "expr"] = -1  # unlabelled frames take no part
    method = create_method("ada_df", ctx, threshold=0.1)
    logits = torch.randn(24, 8, generator=torch.Generator().manual_seed(4)) * 3
    runs = []

    class Model:
        @contextlib.contextmanager
        def auxiliary_outputs(self):
            runs.append("aux")
            yield self

    def train_outputs():
        for start in range(0, 24, 10):
            idx = np.arange(start, min(24, start + 10))
            yield idx, {"expr_aux": logits[idx], "expr": torch.zeros(len(idx), 8)}

    method.on_epoch_end(Model(), train_outputs, StepState(1, 0, 3))
    labels = ctx.train_index["expr"].to_numpy()
    keep = labels >= 0
    expected = mine_class_distributions(logits[keep].softmax(-1), torch.as_tensor(labels[keep]), 8, 0.1)
    assert runs == ["aux"]
    np.testing.assert_allclose(method.class_distributions, expected, atol=1e-6)
    state = method.state_dict()
    fresh = create_method("ada_df", ctx, threshold=0.1)
    fresh.load_state_dict(state)
    np.testing.assert_allclose(fresh.class_distributions, expected, atol=1e-6)


def _count_calls(module):
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_inference_runs_the_target_branch_only():
    torch.manual_seed(0)
    encoder = timm.create_model("test_resnet", num_classes=0)
    net = AdaDFNet(encoder, encoder.num_features, 8, 12)
    aux_calls, tar_calls = _count_calls(net.auxiliary), _count_calls(net.target)
    x = torch.randn(3, 3, 24, 24)
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert aux_calls == [] and tar_calls == [1] and "expr_aux" not in out
    with torch.no_grad(), net.auxiliary_outputs():
        assert "expr_aux" in net(x)
    net.train()
    out = net(x)
    assert len(aux_calls) == 2 and {"expr_aux", "attention"} <= set(out)
    method = create_method("ada_df", _context())
    counts = method.parameter_counts(net)
    n_aux = sum(p.numel() for p in net.auxiliary.parameters())
    assert counts["params/auxiliary"] == n_aux > 0
    assert counts["params/inference"] == counts["params/model"] - n_aux


def test_stem_stays_frozen_under_any_schedule_and_everything_else_is_scheduled():
    encoder = timm.create_model("test_resnet", num_classes=0)
    net = AdaDFNet(encoder, encoder.num_features, 8, 12)
    stages, heads = net.schedule_groups()
    stem = {id(p) for p in net.stem.parameters()}
    assert len(stages) == 4 and stages[0] == []                 # (frozen stem), layer2-4 pairs
    assert not stem & {id(p) for p in upper_stages(stages, 1.0)}  # even the whole-encoder schedule
    assert all(not p.requires_grad for p in net.stem.parameters())
    grouped = [id(p) for s in stages for p in s] + [id(p) for p in heads]
    assert sorted(grouped) == sorted(i for i in map(id, net.parameters()) if i not in stem)
    trainable = AdaDFNet(timm.create_model("test_resnet", num_classes=0), encoder.num_features, 8, 12,
                         freeze_stem=False)
    assert {id(p) for p in trainable.schedule_groups()[0][0]} == {id(p) for p in trainable.stem.parameters()}
    # both branches start from the same weights (a copy of the encoder's upper stages)
    for a, b in zip(net.target.tail.parameters(), net.auxiliary.tail.parameters()):
        assert a is not b and torch.equal(a, b)


@pytest.mark.parametrize("name,size", [("test_resnet", 24), ("test_vit", 160)])
def test_split_network_computes_the_original_encoder(name, size):
    torch.manual_seed(0)
    encoder = timm.create_model(name, num_classes=0).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        reference = encoder(x)
        net = AdaDFNet(encoder, encoder.num_features, 8, 12).eval()
        torch.testing.assert_close(net(x)["feat"], reference)
