"""GReFEL reliability balancing on a backbone embedding (Wasi et al., GReFEL; docs/methods.md §11).

The embedding ``e`` of any backbone feeds (i) the primary MLP, ``l = softmax(MLP(e))`` (Eq. 9);
(ii) geometric correction by learnable anchors, ``K_a`` per class, ``s = softmax over all anchors of
-||e - a||/δ`` and ``t_g = Σ s · onehot(class of anchor)`` (Eqs. 12-15); (iii) attentive correction,
multi-head self-attention over ``e`` projected to K, ``t_a = softmax`` (Eqs. 16-17). They are fused by
confidence ``C_f(q) = 1 - H(q)/log K``: ``t = (c_g t_g + c_a t_a)/(c_g + c_a)`` and
``L_final = (c_l l + c_t t)/(c_l + c_t)`` (Eqs. 18-19); the prediction is ``argmax L_final``.
The paper's IR50 + landmark cross-attention ViT is out of scope (docs/methods.md §11).

Choices this file makes:

- *Tokens for the self-attention.* Self-attention over a single vector is a linear map (one key,
  weight 1), and the paper applies it "to individual visual embeddings, not across the batch", so
  ``e`` is split into ``tokens`` contiguous chunks (zero-padded to a multiple), each chunk projected
  to ``attn_dim`` (default 64 = the paper's d_Q = d_K = d_V with one head) plus a learned position
  embedding; the attention output tokens are concatenated and projected to K.
- *Confidence fusion.* The weights get +1e-6 each, so two zero confidences give the plain average
  instead of 0/0; gradients flow through the confidences as through the rest of ``L_final``.
- *Loss placement.* ``λ_cls NLL(log L_final, y) + λ_c L_c`` is the EXPR objective (under the shared
  uncertainty weighting). The anchor loss ``L_a = -mean pairwise ||a_i - a_j||² / dim`` depends on
  the anchors alone and is unbounded below; inside ``exp(-s) L + s`` a loss that goes negative drives
  ``s → -∞``, so ``λ_a L_a`` is added to the gradient in ``backward`` as a parameter regulariser,
  outside the task weighting (it is logged as ``loss_anchor``).
- *Anchors* are initialised N(0, 1); the reliability module lives inside the model, so the evaluated
  EMA weights include it.
- *Data refinement.* ``balanced: true`` samples EXPR-labelled frames only, each class with the same
  expected share (B per class per batch in expectation; ``sampling`` "class_balanced" in
  result.json); the default keeps the shared sampler,
  which already gives the EXPR-labelled frames equal class shares but also draws frames without an
  EXPR label (they train VA/AU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trainers.methods.base import Method, MethodOptions, register_method
from trainers.models.backbones import encoder_stages

__all__ = ["GReFEL", "GReFELNet", "ReliabilityBalancing", "anchor_loss", "center_loss", "confidence",
           "confidence_fusion"]

FUSION_EPS = 1e-6


def confidence(q: torch.Tensor) -> torch.Tensor:
    """``C_f(q) = 1 - H(q)/log K`` per row (Eqs. 10-11 normalised so that uniform -> 0, one-hot -> 1)."""
    entropy = -torch.special.xlogy(q, q).sum(-1)
    return 1 - entropy / math.log(q.shape[-1])


def confidence_fusion(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(C_f(a) a + C_f(b) b) / (C_f(a) + C_f(b))`` per row (Eqs. 18-19)."""
    ca, cb = confidence(a)[:, None] + FUSION_EPS, confidence(b)[:, None] + FUSION_EPS
    return (ca * a + cb * b) / (ca + cb)


def anchor_loss(anchors: torch.Tensor) -> torch.Tensor:
    """``L_a = - mean over anchor pairs i != j of ||a_i - a_j||² / dim`` (Eq. 21, normalised)."""
    n, dim = anchors.shape
    a = anchors.float()
    # Σ_{i,j} ||a_i - a_j||² = 2n Σ_i ||a_i||² - 2 ||Σ_i a_i||² (the i = j terms are 0), O(n·dim) memory
    pair_sum = 2 * n * a.pow(2).sum() - 2 * a.sum(0).pow(2).sum()
    return -pair_sum / (n * (n - 1) * dim)


