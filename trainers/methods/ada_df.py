"""Ada-DF: adaptive label-distribution fusion with an auxiliary branch (Liu et al., Ada-DF; docs/methods.md §10).

A shared, frozen stem feeds two branches with the same architecture (their own upper encoder
stages, pooling, attention ``Linear(feat, 1) + sigmoid`` and classifier): the *auxiliary* branch
learns label distributions with CE, the *target* branch learns from the fused distribution
``d = w · D_class[y] + (1 - w) · softmax(aux)`` by KL. ``D_class`` (the class distributions) is mined
after every epoch from the auxiliary branch (Eqs. 4-7); ``w`` is the batch min-max normalised average
attention of the two branches (Eq. 11), kept apart by rank regularisation (Eqs. 9-10).

- ResNet (timm ``ResNet``): stem = conv1, bn1, act1, maxpool, layer1; each branch = its own
  layer2-4 + global pool (as the authors' code splits ``resnet18``).
- ViT (timm ``VisionTransformer``): stem = patch embedding, position embedding and the lower
  ⌊n/2⌋ blocks; each branch = its own upper blocks, final norm and pooling.

The target branch carries the VA and AU heads, so the multi-task recipe is the same as the base
one; at inference only the stem and the target branch run (the eval forward skips the auxiliary
branch unless ``auxiliary_outputs()`` asks for it, which class-distribution mining does).

Following the authors' code (docs/methods.md §10): the auxiliary softmax inside the fused target and the
normalised attention weight are not detached, the stem's batch-norm statistics keep updating in
train mode, and branch logits (not features) are multiplied by their attention weight. Frames
without an EXPR label take no part in the EXPR objective (rank regularisation and the min-max
normalisation run over the batch's EXPR-labelled frames).
"""

from __future__ import annotations

import contextlib
import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from timm.layers import global_pool_nlc
from torch import nn

from trainers.methods.base import Method, MethodOptions, register_method

__all__ = ["AdaDF", "AdaDFNet", "class_distributions_from_sums", "mine_class_distributions",
           "normalise_attention", "ramp_weights", "rank_regularisation", "split_encoder", "threshold_rows"]


# --- formulas (docs/methods.md §10) ----------------------------------------------------------------------

def ramp_weights(epoch: int, beta: float) -> tuple[float, float]:
    """(α1, α2) of Eqs. 15-16, epochs counted from 1: CE weight α1 and KL weight α2."""
    if epoch <= beta:
        return 1.0, math.exp(-((1 - epoch / beta) ** 2))
    return math.exp(-((1 - beta / epoch) ** 2)), 1.0


def threshold_rows(num_classes: int, t: float) -> torch.Tensor:
    """(K, K) threshold distributions (Eq. 7): t on the class, (1 - t)/(K - 1) elsewhere."""
    rows = torch.full((num_classes, num_classes), (1 - t) / (num_classes - 1))
    rows.fill_diagonal_(t)
    return rows


def mine_class_distributions(probs: torch.Tensor, labels: torch.Tensor, num_classes: int,
                             t: float) -> torch.Tensor:
    """Mean auxiliary distribution per class (Eq. 4); a row whose own-class value is below ``t``, or
    a class without samples, is the threshold row (Eq. 5)."""
    probs = probs.double()
    sums = torch.zeros(num_classes, num_classes, dtype=probs.dtype, device=probs.device)
    sums.index_add_(0, labels, probs)
    return class_distributions_from_sums(sums, torch.bincount(labels, minlength=num_classes), t)


def class_distributions_from_sums(sums: torch.Tensor, counts: torch.Tensor, t: float) -> torch.Tensor:
    """Eqs. 4-5 from per-class sums of distributions and per-class counts (streamed mining)."""
    counts = counts.to(sums.dtype)
    mean = sums / counts.clamp(min=1)[:, None]
    keep = (counts > 0) & (mean.diagonal() >= t)
    return torch.where(keep[:, None], mean, threshold_rows(len(sums), t).to(mean)).float()


