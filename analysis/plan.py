"""The sweep YAML's ``analysis:`` block: which contrasts are tested, and how.

A *selector* picks a condition by axis values, with dotted keys as in the grid
(``{"method.cost": "circumplex"}``; a nested mapping ``{"method": {"cost": "circumplex"}}`` is
flattened to the same thing). A *contrast* is a pair of selectors ``[A, B]``; its effect is
``A - B`` over matched seeds.

- ``primary`` contrasts are pre-planned single hypotheses, each reported at its own p;
- ``secondary`` contrasts form one Holm family (over contrasts x strata x metrics).

Importable with pydantic alone: the orchestrator validates the YAML block with it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["DEFAULT_METRICS", "AnalysisPlan", "flatten_selector", "selector_label"]

DEFAULT_METRICS: tuple[str, ...] = ("p_mtl", "expr_f1", "error_severity", "quadrant_keep")


def flatten_selector(selector: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"method": {"cost": "none"}}`` -> ``{"method.cost": "none"}``; dotted keys pass through."""
    flat: dict[str, Any] = {}
    for key, value in selector.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"selector keys must be non-empty strings, got {key!r}")
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            if not value:
                raise ValueError(f"selector key {dotted!r} has an empty mapping as its value")
            flat.update(flatten_selector(value, prefix=f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def selector_label(selector: dict[str, Any]) -> str:
    """A short human label: ``method.cost=uniform, method.lam=1.0``."""
    return ", ".join(f"{k}={v}" for k, v in selector.items()) or "(all)"


def _selector(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: a selector must be a mapping such as {{method.cost: none}}, got {value!r}")
    flat = flatten_selector(value)
    if not flat:
        raise ValueError(f"{where}: a selector must name at least one axis")
    return flat


class AnalysisPlan(BaseModel):
    """Validated ``analysis:`` block of a sweep YAML (DESIGN "Sweep YAML")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    baseline: dict[str, Any] | None = None
    primary: list[tuple[dict[str, Any], dict[str, Any]]] = Field(default_factory=list)
    secondary: list[tuple[dict[str, Any], dict[str, Any]]] = Field(default_factory=list)
    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    alpha: float = Field(default=0.05, gt=0, lt=1)
    n_resamples: int = Field(default=10_000, ge=1)
    seed: int = 0

    @field_validator("baseline", mode="before")
    @classmethod
    def _flatten_baseline(cls, value):
        return None if value is None else _selector(value, "baseline")

    @field_validator("primary", "secondary", mode="before")
    @classmethod
    def _flatten_contrasts(cls, value, info):
        if value is None:
            return []
        if not isinstance(value, list | tuple):
            raise ValueError(f"{info.field_name}: expected a list of [A, B] selector pairs, got {value!r}")
        contrasts = []
        for i, pair in enumerate(value):
            where = f"{info.field_name}.{i}"
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise ValueError(f"{where}: a contrast is a pair [A, B] of selectors, got {pair!r}")
            a, b = (_selector(side, f"{where}.{j}") for j, side in enumerate(pair))
            if a == b:
                raise ValueError(f"{where}: both sides select the same condition {a}")
            contrasts.append((a, b))
        return contrasts

    @field_validator("metrics")
    @classmethod
    def _metrics_nonempty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("metrics: name at least one metric")
        if len(set(value)) != len(value):
            raise ValueError(f"metrics: duplicated names in {value}")
        return value

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), default=str)

    def plan_hash(self, length: int = 12) -> str:
        """Short sha256 of the canonical JSON: the same plan always hashes the same."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:length]
