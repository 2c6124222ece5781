"""The sweep YAML as a typed, validated spec (docs/design.md §4).

```yaml
name: demo                          # the sweep directory is <storage>/<name>/
base: {...}                         # TrialConfig defaults for every grid point
grid:                               # Cartesian product; dotted keys address nested TrialConfig fields
  seed: [0, 1, 2]                   #   (a nested mapping ``method: {cost: [...]}`` means the same)
  method.cost: [none, circumplex]
include: [{method.cost: uniform, seed: 0}]   # extra grid points (base + the point's keys)
exclude: [{method.cost: none, seed: 2}]      # points or partial selectors removed from the product
resources: {cpu: 1, gpu: 0.25}      # per trial; a fractional gpu packs trials on one GPU
max_concurrent: 4                   # at most this many trials at once (default: as resources allow)
pack: {size: 4, by: [seed]}         # optional: up to 4 grid points that differ only in `by` train in one
                                    #   process (``pack: 4`` = by seed); placement only, trial_ids unchanged
failure: {max_retries: 2}           # Ray Tune FailureConfig(max_failures=...)
tracking: {uri: local, experiment: affsweep}  # local: an MLflow server on 127.0.0.1 for the sweep
analysis: {...}                     # analysis.plan.AnalysisPlan
controls: auto                      # every structured cost + its permuted and uniform controls,
                                    #   with their hypotheses added to analysis (analysis.controls)
storage: runs                       # relative paths are relative to the working directory
```

As in a GitHub Actions matrix, ``exclude`` filters the Cartesian product and ``include`` points are
added afterwards, so an explicitly included point is never excluded.

Every problem is reported as ONE line ``FILE:LINE: key.path: what is wrong (did you mean ...?)``
(``ConfigError``) before anything is started, created or logged: the spec's own keys, every grid
key (checked against the TrialConfig schema), and every expanded TrialConfig (so a bad grid value
is named with its grid key and value) — see ``orchestrator.expand.load_sweep``. The wording, the
YAML key lines and the pydantic-error translation are ``trainers.config_errors``'.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from analysis.controls import Controls, parse_controls, with_control_hypotheses
from analysis.dotted import flatten_dotted
from analysis.plan import AnalysisPlan, flatten_selector
from trainers.config import TrialConfig
from trainers.config_errors import (
    ConfigError,
    YamlSource,
    explain_error,
    literal_message,
    read_yaml_mapping,
    unknown_message,
)

__all__ = ["ConfigError", "Failure", "Pack", "Resources", "SweepSpec", "Tracking", "YamlSource", "check_dotted_key",
           "read_spec"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resources(_Strict):
    """Per-trial resources, as ``tune.with_resources`` takes them."""

    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)

    @field_validator("gpu")
    @classmethod
    def _ray_fractions(cls, gpu: float) -> float:
        if gpu > 1 and gpu != int(gpu):
            raise ValueError(f"a fraction of a GPU must be below 1 (Ray packs trials on one GPU), got {gpu}")
        return gpu


class Failure(_Strict):
    max_retries: int = Field(2, ge=0)  # Ray Tune FailureConfig(max_failures=max_retries)


class Pack(_Strict):
    """Packed trials (``orchestrator.packed_trainable``): grid points that differ only in the ``by``
    axes -- so they share dataset, backbone and everything else -- train up to ``size`` at a time in
    one Ray trial (one process, one copy of the data). Placement only: trial_ids do not change."""

    size: int = Field(ge=1, strict=True)
    by: list[str] = Field(default_factory=lambda: ["seed"], min_length=1)

    @field_validator("by")
    @classmethod
    def _packable_axes(cls, by: list[str]) -> list[str]:
        for i, key in enumerate(by):
            if key.split(".")[0] in SHARED_BY_PACK:
                raise ValueError(f"@{i}:{key}: packed trials share one {key.split('.')[0]}: "
                                 "pack along other axes (seed, method.cost, ...)")
            if key in by[:i]:
                raise ValueError(f"@{i}:{key}: named twice")
        return by


SHARED_BY_PACK = ("dataset", "backbone", "device")  # trainers.packed.check_packable


class Tracking(_Strict):
    uri: str = Field("local", min_length=1)  # "local" or any MLflow tracking URI
    experiment: str = Field("affsweep", min_length=1)


class SweepSpec(_Strict):
    name: str
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]]
    include: list[dict[str, Any]] = Field(default_factory=list)
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources)
    max_concurrent: int | None = Field(None, ge=1)
    failure: Failure = Field(default_factory=Failure)
    tracking: Tracking = Field(default_factory=Tracking)
    analysis: AnalysisPlan | None = None
    controls: Controls | None = None  # auto | [permuted, uniform] | {against, metric}: analysis.controls
    storage: str = "runs"
    pack: Pack | None = None

    @model_validator(mode="before")
    @classmethod
    def _control_hypotheses(cls, data):
        """``controls:`` adds hypotheses to ``analysis:`` before it is validated (analysis.controls)."""
        if isinstance(data, dict) and data.get("controls") not in (None, False, "none"):
            try:
                data = {**data, "controls": parse_controls(data["controls"]),
                        "analysis": with_control_hypotheses(data)}
            except ValueError as e:
                msg = e.errors()[0]["msg"].removeprefix("Value error, ") if isinstance(e, ValidationError) else str(e)
                raise ValueError(f"@controls:{msg}") from None
        return data

    @field_validator("name")
    @classmethod
    def _directory_name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
            raise ValueError(f"{name!r}: use letters, digits, '.', '_' and '-' (it names the sweep directory)")
        return name

    @field_validator("base", mode="before")
    @classmethod
    def _base_mapping(cls, value):
        return {} if value is None else value

    @field_validator("grid", mode="before")
    @classmethod
    def _flatten_grid(cls, value):
        if value is None:
            return {}
        if not isinstance(value, dict):
            return value  # pydantic names the type error
        flat: dict[str, Any] = {}
        for key, axis in flatten_dotted(value).items():
            if not isinstance(axis, list):
                # "@key:" puts the axis into the key path (as trainers.config does)
                raise ValueError(f"@{key}:expected a list of values, got {axis!r} (write [{axis}] for one value)")
            if not axis:
                raise ValueError(f"@{key}:empty list of values")
            flat[key] = axis
        return flat

    @field_validator("include", "exclude", mode="before")
    @classmethod
    def _flatten_points(cls, value, info):
        if value is None:
            return []
        if not isinstance(value, list):
            return value
        points = []
        for i, point in enumerate(value):
            if not isinstance(point, dict) or not point:
                raise ValueError(f"@{i}:expected a mapping of dotted keys to values, e.g. {{seed: 0}}, got {point!r}")
            points.append(flatten_selector(point))  # a cost {source, control} stays one value
        return points

    @field_validator("pack", mode="before")
    @classmethod
    def _pack_size(cls, value):
        if isinstance(value, int) and not isinstance(value, bool):
            return {"size": value}
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"expected trials per pack (pack: 4) or {{size: 4, by: [seed]}}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _nonempty_grid(self) -> SweepSpec:
        if not self.grid:
            raise ValueError("@grid:empty grid (name at least one axis, e.g. seed: [0, 1, 2])")
        return self

    @model_validator(mode="after")
    def _pack_along_axes(self) -> SweepSpec:
        if self.pack is None:
            return self
        axes = list(dict.fromkeys([*self.grid, *(k for p in self.include for k in p)]))
        for i, key in enumerate(self.pack.by):
            if key not in axes:
                where = "pack" if "by" not in self.pack.model_fields_set else f"pack.by.{i}"
                raise ValueError(f"@{where}:{unknown_message(key, axes, what='axis')}: packed trials differ only in "
                                 "axes of the grid (write pack: {size: K, by: [...]})")
        return self

    def sweep_dir(self, storage: str | Path | None = None) -> Path:
        """``<storage>/<name>/``, absolute (Ray Tune's storage_path must be)."""
        return (Path(storage if storage is not None else self.storage).expanduser() / self.name).resolve()


# --- reading ------------------------------------------------------------------------------------

def read_spec(path: str | Path) -> tuple[SweepSpec, YamlSource]:
    """Parse and validate the spec's own keys (not yet the grid points: see ``expand.load_sweep``)."""
    path = Path(path)
    data, text = read_yaml_mapping(path, "name, base, grid, ...")
    src = YamlSource(path, text)
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as e:
        raise describe_spec_error(e, src) from None
    for key in spec.grid:
        check_dotted_key(key, src, f"grid.{key}")
    for i, point in enumerate(spec.include):
        for key in point:
            check_dotted_key(key, src, f"include.{i}.{key}")
    return spec, src


def describe_spec_error(err: ValidationError, src: YamlSource) -> ConfigError:
    """One line for the first problem in the spec's own keys (file:line, key path, suggestion)."""
    errors = err.errors()
    # an unknown key explains a "missing" one (gird: -> grid missing): report it first
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc, msg = explain_error(first, SweepSpec)
    if loc == ["grid", "grid"]:  # "@grid:" of a grid validator names the grid itself
        loc = ["grid"]
    if first["type"] == "missing":
        msg = "missing" + {"name": " (the sweep's name; its directory is <storage>/<name>/)",
                           "grid": " (name at least one axis, e.g. seed: [0, 1, 2])"}.get(".".join(loc), "")
    elif first["type"] == "literal_error":
        msg = literal_message(first)
    # AnalysisPlan phrases its own errors as "primary.0: ..."; fold that path into ours
    m = re.match(r"^([A-Za-z_][\w]*(?:\.[\w-]+)*): (.*)$", msg)
    if m and loc and m.group(1).split(".")[0] == loc[-1]:
        loc, msg = [*loc[:-1], *m.group(1).split(".")], m.group(2)
    return src.error(".".join(loc), msg)


# --- dotted keys against the TrialConfig schema -----------------------------------------------------

def check_dotted_key(key: str, src: YamlSource, path: str) -> None:
    """Raise ConfigError unless ``key`` names a TrialConfig field (or a method option, or a key under a
    free-form mapping such as ``backbone.kwargs``). Values are checked later, per expanded config."""
    from trainers.config import MethodConfig
    from trainers.methods import METHOD_REGISTRY

    model: type[BaseModel] | None = TrialConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        if model is None:  # below a free-form dict field: anything goes
            return
        fields = model.model_fields
        if part in fields:
            ann = fields[part].annotation
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            if model is None and i < len(parts) - 1 and not _is_mapping(ann):
                raise src.error(path, f"{'.'.join(parts[:i + 1])} is a value, not a mapping: "
                                      f"no key {'.'.join(parts[i + 1:])!r} below it")
            continue
        if model is MethodConfig:  # extra keys are method options; the config checks them per method
            options = {opt for cls in METHOD_REGISTRY.values() for opt in cls.defaults}
            if part in options and i == len(parts) - 1:
                return
            raise src.error(path, unknown_message(part, [*fields, *sorted(options)]))
        raise src.error(path, unknown_message(part, list(fields)))


def _is_mapping(annotation) -> bool:
    origin = getattr(annotation, "__origin__", None)
    return origin is dict or annotation is dict