def rank_regularisation(w_avg: torch.Tensor, mask: torch.Tensor, n: int, high_ratio: float,
                        margin: float) -> torch.Tensor:
    """``max(0, δ - (mean_high - mean_low))`` over the ``n`` masked weights sorted descending, high
    group = the top ⌊high_ratio · n⌋ (Eqs. 9-10)."""
    m = int(math.floor(high_ratio * n))
    if n < 2 or m < 1 or m >= n:
        return w_avg.sum() * 0.0
    ranked = torch.sort(torch.where(mask, w_avg, torch.full_like(w_avg, -torch.inf)), descending=True).values
    return F.relu(margin - (ranked[:m].mean() - ranked[m:n].mean()))


def normalise_attention(w_avg: torch.Tensor, mask: torch.Tensor, w_min: float) -> torch.Tensor:
    """Batch min-max normalisation of the masked weights into [w_min, 1] (Eq. 11); all-equal
    weights map to w_min."""
    lo = torch.where(mask, w_avg, torch.full_like(w_avg, torch.inf)).min()
    hi = torch.where(mask, w_avg, torch.full_like(w_avg, -torch.inf)).max()
    w = (w_avg - lo) / (hi - lo).clamp(min=1e-12) * (1 - w_min) + w_min
    return torch.where(mask, w, torch.full_like(w, w_min))


# --- the two-branch network ----------------------------------------------------------------------

class _ViTStem(nn.Module):
    """Patch and position embedding plus the lower blocks of a timm VisionTransformer."""

    def __init__(self, vit: nn.Module, lower: nn.Sequential) -> None:
        super().__init__()
        self.vit = vit          # holds patch_embed, cls/pos tokens and norm_pre (its blocks are the lower ones)
        self.vit.blocks = lower

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.vit
        return v.blocks(v.norm_pre(v.patch_drop(v._pos_embed(v.patch_embed(x)))))


class _ViTTail(nn.Module):
    """Upper blocks, final norm and pooling of a timm VisionTransformer (``forward_head`` pre-logits)."""

    def __init__(self, vit: nn.Module, upper: nn.Sequential) -> None:
        super().__init__()
        self.blocks, self.norm, self.fc_norm = upper, vit.norm, vit.fc_norm
        self.attn_pool = vit.attn_pool
        self.global_pool, self.num_prefix_tokens = vit.global_pool, vit.num_prefix_tokens
        self.pool_include_prefix = getattr(vit, "pool_include_prefix", False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.blocks(x))
        if self.attn_pool is not None:
            x = self.attn_pool(x if self.pool_include_prefix else x[:, self.num_prefix_tokens:])
        else:
            x = global_pool_nlc(x, pool_type=self.global_pool, num_prefix_tokens=self.num_prefix_tokens,
                                reduce_include_prefix=self.pool_include_prefix)
        return self.fc_norm(x)


def split_encoder(encoder: nn.Module) -> tuple[nn.Module, nn.Module, list[nn.Module]]:
    """(stem, target tail, upper stages of the tail bottom -> top) of a timm ResNet or ViT."""
    if all(hasattr(encoder, a) for a in ("conv1", "bn1", "maxpool", "layer1", "layer4", "global_pool")):
        stem = nn.Sequential(encoder.conv1, encoder.bn1, getattr(encoder, "act1", nn.ReLU()), encoder.maxpool,
                             encoder.layer1)
        tail = nn.Sequential(encoder.layer2, encoder.layer3, encoder.layer4, encoder.global_pool)
        return stem, tail, [tail[0], tail[1], tail[2]]
    if all(hasattr(encoder, a) for a in ("patch_embed", "blocks", "_pos_embed", "norm")):
        blocks = list(encoder.blocks)
        if len(blocks) < 2:
            raise ValueError("method ada_df: a ViT backbone needs at least 2 blocks to share and duplicate")
        half = len(blocks) // 2
        tail = _ViTTail(encoder, nn.Sequential(*blocks[half:]))
        encoder.norm, encoder.fc_norm, encoder.attn_pool = nn.Identity(), nn.Identity(), None  # owned by the tail
        stem = _ViTStem(encoder, nn.Sequential(*blocks[:half]))
        stages = [*tail.blocks[:-1], nn.ModuleList([tail.blocks[-1], tail.norm, tail.fc_norm])]
        return stem, tail, stages
    raise ValueError(f"method ada_df: cannot split backbone {type(encoder).__name__} into a shared stem and two "
                     f"branches (supported: timm ResNet with layer1-4, timm VisionTransformer)")


