"""CAF: contrastive adversarial learning of strong vs weak emotions (the CAF paper; docs/methods.md §12).

The training frames with VA are split by Otsu thresholds into strong P (``r = ||x|| >= δ_r``) and weak
Q (``r < δ_r``), ``δ_r = sqrt(δ_v² + δ_a²)`` with ``δ_v``/``δ_a`` Otsu's thresholds of |v| and |a| over
the training set. A critic ``f_c`` (MLP 64-32-16 on encoder features, train-only) learns Eq. 7, and
the encoder learns adversarially to make weak frames look strong to it. Each batch:

1. the main step of the shared loop, with the VA loss replaced by
   ``L_AV = RMSE + 0.5 (L_PCC + L_CCC)`` (EXPR and AU keep the base recipe);
2. a critic step on ``L_c`` with the critic's own Adam (the critic is not in the main optimiser);
3. an encoder step on ``L_adv = -mean f_c(f_e(x_weak))`` with the critic frozen, by an Adam over
   the encoder created in ``setup`` (it updates only the encoder parameters the schedule has
   unfrozen).

Readings this file commits to (the paper leaves them open or garbled; docs/methods.md §12):

- *Critic loss (Eq. 7).* First term: the mean of ``D²`` over pairs of distinct strong frames.
  Second term: ½ the mean of ``max(0, α̂ - D²)`` over cross pairs (one strong, one weak) — the
  pairs with ξ = -1 in Eq. 4, the only ones the margin applies to ("the second term is learned to
  increase the inter-class variability of vectors between different groups"; the authors' code
  also hinges strong-weak pairs).
- *Adaptive margin (Eq. 8).* ``α̂ = -½ log(1 - η²) + log((N/c)^{1/(2K)}) = -½ log(1 - η²) +
  log(N/c)/(2K)``, Eq. 8 being the log of the product of the two factors. ``N`` = number of
  critic frames in the batch (|P| + |Q|), ``c = 0.05``.
- ``η`` = Pearson correlation, across the 16 critic dimensions, of the two groups' mean
  Gaussian-kernel features ``g(z) = exp(-z²/(2σ²))`` (elementwise, σ² = ``kernel_var`` = 0.2 as
  the authors' code), clamped so that the MI term stays <= 2.5 (the authors' clamp).
- ``K`` = number of frames (of either group) with at least one frame of the other group inside the
  MI part of the margin (``D² < -½ log(1 - η²)``), at least 1. It falls as the critic separates the
  groups, so ``Δ`` grows "as learning progresses" and bounds ``α̂`` away from 0 when MI vanishes,
  as the paper describes; counting against the MI part keeps ``α̂`` free of circularity.
- ``η``, ``K`` and ``α̂`` are constants of each critic step (no gradient through the margin).
- ``RMSE`` = RMSE_v + RMSE_a (the authors' code); PCC and CCC are population moments over the
  batch's VA-valid frames.
- Step 2 uses this batch's encoder features from the main forward (detached); step 3 re-runs the
  encoder on the weak frames of ``batch["image"]``. ``adv_weight`` scales ``L_adv`` (docs/methods.md: 1;
  the authors' code uses 0.1).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trainers.losses import ccc
from trainers.methods.base import Method, MethodOptions, register_method

__all__ = ["CAF", "adaptive_margin", "caf_va_loss", "critic_loss", "otsu_threshold", "strong_weak_split"]

MI_CAP = 2.5  # the authors' clamp of the MI term


def otsu_threshold(values, nbins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample: the histogram bin centre (nbins bins over [min, max]) that
    maximises the between-class variance of the two sides (Otsu 1979). A constant sample returns
    its value."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise ValueError("otsu_threshold: no finite value")
    lo, hi = x.min(), x.max()
    if lo == hi:
        return float(lo)
    hist, edges = np.histogram(x, bins=nbins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    hist = hist.astype(np.float64)
    w_below = np.cumsum(hist)                       # frames at or below each candidate
    w_above = np.cumsum(hist[::-1])[::-1]           # frames at or above each bin
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_below = np.cumsum(hist * centres) / w_below
        mean_above = (np.cumsum((hist * centres)[::-1]) / w_above[::-1])[::-1]
    # threshold after bin i: below = bins 0..i, above = bins i+1..
    between = w_below[:-1] * w_above[1:] * (mean_below[:-1] - mean_above[1:]) ** 2
    return float(centres[int(np.nanargmax(between))])


def strong_weak_split(va) -> tuple[np.ndarray, dict[str, float]]:
    """Per frame 1 (strong P), 0 (weak Q) or -1 (no VA); and the thresholds δ_v, δ_a, δ_r."""
    va = np.asarray(va, dtype=np.float64).reshape(-1, 2)
    valid = np.isfinite(va).all(axis=1)
    if not valid.any():
        raise ValueError("method caf needs VA labels on the training split (docs/methods.md §12)")
    d_v, d_a = otsu_threshold(np.abs(va[valid, 0])), otsu_threshold(np.abs(va[valid, 1]))
    d_r = math.hypot(d_v, d_a)
    r = np.linalg.norm(np.nan_to_num(va), axis=1)
    group = np.where(valid, (r >= d_r).astype(np.int64), -1)
    return group, {"delta_v": d_v, "delta_a": d_a, "delta_r": d_r}


def caf_va_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``L_AV = (RMSE_v + RMSE_a) + 0.5 (1 - mean PCC) + 0.5 (1 - mean CCC)`` over masked frames."""
    pred, target = pred.float(), target.float()
    w = mask.float()[:, None] / mask.float().sum().clamp(min=1)
    rmse = ((w * (pred - target) ** 2).sum(0) + 1e-8).sqrt().sum()
    mp, mt = (w * pred).sum(0), (w * target).sum(0)
    vp, vt = (w * (pred - mp) ** 2).sum(0), (w * (target - mt) ** 2).sum(0)
    pcc = (w * (pred - mp) * (target - mt)).sum(0) / ((vp * vt).sqrt() + 1e-8)
    return rmse + 0.5 * (1 - pcc.mean()) + 0.5 * (1 - ccc(pred, target, mask).mean())


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / ((a.pow(2).sum() * b.pow(2).sum()).sqrt() + 1e-12)


