"""The method interface: what a method may change in the one shared training loop.

A method owns the EXPR objective (and, where its paper says so, the VA/AU objectives), may add
modules (trained with the heads, optionally excluded from inference), may build its own model
variant (Ada-DF's two branches), may take an extra optimiser step after the main one (CAF's critic
and adversarial steps) and may update state at epoch ends (Ada-DF's class distributions). The loop
in ``trainers.engine`` never names a method.

Every method inherits the circumplex-cost OT term (docs/methods.md §5): ``cost`` / ``lam`` / ``consistency``
in the method config add ``λ L_OT`` and the consistency term to the method's EXPR loss, so
``focal`` + ``cost: circumplex`` is the study's OT condition and ``cost: none`` its base recipe.

A method's own options are data (as timm's pretrained configs are): a ``MethodOptions`` pydantic
model ``Options`` next to its code declares each option's type, range or choices and default;
``defaults`` is derived from it. ``trainers.config.MethodConfig`` validates a config against the
same model, so a bad value is refused before anything starts, and the method trusts it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from trainers.data.labels import LabelSpace
from trainers.losses import au_bce_loss, ccc_loss, focal_loss

METHOD_REGISTRY: dict[str, type[Method]] = {}


class MethodOptions(BaseModel):
    """A method's own options (a subclass per method, named ``Options`` in its class)."""

    model_config = ConfigDict(extra="forbid")


def option_error(err: ValidationError) -> tuple[str, str]:
    """(option name, one-line reason) of the first problem, e.g. ``("alpha", "must be ≤ 1 (got 1.5)")``."""
    first = err.errors()[0]
    name = ".".join(str(p) for p in first["loc"])
    ctx, kind, got = first.get("ctx") or {}, first["type"], first.get("input")
    bounds = {"less_than_equal": ("≤", "le"), "less_than": ("<", "lt"), "greater_than_equal": ("≥", "ge"),
              "greater_than": (">", "gt")}
    if kind in bounds:
        sign, key = bounds[kind]
        bound = ctx[key]
        msg = f"must be {sign} {bound:g}" if isinstance(bound, float) else f"must be {sign} {bound}"
    elif kind == "literal_error":
        msg = f"must be one of {ctx.get('expected', '')}".replace("'", "")
    elif kind.startswith("bool"):
        msg = "must be true or false"
    elif kind.startswith("int"):
        msg = "must be an integer"
    elif kind.startswith("float"):
        msg = "must be a number"
    else:
        msg = first["msg"].removeprefix("Value error, ")
    return name, f"{msg} (got {got!r})"


def register_method(name: str):
    """Class decorator: make a method reachable by name (like timm's ``register_model``)."""

    def wrap(cls: type[Method]) -> type[Method]:
        if name in METHOD_REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        cls.defaults = cls.Options().model_dump()  # the options' defaults, in data
        METHOD_REGISTRY[name] = cls
        return cls

    return wrap


def create_method(name: str, ctx: MethodContext, **options: Any) -> Method:
    if name not in METHOD_REGISTRY:
        raise KeyError(f"unknown method {name!r} (registered: {', '.join(sorted(METHOD_REGISTRY))})")
    return METHOD_REGISTRY[name](ctx, **options)


@dataclass
class MethodContext:
    """What a method may know about the trial: label space, training statistics, geometry."""

    label_space: LabelSpace
    train_index: pd.DataFrame            # the training split's index (labels after label noise)
    class_counts: np.ndarray             # (K,) EXPR counts on the training split
    au_pos_weight: np.ndarray | None     # (12,) N_neg/N_pos, None without AU labels
    geometry: Any = None                 # trainers.geometry.Geometry of the training split, or None
    circumplex: Any = None               # trainers.circumplex.TrialCircumplex, resolved once by the engine
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    epochs: int = 1
    backbone_name: str = ""

    @property
    def num_classes(self) -> int:
        return self.label_space.num_classes

    @property
    def class_weights(self) -> torch.Tensor:
        """Inverse training frequency normalised to mean 1 (docs/methods.md §2); unseen classes weigh 0."""
        counts = self.class_counts.astype(np.float64)
        w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
        present = w > 0
        w[present] = w[present] / w[present].mean()
        return torch.as_tensor(w, dtype=torch.float32, device=self.device)


@dataclass
class StepState:
    """Where the loop is; passed to every hook."""

    epoch: int          # 1-based, as the papers count
    step: int           # global optimiser step
    epochs: int


