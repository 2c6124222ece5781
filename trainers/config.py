"""The fully resolved configuration of one trial (docs/design.md §2).

A ``TrialConfig`` is what a sweep's grid point expands to and what ``affsweep train`` reads. Its
``trial_id`` is a short hash of the canonical JSON of the fields that define the experiment — not of
paths, devices or worker counts — so the same grid point always has the same id.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainers.config_errors import ConfigError, explain_error, read_yaml_mapping, unknown_message, yaml_key_lines
from trainers.costs import COST_VARIANTS as COST_VARIANTS  # re-exported: the shorthands of method.cost
from trainers.costs import CostSpec, canonical_cost, check_cost_for_label_space, cost_identity
from trainers.data.labels import LABEL_SPACES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetConfig(_Strict):
    name: str = "synthetic"              # a name in trainers.data.registry.DATASETS
    preset: str = "affwild2_like"        # synthetic only
    n: int = Field(3000, ge=50)          # synthetic only: frames drawn
    seed: int = 0                        # synthetic only: the world is the same for every trial seed
    separability: float | None = Field(None, ge=0.0, le=1.0)  # synthetic only
    root: str | None = None              # real datasets; environment variables are expanded
    image_size: int = Field(64, ge=16)
    val_fraction: float = Field(0.2, gt=0.0, lt=0.9)  # synthetic only: fraction of groups held out
    drop_tasks: list[Literal["va", "expr", "au"]] = Field(default_factory=list)  # hide these labels
    # (e.g. a RAF-DB-like synthetic dataset: drop_tasks [va, au] — no geometry of its own)
    every_k: int = Field(1, ge=1)        # Aff-Wild2 frame subsampling of the training split
    val_every_k: int = Field(1, ge=1)    # departure: subsample validation too (the official protocol,
    # docs/methods.md §3, scores every validation frame: 1)
    crop_faces: bool = False             # AffectNet face-box crop
    cache: bool = False                  # read the decoded uint8 cache instead of JPEGs
    cache_dir: str | None = None

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        from trainers.data.registry import DATASETS

        if name not in DATASETS:
            raise ValueError(unknown_message(name, DATASETS, what="dataset"))
        return name


class BackboneConfig(_Strict):
    name: str = "resnet18"
    pretrained: bool | str = False
    kwargs: dict[str, Any] = Field(default_factory=dict)


class AugmentConfig(_Strict):
    hflip: bool = True
    color_jitter: float = Field(0.1, ge=0.0, le=1.0)
    on_gpu: bool = True                  # with a CUDA device, augment and normalise on the GPU


class LabelNoiseConfig(_Strict):
    rate: float = Field(0.0, ge=0.0, lt=1.0)
    seed: int = 0


class MethodConfig(BaseModel):
    """The EXPR-side method and the circumplex-cost OT term shared by every method.

    Method-specific options (e.g. Ada-DF's ``threshold``) are extra keys, checked against the
    registered method's ``Options`` model (names, types, ranges, choices), so a typo or a bad value is
    an error, not a silently ignored option or a failure inside a worker. The values are kept as
    written (they enter ``trial_id``); the method validates them with the same model.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = "focal"
    # a shorthand (COST_VARIANTS), a bare source or {source, control} (trainers.costs); None: the
    # method's default. Stored canonically: a shorthand stays the string it is today.
    cost: str | CostSpec | None = None
    lam: float = Field(1.0, ge=0.0)        # docs/methods.md §5: λ, default 1.0
    consistency: float = Field(0.0, ge=0.0)  # docs/methods.md §5: prediction-level consistency weight
    imported_from: str | None = None       # cost: imported — e.g. "synthetic:affectnet_like" or a JSON path

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @field_validator("cost", mode="before")
    @classmethod
    def _canonical_cost(cls, cost: Any) -> Any:
        return canonical_cost(cost)

    @field_validator("name")
    @classmethod
    def _known_method(cls, name: str) -> str:
        from trainers.methods import METHOD_REGISTRY  # registry; imported late to avoid a cycle

        if name not in METHOD_REGISTRY:
            raise ValueError(unknown_message(name, METHOD_REGISTRY, what="method"))
        return name

    @model_validator(mode="after")
    def _known_options(self) -> MethodConfig:
        from trainers.methods import METHOD_REGISTRY

        method = METHOD_REGISTRY[self.name]
        allowed = method.defaults
        for key in self.options:
            if key not in allowed:
                # "@key:" lets describe_validation_error put the option into the key path
                raise ValueError(f"@{key}:" + unknown_message(key, allowed, what=f"option of method {self.name!r}:"))
        try:  # the method's own typed options (ranges, choices); the values stay as written (trial_id)
            method.Options.model_validate(self.options)
        except ValidationError as e:
            from trainers.methods.base import option_error

            key, reason = option_error(e)
            raise ValueError(f"@{key}:{reason}") from None
        if self.cost is None:  # resolve so that trial_id names the cost actually used
            self.__dict__["cost"] = METHOD_REGISTRY[self.name].default_cost
        return self


class TrialConfig(_Strict):
    """Everything that defines one trial. Fields marked as placement do not enter ``trial_id``."""

    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    label_noise: LabelNoiseConfig = Field(default_factory=LabelNoiseConfig)
    seed: int = 0
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0)                     # head learning rate
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: int = Field(1, ge=0)               # docs/methods.md §2: head warm-up, encoder frozen
    unfreeze_fraction: float = Field(0.5, ge=0, le=1)  # docs/methods.md §2: upper fraction of blocks unfrozen
    encoder_lr_factor: float = Field(0.1, gt=0)       # docs/methods.md §2: encoder LR = factor × head LR
    ema_decay: float = Field(0.999, ge=0, lt=1)       # docs/methods.md §2
    oversample: bool = True                           # docs/methods.md §2: inverse class frequency sampling
    # (a method may choose its own sampler, e.g. logit_adjust's natural prior; result.json: sampling)
    # --- departures from the recipe (docs/methods.md §18), each off by default (docs/methods.md §18) ----------
    ema_warmup: bool = False                          # timm's EMA warm-up: decay 1 - (1 + step)^(-2/3),
    # ~0.97 after a few hundred steps, instead of ema_decay from the first step (short runs)
    bn_recalibration_batches: int = Field(0, ge=0)    # re-estimate BatchNorm statistics of the EMA
    # weights on this many training batches before evaluating (as SWA does); the recipe has none: 0
    frozen_bn_update: bool = False                    # let BatchNorm running statistics of frozen
    # encoder stages (warm-up, lower stages) keep updating; the recipe: frozen means frozen
    log_var_weight_decay: float = Field(0.0, ge=0)    # AdamW weight decay on the uncertainty
    # log-variances s_t (docs/methods.md §2 has none; the heads' weight_decay applied to them before)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    # placement — where and how fast, not what: excluded from trial_id
    device: str = "auto"
    num_workers: int = Field(0, ge=0)
    amp: bool = True                                  # bf16 autocast on CUDA
    channels_last: bool = True                        # on CUDA
    compile: bool = False                             # torch.compile the model (CUDA)
    # how often, not what: the final metrics do not depend on these (evaluation has no side effects)
    eval_every: int | None = Field(None, ge=1)        # also evaluate every k-th epoch; None: the last only
    keep_optimizer: bool = False                      # a finished trial keeps its optimiser state (to train on)
    data_on_device: Literal["auto", "on", "off"] = "auto"  # decoded images kept in device memory
    # (auto: on CUDA when they fit; trainers/data/device_resident.py)

    PLACEMENT_FIELDS: ClassVar[tuple[str, ...]] = ("device", "num_workers", "amp", "channels_last", "compile",
                                                   "eval_every", "keep_optimizer", "data_on_device")

    @model_validator(mode="after")
    def _cost_fits_label_space(self) -> TrialConfig:
        try:  # a cost file's class names must be those of the dataset (trainers.costs)
            check_cost_for_label_space(self.method.cost, self.label_space)
        except ValueError as e:
            raise ValueError(f"@method.cost:{e}") from None
        return self

    def identity(self) -> dict[str, Any]:
        """The fields that define the experiment (no paths, no placement)."""
        data = self.model_dump(mode="json")
        for key in self.PLACEMENT_FIELDS:
            data.pop(key, None)
        data["dataset"].pop("root", None)
        data["dataset"].pop("cache_dir", None)
        data["dataset"].pop("cache", None)
        data["method"].update(cost_identity(self.method.cost))  # a cost file's sha256; {} otherwise
        return data

    @property
    def trial_id(self) -> str:
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def label_space(self):
        from trainers.data.registry import DATASETS

        space = DATASETS[self.dataset.name].label_space
        if space is None:  # synthetic: the preset's
            return LABEL_SPACES["affectnet" if self.dataset.preset == "affectnet_like" else "affwild2"]
        return space


def describe_validation_error(err: ValidationError, source: str = "", lines: dict[str, int] | None = None,
                              prefix: str = "") -> str:
    """One line naming the key path of TrialConfig (and file:line when known) for the first error."""
    loc, msg = explain_error(err.errors()[0], TrialConfig, show_key=True)
    path = f"{prefix}{'.'.join(loc)}" if loc else prefix.rstrip(".")
    where = f"{source}:{lines[path]}" if lines and path in lines else source
    return f"{where + ': ' if where else ''}{path}: {msg}"


def load_trial_config(path: str | Path) -> TrialConfig:
    """Read and validate a trial YAML; raise ConfigError with one line naming file, line and key."""
    path = Path(path)
    data, text = read_yaml_mapping(path, "trial settings")
    try:
        return TrialConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(describe_validation_error(e, str(path), yaml_key_lines(text))) from None