def adaptive_margin(z: torch.Tensor, strong: torch.Tensor, weak: torch.Tensor, c: float = 0.05,
                    kernel_var: float = 0.2) -> dict[str, torch.Tensor]:
    """α̂ of Eq. 8 (see the module docstring for η and K); returns margin, eta, mi, k, n."""
    z = z.detach().float()
    s, w = strong.float(), weak.float()
    g = torch.exp(-z.pow(2) / (2 * kernel_var))
    g_strong = (s[:, None] * g).sum(0) / s.sum().clamp(min=1)
    g_weak = (w[:, None] * g).sum(0) / w.sum().clamp(min=1)
    eta = _pearson(g_strong, g_weak)
    eta2 = eta.pow(2).clamp(max=1 - math.exp(-2 * MI_CAP))
    mi = -0.5 * torch.log1p(-eta2)
    d2 = torch.cdist(z, z).pow(2)
    cross = (s[:, None] * w[None, :] + w[:, None] * s[None, :]) > 0
    k = ((d2 < mi) & cross).any(1).sum().clamp(min=1).float()
    n = s.sum() + w.sum()
    margin = mi + torch.log(n.clamp(min=1) / c) / (2 * k)
    return {"margin": margin, "eta": eta, "mi": mi, "k": k, "n": n}


def critic_loss(z: torch.Tensor, strong: torch.Tensor, weak: torch.Tensor,
                margin: torch.Tensor | float) -> torch.Tensor:
    """Eq. 7: mean D² over pairs of distinct strong frames + ½ mean max(0, α̂ - D²) over strong-weak pairs."""
    z = z.float()
    s, w = strong.float(), weak.float()
    diff = z[:, None, :] - z[None, :, :]
    d2 = diff.pow(2).sum(-1)
    same = s[:, None] * s[None, :] * (1 - torch.eye(len(z), device=z.device))
    cross = s[:, None] * w[None, :]
    compact = (same * d2).sum() / same.sum().clamp(min=1)
    separate = (cross * F.relu(margin - d2)).sum() / cross.sum().clamp(min=1)
    return compact + 0.5 * separate