class Method:
    """Base recipe hooks (docs/methods.md §2). Subclasses override what their paper changes."""

    name: ClassVar[str] = "base"
    Options: ClassVar[type[MethodOptions]] = MethodOptions  # the method's own options (override)
    defaults: ClassVar[dict[str, Any]] = {}                 # derived from Options by register_method
    default_cost: ClassVar[str] = "none"
    needs_labels: ClassVar[tuple[str, ...]] = ()  # tasks ("va", "au") the training split must annotate
    # names of modules in ``self.modules`` used only for training (dropped at inference, docs/methods.md §10/§12)
    train_only: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ctx: MethodContext, cost: str | None = None, lam: float = 1.0, consistency: float = 0.0,
                 imported_from: str | None = None, **options: Any) -> None:
        self.ctx = ctx
        self.options = self.Options.model_validate(options).model_dump()  # MethodConfig checked them
        self.modules = nn.ModuleDict()
        cost = self.effective_cost(cost)
        self.cost_variant = cost
        self.lam = lam
        self.consistency = consistency
        self.ot = None
        if cost != "none" or consistency > 0:
            from trainers.losses.ot import build_ot_term

            self.ot = build_ot_term(ctx, cost=cost, lam=lam, consistency=consistency,
                                    imported_from=imported_from)

    @classmethod
    def effective_cost(cls, cost):
        """The ``method.cost`` this method trains with: the configured one, else its ``default_cost``."""
        return cost or cls.default_cost

    # --- model -------------------------------------------------------------------------------
    def build_model(self, encoder: nn.Module, feat_dim: int) -> nn.Module:
        """The network whose forward returns {"feat", "va", "expr", "au"}; override to change it."""
        from trainers.models.heads import MultiTaskNet

        return MultiTaskNet(encoder, feat_dim, self.ctx.num_classes, len(self.ctx.label_space.au_names) or 12)

    def setup(self, model: nn.Module, feat_dim: int) -> None:
        """Create extra modules in ``self.modules`` once the model exists (feature size known)."""

    def main_optimizer_modules(self) -> list[nn.Module]:
        """Extra modules trained by the main optimiser at the head LR (CAF keeps its critic out)."""
        return list(self.modules.values())

    # --- losses ------------------------------------------------------------------------------
    def task_losses(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                    state: StepState) -> dict[str, torch.Tensor | None]:
        """Masked per-task losses; a task without a valid frame in the batch is None (adds 0)."""
        return {
            "va": self.va_loss(out, batch),
            "expr": self.expr_loss(out, batch, state),
            "au": self.au_loss(out, batch),
        }

    # ``batch["n"]`` holds the per-task valid-frame counts, computed on the CPU (no GPU sync).
    def va_loss(self, out, batch) -> torch.Tensor | None:
        if batch["n"]["va"] < 2:
            return None
        return ccc_loss(out["va"], batch["va"], batch["va_mask"])

    def expr_loss(self, out, batch, state: StepState) -> torch.Tensor | None:
        mask = batch["expr_mask"]
        if batch["n"]["expr"] == 0:
            return None
        loss = self.expr_objective(out, batch, mask, state)
        if self.ot is not None:
            loss = loss + self.ot(out, batch, mask)
        return loss

    def expr_objective(self, out, batch, mask, state: StepState) -> torch.Tensor:
        """The method's own EXPR loss on the EXPR-valid frames (base: class-weighted focal CE).
        ``batch["expr"]`` is 0 (not -1) where ``mask`` is False, so it can index safely."""
        return focal_loss(out["expr"], batch["expr"], self._class_weights(out["expr"].device),
                          gamma=self.options.get("gamma", 2.0), mask=mask)

    def _class_weights(self, device) -> torch.Tensor:
        if getattr(self, "_cw", None) is None or self._cw.device != device:
            self._cw = self.ctx.class_weights.to(device)
        return self._cw

    def au_loss(self, out, batch) -> torch.Tensor | None:
        if self.ctx.au_pos_weight is None:
            return None
        if batch["n"]["au"] == 0:
            return None
        pos_weight = torch.as_tensor(self.ctx.au_pos_weight, dtype=torch.float32, device=out["au"].device)
        return au_bce_loss(out["au"], batch["au"], pos_weight)  # NaN targets (incl. unlabelled frames) masked

    # --- optimisation hooks ------------------------------------------------------------------
    def backward(self, total: torch.Tensor, weighted: dict[str, torch.Tensor], model: nn.Module) -> None:
        """Backpropagate the combined loss (PCGrad overrides this)."""
        total.backward()

    def extra_step(self, model: nn.Module, batch: dict[str, torch.Tensor], out: dict[str, torch.Tensor],
                   state: StepState) -> dict[str, float]:
        """An optional extra update after the main optimiser step (CAF). Returns metrics to log."""
        return {}

    def on_epoch_end(self, model: nn.Module, train_outputs, state: StepState) -> dict[str, float]:
        """Optional per-epoch update (Ada-DF's class distributions). ``train_outputs()`` yields
        (sample indices, model outputs) over the training split in eval mode, without augmentation;
        ``self.ctx.train_index`` holds the labels. Returns metrics to log."""
        return {}

    def sampling(self) -> str | None:
        """The training sampler this method's paper assumes: "natural", "inverse_frequency" or
        "class_balanced" (``trainers.data.pipeline.sampler_weights``, computed from the labels as
        distributed); None keeps the recipe's (``TrialConfig.oversample``). Recorded in result.json."""
        return None

    # --- inference ---------------------------------------------------------------------------
    def expr_probabilities(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class probabilities used for prediction (GReFEL fuses, Ada-DF uses its target branch)."""
        return out["expr"].float().softmax(-1)

    def state_dict(self) -> dict[str, Any]:
        """Non-parameter state to checkpoint (e.g. mined class distributions)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def parameter_counts(self, model: nn.Module) -> dict[str, int]:
        """Trainable parameters of the model and of each extra module; train-only ones flagged."""
        counts = {"params/model": sum(p.numel() for p in model.parameters())}
        for key, mod in self.modules.items():
            counts[f"params/{key}"] = sum(p.numel() for p in mod.parameters())
        counts["params/inference"] = counts["params/model"] + sum(
            v for k, v in counts.items() if k.startswith("params/") and k.split("/", 1)[1] in self.modules
            and k.split("/", 1)[1] not in self.train_only)
        return counts
