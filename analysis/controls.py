"""``controls: auto``: every structured cost of a sweep with its own controls (docs/methods.md §14).

A sweep-level ``controls: auto`` (or a list, ``[permuted, uniform]``, or a mapping
``{against: [...], metric: M}``) does, for every ``method.cost`` the sweep writes (grid axis values,
``base``, ``include`` points) that is a *source with control none* (not ``none``):

- **points** (:func:`expand_points`): every such grid point is followed by a copy of itself per
  control, ``method.cost: {source: S, control: C}`` in the form ``trainers.costs`` stores it, so for
  the circumplex the copies are today's ``permuted`` / ``uniform`` and their trial_ids are those of a
  hand-written grid. ``exclude`` applies to the copies too (and a control excluded outright gets no
  hypotheses);
- **hypotheses** (:func:`with_control_hypotheses`), added to the ``analysis:`` block *before* it is
  validated — so they are declared (confirmatory), covered by the plan hash and checked by the dry
  run exactly as if written by hand:

  - the primary ``S vs uniform(S)`` on ``metric`` (default ``p_mtl``, docs/methods.md §7's score; the
    study's own primary for the circumplex) — ``S vs permuted(S)`` when ``uniform`` is not among the
    controls;
  - the family ``"<S> vs controls"``: ``S`` vs each control on the error-structure metrics
    ``error_severity`` and ``quadrant_keep`` (under the dataset's true circumplex, docs/methods.md §6) and,
    for a source other than the circumplex (``trainers.costs.TRUE_CIRCUMPLEX_SOURCES``), also
    ``error_severity@source`` (scored under the unperturbed source for ``S`` and its controls alike):
    did errors move nearer by the user's own cost, and is that nearer in affect too?

  With several strata (grid axes other than ``seed`` and ``method.cost``), one primary per stratum
  and the family over ``strata:``. A hypothesis already declared (same two conditions in either
  order, same metric) is not added again; a declared family of the same name is kept as written.

Pure (pydantic; ``trainers.costs``' unchecked cost names imported when used): the orchestrator
(expansion, dry run) and the analysis (``analysis.results.plan_of``) derive the same plan from the
same YAML.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

__all__ = ["COST_AXIS", "ERROR_METRICS", "Controls", "control_sources", "expand_points", "parse_controls",
           "with_control_hypotheses"]

COST_AXIS = "method.cost"
CONTROL_NAMES = ("permuted", "uniform")
ERROR_METRICS = ("error_severity", "quadrant_keep")
SOURCE_METRICS = ("error_severity@source",)


class Controls(BaseModel):
    """The validated ``controls:`` value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    against: tuple[str, ...] = CONTROL_NAMES
    metric: str = "p_mtl"  # the primary's metric: docs/methods.md §7's score

    @field_validator("against", mode="before")
    @classmethod
    def _controls(cls, value):
        if value == "auto":
            return CONTROL_NAMES
        if not isinstance(value, list | tuple) or not value:
            raise ValueError(f"against: auto or a non-empty list of {', '.join(CONTROL_NAMES)}, got {value!r}")
        for v in value:
            if v not in CONTROL_NAMES:
                import difflib

                close = difflib.get_close_matches(str(v), CONTROL_NAMES, n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else f" (choose from {', '.join(CONTROL_NAMES)})"
                raise ValueError(f"unknown control {v!r}{hint}")
        if len(set(value)) != len(value):
            raise ValueError(f"controls listed twice: {list(value)}")
        return tuple(value)


def parse_controls(value: Any) -> Controls | None:
    """``auto`` / a list of controls / ``{against, metric}`` -> Controls; None / ``none`` -> None."""
    if value is None or value is False or value == "none":
        return None
    if value == "auto" or value is True:
        return Controls()
    if isinstance(value, list | tuple):
        return Controls(against=list(value))
    if isinstance(value, dict):
        return Controls.model_validate(value)
    raise ValueError(f"controls: auto, a list such as [permuted, uniform], or {{against: [...], metric: M}}; "
                     f"got {value!r}")


def _flat(mapping: Any) -> dict[str, Any]:
    from analysis.plan import flatten_selector

    return flatten_selector(mapping) if isinstance(mapping, dict) and mapping else {}


def _base_cost(base: Any) -> Any:
    method = base.get("method") if isinstance(base, dict) else None
    return method.get("cost") if isinstance(method, dict) else None


def _structured(value: Any) -> str | None:
    """The source of a cost value that is a source with control none (not ``none``), else None."""
    from trainers.costs import cost_pair

    try:
        pair = cost_pair(value)
    except ValueError:
        return None
    return pair[0] if pair is not None and pair[1] == "none" else None


def control_sources(spec: dict) -> list[str]:
    """The structured sources a sweep writes (base, grid axis, include points), in order, once each."""
    grid = _flat(spec.get("grid"))
    values = [_base_cost(spec.get("base"))]
    values += list(grid.get(COST_AXIS) or []) if isinstance(grid.get(COST_AXIS), list) else []
    values += [_flat(p).get(COST_AXIS) for p in spec.get("include") or [] if isinstance(p, dict)]
    return list(dict.fromkeys(s for s in map(_structured, values) if s is not None))


def expand_points(points: list[tuple[dict, str]], base: dict, controls: Controls | None,
                  exclude: list[dict] = (), same=None) -> list[tuple[dict, str]]:
    """Each (point, origin) whose cost (the point's, else ``base``'s) is structured, followed by its
    controls (origin ``controls``); ``exclude`` selectors (``same(key, a, b)`` comparing two values
    of an axis) drop copies they match."""
    from trainers.costs import stored_cost

    if controls is None:
        return points
    same = same or (lambda key, a, b: a == b)
    out = []
    for point, origin in points:
        out.append((point, origin))
        source = _structured(point[COST_AXIS] if COST_AXIS in point else _base_cost(base))
        if source is None:
            continue
        for control in controls.against:
            copy = {**point, COST_AXIS: stored_cost(source, control)}
            if any(all(k in copy and same(k, copy[k], v) for k, v in sel.items()) for sel in exclude):
                continue
            out.append((copy, "controls"))
    return out


def _strata(grid: dict[str, Any]) -> list[dict[str, Any] | None]:
    keys = [k for k, v in grid.items() if k not in ("seed", COST_AXIS) and isinstance(v, list) and len(v) > 1]
    if not keys:
        return [None]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _key(selector: dict) -> str:
    from trainers.costs import cost_key

    flat = _flat(selector)
    if COST_AXIS in flat:
        flat[COST_AXIS] = cost_key(flat[COST_AXIS])
    return json.dumps(flat, sort_keys=True, default=str)


def with_control_hypotheses(spec: dict) -> dict | None:
    """The sweep's raw ``analysis:`` mapping with the hypotheses of its ``controls:`` added (the
    mapping unchanged without ``controls``). Raises ValueError for a bad ``controls:`` value."""
    from trainers.costs import cost_key, stored_cost

    analysis = spec.get("analysis")
    controls = parse_controls(spec.get("controls"))
    if controls is None:
        return analysis
    analysis = dict(analysis or {})
    primary = list(analysis.get("primary") or [])
    families = dict(analysis.get("families") or {})

    declared = set()
    for entry in [*primary, *(e for es in families.values() if isinstance(es, list) for e in es)]:
        if isinstance(entry, dict) and isinstance(entry.get("contrast"), list | tuple) and len(entry["contrast"]) == 2:
            pair = frozenset(_key(s) for s in entry["contrast"] if isinstance(s, dict))
            for m in entry.get("metrics") or [entry.get("metric")]:
                declared.add((pair, m))

    def new(a: dict, b: dict, metric: str) -> bool:
        return (frozenset((_key(a), _key(b))), metric) not in declared

    # a control excluded outright (exclude: [{method.cost: uniform}]) has no trials to test against
    gone = {_key(e) for e in spec.get("exclude") or [] if isinstance(e, dict) and list(_flat(e)) == [COST_AXIS]}
    strata = _strata(_flat(spec.get("grid")))
    for source in control_sources(spec):
        kept = [c for c in controls.against if _key({COST_AXIS: stored_cost(source, c)}) not in gone]
        if not kept:
            continue
        src = {COST_AXIS: stored_cost(source)}
        main = "uniform" if "uniform" in kept else kept[0]
        ctrl = {COST_AXIS: stored_cost(source, main)}
        if new(src, ctrl, controls.metric):
            primary += [{"contrast": [src, ctrl], "metric": controls.metric, **({"stratum": s} if s else {})}
                        for s in strata]
        name = f"{cost_key(source)} vs controls"
        if name in families:
            continue
        from trainers.costs import TRUE_CIRCUMPLEX_SOURCES

        metrics = [*ERROR_METRICS, *(() if source in TRUE_CIRCUMPLEX_SOURCES else SOURCE_METRICS)]
        members = []
        for control in kept:
            other = {COST_AXIS: stored_cost(source, control)}
            todo = [m for m in metrics if new(src, other, m)]
            if todo:
                members.append({"contrast": [src, other], "metrics": todo,
                                 **({"strata": strata} if strata != [None] else {})})
        if members:
            families[name] = members
    analysis["primary"], analysis["families"] = primary, families
    return analysis

