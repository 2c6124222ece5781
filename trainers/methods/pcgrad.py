"""``pcgrad``: multi-task gradient surgery, a baseline of the study's §5.6 (docs/methods.md §8). Not an imbalance
correction: it changes how the task gradients are combined and keeps the rest of the base recipe.

Gradient surgery (Yu et al. 2020) across the uncertainty-weighted task losses on the
shared encoder parameters: each task gradient is projected off every other task gradient it
conflicts with (negative dot product), in random order, and the projected gradients are summed
(the paper's Algorithm 1); head, weighting and method parameters keep their plain gradients.
The EXPR loss is the base focal loss.
"""

from __future__ import annotations

import torch
from pydantic import Field

from trainers.methods.base import Method, MethodOptions, register_method

__all__ = ["PCGrad", "pcgrad_combine"]


def pcgrad_combine(grads: list[torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
    """Σ_i g_i^PC where g_i^PC is g_i projected, in random order over j != i, off each original g_j
    it conflicts with: ``g_i ← g_i - min(g_i·g_j, 0) / ||g_j||² g_j`` (Yu et al. 2020, Alg. 1).
    Written without data-dependent branches (no host sync on a GPU)."""
    combined = torch.zeros_like(grads[0])
    for i, g in enumerate(grads):
        g_pc = g.clone()
        others = [j for j in torch.randperm(len(grads), generator=generator).tolist() if j != i]
        for j in others:
            dot = (g_pc * grads[j]).sum()
            g_pc = g_pc - dot.clamp(max=0) / (grads[j].pow(2).sum() + 1e-20) * grads[j]
        combined += g_pc
    return combined


@register_method("pcgrad")
class PCGrad(Method):
    """Focal EXPR loss; PCGrad across the weighted VA/EXPR/AU losses on the shared encoder (docs/methods.md §8)."""

    class Options(MethodOptions):
        gamma: float = Field(2.0, ge=0.0)            # focal γ of the EXPR loss

    def backward(self, total, weighted, model):
        stages, _ = model.schedule_groups()
        shared = [p for stage in stages for p in stage if p.requires_grad]
        tasks = [loss for loss in weighted.values() if loss.requires_grad]
        if len(tasks) < 2 or not shared:
            total.backward()
            return
        def flatten(grads):
            return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(shared, grads)])

        for p in shared:
            p.grad = None
        flat = [flatten(torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True))
                for loss in tasks[:-1]]
        total.backward()  # heads, log-variances, method modules: plain gradients (one pass for all)
        # the last task's shared gradient is the total's minus the others' (saves a backward pass)
        flat.append(flatten([p.grad for p in shared]) - sum(flat))
        surgery = pcgrad_combine(flat)  # random order from torch's RNG, seeded per epoch by the loop
        offset = 0
        for p in shared:
            n = p.numel()
            p.grad = surgery[offset:offset + n].view_as(p).to(p.dtype)
            offset += n