def center_loss(dist2: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per frame ``min_k ||e - a_{y,k}||²`` (Eq. 22) from the (B, K, K_a) squared distances."""
    own = dist2.gather(1, target[:, None, None].expand(-1, 1, dist2.shape[-1])).squeeze(1)
    return own.min(-1).values


class _BatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d that normalises a training batch of one frame (an epoch's last partial batch) with
    its running statistics instead of failing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class ReliabilityBalancing(nn.Module):
    """Primary MLP, anchors and attentive correction on an embedding; returns the fused distribution."""

    def __init__(self, feat_dim: int, num_classes: int, anchors_per_class: int = 10, delta: float = 1.0,
                 hidden: int = 64, dropout: float = 0.5, tokens: int = 8, attn_dim: int = 64, heads: int = 1) -> None:
        super().__init__()
        self.num_classes, self.anchors_per_class, self.delta = num_classes, anchors_per_class, delta
        # docs/methods.md §11: two hidden layers of 64, each ReLU, BN, dropout 0.5
        self.mlp = nn.Sequential(
            nn.Linear(feat_dim, hidden), nn.ReLU(), _BatchNorm1d(hidden), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), _BatchNorm1d(hidden), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes))
        self.anchors = nn.Parameter(torch.randn(num_classes * anchors_per_class, feat_dim))
        self.tokens = tokens
        self.pad = (-feat_dim) % tokens
        self.token_proj = nn.Linear((feat_dim + self.pad) // tokens, attn_dim)
        self.position = nn.Parameter(torch.zeros(tokens, attn_dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.attention = nn.MultiheadAttention(attn_dim, heads, batch_first=True)
        self.attention_out = nn.Linear(tokens * attn_dim, num_classes)

    def forward(self, e: torch.Tensor) -> dict[str, torch.Tensor]:
        e = e.float()
        b = len(e)
        logits = self.mlp(e)
        primary = logits.softmax(-1)                                                   # Eq. 9
        dist2 = (e[:, None, :] - self.anchors[None]).pow(2).sum(-1)                    # (B, K·K_a)
        sim = (-(dist2 + 1e-12).sqrt() / self.delta).softmax(-1)                      # Eqs. 13-14
        t_g = sim.view(b, self.num_classes, self.anchors_per_class).sum(-1)           # Eq. 15
        tok = F.pad(e, (0, self.pad)).view(b, self.tokens, -1)
        tok = self.token_proj(tok) + self.position
        attended, _ = self.attention(tok, tok, tok, need_weights=False)               # Eq. 16
        t_a = self.attention_out(attended.reshape(b, -1)).softmax(-1)                 # Eq. 17
        t = confidence_fusion(t_g, t_a)                                                # Eq. 18
        final = confidence_fusion(primary, t)                                          # Eq. 19
        return {"primary_logits": logits, "t_g": t_g, "t_a": t_a, "final": final,
                "anchor_dist2": dist2.view(b, self.num_classes, self.anchors_per_class)}


class GReFELNet(nn.Module):
    """encoder -> e; VA/AU heads on e; reliability balancing on e gives the EXPR distribution.
    ``out["expr"] = log L_final``, so ``softmax(out["expr"]) = L_final`` wherever logits are read."""

    def __init__(self, encoder: nn.Module, feat_dim: int, num_classes: int, num_aus: int = 12, **rb) -> None:
        super().__init__()
        self.encoder = encoder
        self.va_head = nn.Linear(feat_dim, 2)
        self.au_head = nn.Linear(feat_dim, num_aus)
        self.reliability = ReliabilityBalancing(feat_dim, num_classes, **rb)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.encoder(x)
        rb = self.reliability(feat)
        return {"feat": feat, "va": torch.tanh(self.va_head(feat)), "au": self.au_head(feat),
                "expr": rb["final"].clamp(min=1e-12).log(), "expr_final": rb["final"],
                "expr_primary": rb["primary_logits"], "t_g": rb["t_g"], "t_a": rb["t_a"],
                "anchor_dist2": rb["anchor_dist2"]}

    def schedule_groups(self) -> tuple[list[list[nn.Parameter]], list[nn.Parameter]]:
        heads = [*self.va_head.parameters(), *self.au_head.parameters(), *self.reliability.parameters()]
        return encoder_stages(self.encoder), heads


@register_method("grefel")
class GReFEL(Method):
    """Reliability balancing: NLL on L_final + center loss (+ anchor loss in ``backward``), docs/methods.md §11."""

    class Options(MethodOptions):
        anchors_per_class: int = Field(10, ge=1)
        delta: float = Field(1.0, gt=0.0)
        lambda_cls: float = Field(1.0, ge=0.0)
        lambda_a: float = Field(1.0, ge=0.0)      # anchor loss weight (Eq. 21)
        lambda_c: float = Field(1.0, ge=0.0)      # center loss weight (Eq. 22)
        hidden: int = Field(64, ge=1)
        dropout: float = Field(0.5, ge=0.0, lt=1.0)
        tokens: int = Field(8, ge=1)
        attn_dim: int = Field(64, ge=1)
        heads: int = Field(1, ge=1)
        balanced: bool = False

    def build_model(self, encoder, feat_dim):
        o = self.options
        net = GReFELNet(encoder, feat_dim, self.ctx.num_classes, len(self.ctx.label_space.au_names) or 12,
                         anchors_per_class=int(o["anchors_per_class"]), delta=float(o["delta"]),
                         hidden=int(o["hidden"]), dropout=float(o["dropout"]), tokens=int(o["tokens"]),
                         attn_dim=int(o["attn_dim"]), heads=int(o["heads"]))
        self._reliability = net.reliability
        return net

    def task_losses(self, out, batch, state):
        losses = super().task_losses(out, batch, state)
        losses["anchor"] = anchor_loss(self._reliability.anchors).detach()  # logged; not task-weighted
        return losses

    def expr_objective(self, out, batch, mask, state):
        y, m = batch["expr"], mask.float()
        nll = -out["expr"].float().gather(1, y[:, None]).squeeze(1)                   # Eq. 20
        l_c = center_loss(out["anchor_dist2"], y)                                      # Eq. 22
        per_frame = self.options["lambda_cls"] * nll + self.options["lambda_c"] * l_c
        return (per_frame * m).sum() / m.sum().clamp(min=1)

    def backward(self, total, weighted, model):
        total.backward()
        if self.options["lambda_a"] > 0:  # Eq. 21, a regulariser of the anchors (see module docstring)
            (self.options["lambda_a"] * anchor_loss(self._reliability.anchors)).backward()

    def expr_probabilities(self, out):
        """``L_final`` (Eq. 19); the prediction is its argmax."""
        return out["expr_final"].float()

    def sampling(self):
        return "class_balanced" if self.options["balanced"] else None