class Critic(nn.Module):
    """f_c: MLP 64-32-16 on encoder features (docs/methods.md §12)."""

    def __init__(self, feat_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(feat_dim, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.net(feat)


@register_method("caf")
class CAF(Method):
    """Strong/weak critic + adversarial encoder steps; L_AV for VA (docs/methods.md §12)."""

    class Options(MethodOptions):
        c: float = Field(0.05, gt=0.0)            # confidence constant of the margin (Eq. 8)
        kernel_var: float = Field(0.2, gt=0.0)    # variance of the Gaussian kernel
        critic_lr: float = Field(1e-4, gt=0.0)
        adv_lr: float = Field(1e-4, gt=0.0)
        adv_weight: float = Field(1.0, ge=0.0)
        gamma: float = Field(2.0, ge=0.0)         # focal γ of the EXPR loss
    train_only = ("critic",)
    needs_labels = ("va",)

    def __init__(self, ctx, **kwargs) -> None:
        super().__init__(ctx, **kwargs)
        group, self.thresholds = strong_weak_split(ctx.train_index[["valence", "arousal"]].to_numpy(np.float64))
        self.group = torch.as_tensor(group)
        self.critic_opt = self.adv_opt = None
        self._encoder_params: list[nn.Parameter] = []

    def setup(self, model, feat_dim):
        self.modules["critic"] = Critic(feat_dim)
        self.critic_opt = torch.optim.Adam(self.modules["critic"].parameters(), lr=float(self.options["critic_lr"]))
        stages, _ = model.schedule_groups()
        self._encoder = getattr(model, "encoder", None)
        if self._encoder is None:
            raise ValueError("method caf needs a model with an ``encoder`` (the base MultiTaskNet)")
        self._encoder_params = [p for stage in stages for p in stage]
        self.adv_opt = torch.optim.Adam(self._encoder_params, lr=float(self.options["adv_lr"]))

    def main_optimizer_modules(self):
        return []  # the critic has its own optimiser (docs/methods.md §12)

    def va_loss(self, out, batch):
        if batch["n"]["va"] < 2:
            return None
        return caf_va_loss(out["va"], batch["va"], batch["va_mask"])

    def extra_step(self, model, batch, out, state):
        critic = self.modules["critic"]
        if self.group.device != batch["index"].device:
            self.group = self.group.to(batch["index"].device)
        group = self.group[batch["index"]]
        strong, weak = group == 1, group == 0
        n_strong, n_weak = int(strong.sum()), int(weak.sum())
        logged: dict[str, float | torch.Tensor] = {}
        # (2) critic step on L_c (Eq. 7) with this batch's encoder features
        if n_strong >= 2 and n_weak >= 1:
            critic.requires_grad_(True)
            z = critic(out["feat"].detach().float())
            margin = adaptive_margin(z, strong, weak, float(self.options["c"]), float(self.options["kernel_var"]))
            loss_c = critic_loss(z, strong, weak, margin["margin"])
            self.critic_opt.zero_grad(set_to_none=True)
            loss_c.backward()
            self.critic_opt.step()
            logged.update({"caf/critic": loss_c.detach(), "caf/margin": margin["margin"], "caf/eta": margin["eta"]})
        # (3) encoder step on L_adv with the critic frozen
        if n_weak >= 2 and any(p.requires_grad for p in self._encoder_params):
            critic.requires_grad_(False)
            feat = self._encoder(batch["image"][weak])
            loss_adv = -critic(feat.float()).mean() * float(self.options["adv_weight"])
            self.adv_opt.zero_grad(set_to_none=True)
            loss_adv.backward()
            self.adv_opt.step()
            self.adv_opt.zero_grad(set_to_none=True)
            critic.requires_grad_(True)
            logged["caf/adv"] = loss_adv.detach()
        return logged

    def state_dict(self):
        return {"critic_opt": self.critic_opt.state_dict(), "adv_opt": self.adv_opt.state_dict()}

    def load_state_dict(self, state):
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.adv_opt.load_state_dict(state["adv_opt"])