class _Branch(nn.Module):
    """Tail -> pooled feature; attention Linear(feat, 1) + sigmoid; classifier; logits · weight."""

    def __init__(self, tail: nn.Module, feat_dim: int, num_classes: int) -> None:
        super().__init__()
        self.tail = tail
        self.attention = nn.Sequential(nn.Linear(feat_dim, 1), nn.Sigmoid())
        self.classifier = nn.Linear(feat_dim, num_classes)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat = self.tail(h)
        weight = self.attention(feat)
        return feat, weight.squeeze(-1), weight * self.classifier(feat)


class AdaDFNet(nn.Module):
    """Shared stem -> auxiliary and target branches; VA and AU heads on the target feature."""

    def __init__(self, encoder: nn.Module, feat_dim: int, num_classes: int, num_aus: int = 12,
                 freeze_stem: bool = True) -> None:
        super().__init__()
        stem, tail, stages = split_encoder(encoder)
        aux_tail = copy.deepcopy(tail)
        self.stem = stem
        self.target = _Branch(tail, feat_dim, num_classes)
        self.auxiliary = _Branch(aux_tail, feat_dim, num_classes)
        self.va_head = nn.Linear(feat_dim, 2)
        self.au_head = nn.Linear(feat_dim, num_aus)
        self.freeze_stem = freeze_stem
        self._target_stages = stages
        self._auxiliary_stages = _matching_modules(tail, aux_tail, stages)
        self._run_auxiliary = False
        if freeze_stem:
            for p in self.stem.parameters():
                p.requires_grad_(False)

    @contextlib.contextmanager
    def auxiliary_outputs(self):
        """Run the auxiliary branch in eval mode too (class-distribution mining)."""
        previous, self._run_auxiliary = self._run_auxiliary, True
        try:
            yield self
        finally:
            self._run_auxiliary = previous

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.stem(x)
        feat, w_tar, z_tar = self.target(h)
        out = {"feat": feat, "va": torch.tanh(self.va_head(feat)), "expr": z_tar, "au": self.au_head(feat),
               "attention_target": w_tar}
        if self.training or self._run_auxiliary:  # inference: target branch only (docs/methods.md §10)
            _, w_aux, z_aux = self.auxiliary(h)
            out.update(expr_aux=z_aux, attention_auxiliary=w_aux, attention=(w_aux + w_tar) / 2)
        return out

    def schedule_groups(self) -> tuple[list[list[nn.Parameter]], list[nn.Parameter]]:
        """Stage 0 is the shared stem — empty when frozen, so no schedule (not even
        ``unfreeze_fraction: 1``) ever trains it; each upper stage holds the target and auxiliary
        copies of that stage, so both branches follow the same schedule."""
        stem = [] if self.freeze_stem else list(self.stem.parameters())
        stages = [[*t.parameters(), *a.parameters()] for t, a in zip(self._target_stages, self._auxiliary_stages)]
        heads = [p for m in (self.target.attention, self.target.classifier, self.auxiliary.attention,
                             self.auxiliary.classifier, self.va_head, self.au_head) for p in m.parameters()]
        return [stem, *stages], heads

    def auxiliary_parameters(self) -> list[nn.Parameter]:
        return list(self.auxiliary.parameters())


def _matching_modules(original: nn.Module, copied: nn.Module, modules: list[nn.Module]) -> list[nn.Module]:
    """The modules of ``copied`` at the same place as ``modules`` in ``original`` (deepcopy keeps names)."""
    names = {id(m): n for n, m in original.named_modules()}
    by_name = dict(copied.named_modules())
    out = []
    for m in modules:
        if id(m) in names:
            out.append(by_name[names[id(m)]])
        else:  # a ModuleList grouping several submodules (ViT's last stage)
            out.append(nn.ModuleList([by_name[names[id(c)]] for c in m]))
    return out


# --- the method ----------------------------------------------------------------------------------

