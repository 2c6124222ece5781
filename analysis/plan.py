"""The sweep YAML's ``analysis:`` block: which hypotheses are confirmed, and how (docs/methods.md §7).

A *selector* picks a condition by axis values, with dotted keys as in the grid
(``{"method.cost": "circumplex"}``; a nested mapping ``{"method": {"cost": "circumplex"}}`` is
flattened to the same thing). A *contrast* is a pair of selectors ``[A, B]``; its effect is
``Δ = A − B`` over matched seeds, in the order written.

A **hypothesis** is one contrast, ONE metric, an optional stratum (a selector on the axes the
contrast does not vary, e.g. ``{dataset.preset: affectnet_like}``) and a direction (``two-sided``
unless ``greater`` — Δ > 0 — or ``less`` is declared). Its role is either

- ``primary``: a pre-planned single hypothesis, decided at its own ``alpha``; or
- a member of a named **family** under ``families:``: Holm step-down within that family.

```yaml
analysis:
  baseline: {method.cost: none}                    # reference of the descriptive tables
  primary:
    - {contrast: [{method.cost: uniform}, {method.cost: circumplex}], metric: p_mtl}
  families:
    error_structure:                               # shorthand: metrics x strata expand in the family
      - contrast: [{method.cost: circumplex}, {method.cost: uniform}]
        metrics: [error_severity, quadrant_keep]
  exploratory: [p_mtl, expr_f1, error_severity, quadrant_keep]
  looks: [8, 12, 16]                               # optional: a sequential design (seed counts per look)
  spending: pocock                                 # its alpha-spending rule (default obrien_fleming)
```

``looks`` makes the design group-sequential (``analysis.sequential``; ``affsweep run --until-decided``
adds seeds only to the hypotheses still undecided after a look). The plan hash covers ``looks`` and
``spending``; a plan without looks hashes as it did before they existed.

Everything else the report computes is **exploratory**: shown with p labelled as such, never
bolded, never called significant. The former ``primary: [[A, B]]`` / ``secondary:`` / ``metrics:``
spelling (every metric of every contrast) is refused with a line saying how to rewrite it.

Importable with pydantic alone: the orchestrator validates the YAML block with it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["DEFAULT_METRICS", "AnalysisPlan", "Hypothesis", "HypothesisSpec", "flatten_selector", "selector_label"]

DEFAULT_METRICS: tuple[str, ...] = ("p_mtl", "expr_f1", "error_severity", "quadrant_keep")
Direction = Literal["two-sided", "greater", "less"]
Spending = Literal["obrien_fleming", "pocock"]  # analysis.sequential.SPENDING_RULES

OLD_FORM = ("the primary/secondary/metrics form is gone (it tested every metric of every contrast); write "
            "primary: [{contrast: [A, B], metric: M}] for each pre-planned hypothesis, "
            "families: {NAME: [{contrast: [A, B], metrics: [M1, M2]}]} for Holm families, and "
            "exploratory: [metrics] for the rest (README 'Analysis plan')")


# axes whose VALUES may be mappings: a cost {source, control} (trainers.costs) is one value, not two keys
MAPPING_VALUED_AXES: tuple[str, ...] = ("method.cost",)


def flatten_selector(selector: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"method": {"cost": "none"}}`` -> ``{"method.cost": "none"}``; dotted keys pass through; a
    mapping under a ``MAPPING_VALUED_AXES`` key (``method.cost: {source: ..., control: uniform}``)
    is that axis' value."""
    flat: dict[str, Any] = {}
    for key, value in selector.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"selector keys must be non-empty strings, got {key!r}")
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in MAPPING_VALUED_AXES:
            if not value:
                raise ValueError(f"selector key {dotted!r} has an empty mapping as its value")
            flat.update(flatten_selector(value, prefix=f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def selector_label(selector: dict[str, Any]) -> str:
    """A short human label: ``method.cost=uniform, method.lam=1.0``; a cost mapping reads as its
    label, ``method.cost=uniform(file:x.json)``."""
    return ", ".join(f"{k}={_value_label(k, v)}" for k, v in selector.items()) or "(all)"


def _value_label(key: str, value: Any) -> Any:
    if key in MAPPING_VALUED_AXES and isinstance(value, dict):
        from trainers.costs import cost_key  # unchecked names: numpy + pydantic, no file read

        try:
            return cost_key(value)
        except ValueError:
            return value
    return value


def _selector(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: a selector must be a mapping such as {{method.cost: none}}, got {value!r}")
    flat = flatten_selector(value)
    if not flat:
        raise ValueError(f"{where}: a selector must name at least one axis")
    return flat


@dataclass(frozen=True)
class Hypothesis:
    """One declared hypothesis after the shorthands are expanded."""

    a: dict[str, Any]
    b: dict[str, Any]
    metric: str
    stratum: dict[str, Any] | None
    direction: str
    family: str | None  # None: a primary
    where: str  # the YAML key path it was declared at (analysis.primary.0, analysis.families.x.1)

    @property
    def role(self) -> str:
        return "primary" if self.family is None else f"family {self.family}"

    @property
    def contrast_label(self) -> str:
        return f"{selector_label(self.a)} vs {selector_label(self.b)}"

    @property
    def label(self) -> str:
        stratum = f" [{selector_label(self.stratum)}]" if self.stratum else ""
        arrow = {"greater": " (A > B)", "less": " (A < B)"}.get(self.direction, "")
        return f"{self.contrast_label}{stratum} on {self.metric}{arrow}"


class HypothesisSpec(BaseModel):
    """One entry of ``primary:`` or of a family: a contrast on one metric (or, in a family, several)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    contrast: tuple[dict[str, Any], dict[str, Any]]
    metric: str | None = None
    metrics: list[str] | None = None  # shorthand (families only): one hypothesis per metric
    stratum: dict[str, Any] | None = None
    strata: list[dict[str, Any]] | None = None  # shorthand (families only): one hypothesis per stratum
    direction: Direction = "two-sided"

    @field_validator("contrast", mode="before")
    @classmethod
    def _pair(cls, value):
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise ValueError(f"a contrast is a pair [A, B] of selectors, got {value!r}")
        a, b = (_selector(side, f"contrast.{j}") for j, side in enumerate(value))
        if a == b:
            raise ValueError(f"both sides select the same condition {a}")
        return a, b

    @field_validator("stratum", mode="before")
    @classmethod
    def _stratum(cls, value):
        return None if value is None else _selector(value, "stratum")

    @field_validator("strata", mode="before")
    @classmethod
    def _strata(cls, value):
        if value is None:
            return None
        if not isinstance(value, list) or not value:
            raise ValueError("strata: a non-empty list of selectors")
        return [_selector(s, f"strata.{i}") for i, s in enumerate(value)]

    @model_validator(mode="after")
    def _one_way_to_say_it(self) -> HypothesisSpec:
        if (self.metric is None) == (self.metrics is None):
            raise ValueError("name the metric: metric: M (or, in a family, metrics: [M1, M2])")
        if self.metrics is not None and (not self.metrics or len(set(self.metrics)) != len(self.metrics)):
            raise ValueError(f"metrics: a non-empty list without repeats, got {self.metrics}")
        if self.stratum is not None and self.strata is not None:
            raise ValueError("give stratum: or strata:, not both")
        return self

    def expand(self, family: str | None, where: str) -> list[Hypothesis]:
        a, b = self.contrast
        metrics = self.metrics if self.metrics is not None else [self.metric]
        strata = self.strata if self.strata is not None else [self.stratum]
        return [Hypothesis(dict(a), dict(b), m, None if s is None else dict(s), self.direction, family, where)
                for s in strata for m in metrics]


def _entries(value, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list of {{contrast: [A, B], metric: M}} entries, got {value!r}")
    for i, entry in enumerate(value):
        if isinstance(entry, list | tuple):  # the former [A, B] pair
            raise ValueError(f"{where}.{i}: {OLD_FORM}")
    return value


class AnalysisPlan(BaseModel):
    """Validated ``analysis:`` block of a sweep YAML (docs/design.md §4, docs/methods.md §7)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    baseline: dict[str, Any] | None = None
    primary: list[HypothesisSpec] = Field(default_factory=list)
    families: dict[str, list[HypothesisSpec]] = Field(default_factory=dict)
    exploratory: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    alpha: float = Field(default=0.05, gt=0, lt=1)
    n_resamples: int = Field(default=10_000, ge=1)
    seed: int = 0
    # study §6.3 / docs/methods.md §7: the combined class-isolation test is one-sided (rho > 0)
    isolation_direction: Direction = "greater"
    # a group-sequential design (docs/methods.md §16): seed counts at which the hypotheses are looked at
    looks: list[int] | None = None
    spending: Spending = "obrien_fleming"

    @model_validator(mode="before")
    @classmethod
    def _refuse_old_form(cls, data):
        if isinstance(data, dict):
            for key in ("secondary", "metrics"):
                if key in data:
                    raise ValueError(f"@{key}:{OLD_FORM}")
        return data

    @field_validator("baseline", mode="before")
    @classmethod
    def _flatten_baseline(cls, value):
        return None if value is None else _selector(value, "baseline")

    @field_validator("primary", mode="before")
    @classmethod
    def _primary_entries(cls, value):
        entries = _entries(value, "primary")
        for i, entry in enumerate(entries):
            if isinstance(entry, dict) and (entry.get("metrics") is not None or entry.get("strata") is not None):
                raise ValueError(f"primary.{i}: a primary is ONE metric in one stratum, each at its own alpha; "
                                 f"put several metrics or strata in a family (Holm) instead")
        return entries

    @field_validator("families", mode="before")
    @classmethod
    def _family_entries(cls, value):
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError(f"families: a mapping NAME: [hypotheses], got {value!r}")
        for name, entries in value.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"families: family names must be non-empty strings, got {name!r}")
            if not entries:
                raise ValueError(f"families.{name}: the family is named but empty (declare its hypotheses "
                                 f"or remove it)")
            _entries(entries, f"families.{name}")
        return value

    @field_validator("looks")
    @classmethod
    def _increasing_looks(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or value[0] < 1 or any(b <= a for a, b in zip(value, value[1:]))):
            raise ValueError(f"looks: strictly increasing positive seed counts such as [8, 12, 16], got {value}")
        return value

    @field_validator("exploratory")
    @classmethod
    def _metrics_unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"exploratory: duplicated names in {value}")
        return value

    @model_validator(mode="after")
    def _spending_needs_looks(self) -> AnalysisPlan:
        if self.looks is None and "spending" in self.model_fields_set:
            raise ValueError("@spending:a spending rule needs looks: [n1, n2, ...] (the seed counts of a "
                             "sequential design); without looks the design is fixed-n")
        return self

    @model_validator(mode="after")
    def _distinct_hypotheses(self) -> AnalysisPlan:
        seen: dict[tuple, str] = {}
        for h in self.hypotheses():
            key = (json.dumps([h.a, h.b, h.stratum], sort_keys=True, default=str), h.metric)
            if key in seen:
                raise ValueError(f"@{h.where.removeprefix('analysis.')}:declares {h.label} again "
                                 f"(already at {seen[key]}); a hypothesis is tested once")
            seen[key] = h.where
        return self

    def hypotheses(self) -> tuple[Hypothesis, ...]:
        """Every declared hypothesis, shorthands expanded: the primaries, then each family in order."""
        out = []
        for i, spec in enumerate(self.primary):
            out += spec.expand(None, f"analysis.primary.{i}")
        for name, specs in self.families.items():
            for i, spec in enumerate(specs):
                out += spec.expand(name, f"analysis.families.{name}.{i}")
        return tuple(out)

    def family(self, name: str) -> tuple[Hypothesis, ...]:
        return tuple(h for h in self.hypotheses() if h.family == name)

    @property
    def metrics(self) -> list[str]:
        """Every metric the plan names (hypotheses first, then the exploratory ones)."""
        return list(dict.fromkeys([*(h.metric for h in self.hypotheses()), *self.exploratory]))

    def canonical_json(self) -> str:
        # without looks the spending rule means nothing: leave both out, so existing plans keep their hash
        exclude = {"looks", "spending"} if self.looks is None else None
        return json.dumps(self.model_dump(mode="json", exclude=exclude), sort_keys=True, separators=(",", ":"),
                          default=str)

    def plan_hash(self, length: int = 12) -> str:
        """Short sha256 of the canonical JSON: the same plan always hashes the same."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:length]