@register_method("ada_df")
class AdaDF(Method):
    """Adaptive label-distribution fusion (docs/methods.md §10). Defaults: AffectNet's t = 0.5 and β = 5
    (RAF-DB: ``threshold: 0.7, beta: 3``)."""

    class Options(MethodOptions):
        threshold: float = Field(0.5, gt=0.0, le=1.0)   # t of Eq. 7
        w_min: float = Field(0.2, ge=0.0, lt=1.0)       # lower end of the normalised weights (Eq. 11)
        beta: float = Field(5, gt=0.0)                  # β, epochs of the α1/α2 ramp (Eqs. 15-16)
        margin: float = Field(0.07, ge=0.0)             # δ of the rank-regularisation loss (Eq. 10)
        high_ratio: float = Field(0.7, ge=0.0, le=1.0)  # share of the high-weight group (Eq. 9)
        freeze_stem: bool = True                        # the shared stem is not trained

    def __init__(self, ctx, **kwargs) -> None:
        super().__init__(ctx, **kwargs)
        o = self.options
        self.class_distributions = threshold_rows(ctx.num_classes, float(o["threshold"]))  # initial rows

    def build_model(self, encoder, feat_dim):
        return AdaDFNet(encoder, feat_dim, self.ctx.num_classes, len(self.ctx.label_space.au_names) or 12,
                        freeze_stem=bool(self.options["freeze_stem"]))

    def expr_objective(self, out, batch, mask, state):
        o = self.options
        if self.class_distributions.device != out["expr"].device:
            self.class_distributions = self.class_distributions.to(out["expr"].device)
        y, n, m = batch["expr"], batch["n"]["expr"], mask.float()
        l_rr = rank_regularisation(out["attention"].float(), mask, n, float(o["high_ratio"]), float(o["margin"]))
        w = normalise_attention(out["attention"].float(), mask, float(o["w_min"]))[:, None]
        aux_logits = out["expr_aux"].float()
        ce = F.cross_entropy(aux_logits, y, reduction="none")                                   # Eq. 3
        fused = w * self.class_distributions[y] + (1 - w) * aux_logits.softmax(-1)              # Eq. 12
        log_p_tar = F.log_softmax(out["expr"].float(), dim=-1)
        kl = (torch.special.xlogy(fused, fused) - fused * log_p_tar).sum(-1)                   # Eq. 13
        alpha1, alpha2 = ramp_weights(state.epoch, float(o["beta"]))                            # Eqs. 15-16
        mean = lambda v: (v * m).sum() / m.sum().clamp(min=1)  # noqa: E731
        return l_rr + alpha1 * mean(ce) + alpha2 * mean(kl)                                     # Eq. 14

    def on_epoch_end(self, model, train_outputs, state):
        """Mine D_class from the auxiliary branch over the training split (eval mode, no grad)."""
        labels = torch.from_numpy(self.ctx.train_index["expr"].to_numpy(np.int64, copy=True))
        k = self.ctx.num_classes
        sums, counts = torch.zeros(k, k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
        with model.auxiliary_outputs():
            for idx, out in train_outputs():
                y = labels[torch.as_tensor(idx)]
                keep = y >= 0
                probs = out["expr_aux"].float().softmax(-1).cpu().double()[keep]
                sums.index_add_(0, y[keep], probs)
                counts += torch.bincount(y[keep], minlength=k).double()
        t = float(self.options["threshold"])
        self.class_distributions = class_distributions_from_sums(sums, counts, t)
        own = (sums / counts.clamp(min=1)[:, None]).diagonal()
        return {"ada_df/mined_rows": float(((counts > 0) & (own >= t)).sum()),
                "ada_df/own_class_mean": float(own[counts > 0].mean()) if (counts > 0).any() else 0.0}

    def expr_probabilities(self, out):
        """The target branch alone (docs/methods.md §10: the auxiliary branch is removed at inference)."""
        return out["expr"].float().softmax(-1)

    def state_dict(self):
        return {"class_distributions": self.class_distributions.detach().cpu()}

    def load_state_dict(self, state):
        self.class_distributions = state["class_distributions"].clone()

    def parameter_counts(self, model):
        counts = super().parameter_counts(model)
        aux = sum(p.numel() for p in model.auxiliary_parameters())
        counts["params/auxiliary"] = aux
        counts["params/inference"] -= aux
        return counts
