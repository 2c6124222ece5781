"""Grid points -> fully resolved TrialConfigs, in a deterministic order (docs/design.md §2).

Order: the Cartesian product of the grid in the YAML's key order (the last key varies fastest),
minus ``exclude``, then the ``include`` points; points that resolve to the same TrialConfig (same
content-addressed ``trial_id``) collapse into the first. Seeds are matched by construction: the
trainer derives the data order from the seed alone (``data_order_hash``), so every condition that
shares a seed sees the same samples in the same order.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from analysis.controls import expand_points
from analysis.dotted import get_dotted
from analysis.pairing import canonical_value
from analysis.plan import AnalysisPlan
from orchestrator.spec import SweepSpec, read_spec
from trainers.config import TrialConfig, describe_validation_error
from trainers.config_errors import ConfigError, YamlSource, literal_message, unknown_message

__all__ = ["SweepPlan", "Trial", "condition_label", "expand", "load_sweep", "same_value", "show_value"]


@dataclass(frozen=True)
class Trial:
    trial_id: str
    config: TrialConfig
    seed: int
    axes: dict[str, Any]  # every axis but seed -> its resolved value (the condition)

    @property
    def condition(self) -> str:
        return condition_label(self.axes)

    @property
    def condition_id(self) -> str:
        return condition_id(self.axes)


def condition_label(axes: dict[str, Any]) -> str:
    return ", ".join(f"{k}={show_value(v)}" for k, v in axes.items()) or "(all)"


def condition_id(axes: dict[str, Any]) -> str:
    canonical = json.dumps(axes, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@dataclass
class SweepPlan:
    spec: SweepSpec
    source: YamlSource
    trials: list[Trial]
    axes: list[str]  # column order: grid keys then include keys (seed excluded: it has its own column)
    warnings: list[str] = field(default_factory=list)
    design: list = field(default_factory=list)  # analysis.hypotheses.DesignRow per declared hypothesis
    added_by_controls: list[str] = field(default_factory=list)  # trial_ids that controls: added

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def analysis(self) -> AnalysisPlan:
        return self.spec.analysis or AnalysisPlan()

    @property
    def seeds(self) -> list[int]:
        return sorted({t.seed for t in self.trials})

    def conditions(self) -> dict[str, list[Trial]]:
        out: dict[str, list[Trial]] = {}
        for t in self.trials:
            out.setdefault(t.condition, []).append(t)
        return out


def load_sweep(path: str | Path) -> SweepPlan:
    """Read, validate and expand a sweep YAML; raise ConfigError (one line) on any problem."""
    spec, src = read_spec(path)
    return expand(spec, src)


def expand(spec: SweepSpec, src: YamlSource) -> SweepPlan:
    grid_keys = list(spec.grid)
    for i, sel in enumerate(spec.exclude):
        for key, value in sel.items():
            where = f"exclude.{i}.{key}"
            if key not in spec.grid:
                raise src.error(where, unknown_message(key, grid_keys, what="axis") if key else "empty key")
            axis = [p[key] for p, _ in expand_points([({key: v}, "grid") for v in spec.grid[key]], spec.base,
                                                     spec.controls)] if key in spec.grid else []
            if not any(_same_axis(key, value, v) for v in axis):
                raise src.error(where, f"{value!r} is not a value of the axis (values: "
                                       f"{', '.join(map(show_value, axis))}): the selector removes nothing")

    points: list[tuple[dict[str, Any], str]] = []  # (point, origin) with origin "grid" or "include.<i>"
    for combo in itertools.product(*spec.grid.values()):
        point = dict(zip(grid_keys, combo))
        if any(all(_same_axis(k, point[k], v) for k, v in sel.items()) for sel in spec.exclude):
            continue
        points.append((point, "grid"))
    points += [(dict(p), f"include.{i}") for i, p in enumerate(spec.include)]
    if not points:
        raise src.error("exclude", "removes every grid point: nothing would run")
    n_written = len(points)
    points = expand_points(points, spec.base, spec.controls, spec.exclude, _same_axis)  # controls: auto
    if spec.controls is not None and len(points) == n_written:
        raise src.error("controls", "no structured cost to control: write a method.cost source (circumplex, "
                                    "file:PATH, a registered function) in grid, base or include")

    axes = grid_keys + [k for p, _ in points for k in p if k not in grid_keys]
    axes = list(dict.fromkeys(k for k in axes if k != "seed"))
    trials: dict[str, Trial] = {}
    added = []
    for point, origin in points:
        cfg = _validate(spec, point, origin, src)
        if cfg.trial_id in trials:
            continue  # duplicate point: the same experiment runs once
        resolved = cfg.model_dump(mode="json")
        trials[cfg.trial_id] = Trial(cfg.trial_id, cfg, cfg.seed, {k: get_dotted(resolved, k) for k in axes})
        if origin == "controls":
            added.append(cfg.trial_id)
    plan = SweepPlan(spec, src, list(trials.values()), axes, added_by_controls=added)
    _check_analysis(plan)
    plan.warnings += _seed_warnings(plan)
    return plan


def _validate(spec: SweepSpec, point: dict[str, Any], origin: str, src: YamlSource) -> TrialConfig:
    data = copy.deepcopy(spec.base)
    for key, value in point.items():
        _set(data, key, copy.deepcopy(value))
    try:
        return TrialConfig.model_validate(data)
    except ValidationError as e:
        raise _describe_point_error(e, point, origin, src) from None


def _describe_point_error(err: ValidationError, point: dict, origin: str, src: YamlSource) -> ConfigError:
    first = err.errors()[0]
    whole = describe_validation_error(err)  # "loc: message" with trainers.config's wording
    loc, _, msg = whole.partition(": ")
    if first["type"] == "literal_error":
        msg = literal_message(first)
    culprit = next((k for k in point if loc == k or loc.startswith(k + ".")), None)
    if culprit is None:  # a base value (possibly invalid only together with a grid value)
        return src.error(f"base.{loc}", msg)
    value = point[culprit]
    if origin == "grid":
        path = f"grid.{culprit}"
        line = src.line(_grid_item(src, culprit, value) or path)
    else:
        path = f"{origin}.{culprit}"
        line = src.line(path)
    if loc != culprit:
        msg = f"{loc}: {msg}"
    if repr(value) not in msg:
        msg = f"value {_show_repr(value)}: {msg}"
    return ConfigError(f"{src.path}:{line}: {path}: {msg}" if line else f"{src.path}: {path}: {msg}")


def _grid_item(src: YamlSource, key: str, value: Any) -> str | None:
    """The YAML path of the list item holding ``value`` in grid axis ``key`` (for its line)."""
    import yaml

    try:
        data = yaml.safe_load(src.text) or {}
    except yaml.YAMLError:
        return None
    grid = data.get("grid", {})
    axis = grid[key] if key in grid else get_dotted(grid, key)  # dotted, or nested: grid: {method: {cost: [...]}}
    if isinstance(axis, list):
        for i, v in enumerate(axis):
            if v == value:
                return f"grid.{key}.{i}"
    return None


def _check_analysis(plan: SweepPlan) -> None:
    """The analysis plan must mean something on this grid (docs/methods.md §7), checked before anything runs:
    every selector names an axis and a value some trial has, every metric is one the trainer writes,
    and every hypothesis binds to matched pairs in exactly one stratum (analysis.hypotheses.resolve).
    Stores the design check (paired seeds, attainable p, reachability) on the plan."""
    from analysis.hypotheses import PlanError, design_check
    from analysis.results import METRIC_COLUMNS, METRIC_PREFIXES, is_metric_column

    a, src = plan.spec.analysis, plan.source
    if a is None:
        return
    values: dict[str, list[Any]] = {k: [] for k in [*plan.axes, "seed"]}
    for t in plan.trials:
        for k, v in {**t.axes, "seed": t.seed}.items():
            if not any(same_value(v, x) for x in values[k]):
                values[k].append(v)
    selectors = [("analysis.baseline", a.baseline)] if a.baseline else []
    hypotheses = a.hypotheses()
    for h in hypotheses:
        selectors += [(f"{h.where}.contrast.{j}", side) for j, side in enumerate((h.a, h.b))]
        if h.stratum:
            selectors.append((f"{h.where}.stratum", h.stratum))
    for where, sel in selectors:
        for key, value in sel.items():
            if key not in values:
                raise src.error(where, f"{key}: " + unknown_message(key, list(values), what="axis"))
            if not any(_same_axis(key, value, v) for v in values[key]):
                close = unknown_message(value, [show_value(v) for v in values[key]], what="value")
                raise src.error(where, f"{key}: {close}")

    known = [*METRIC_COLUMNS, *(f"{p}<name>" for p in METRIC_PREFIXES)]
    named = [(h.where + (".metric" if h.where + ".metric" in src.lines else ".metrics"), h.metric) for h in hypotheses]
    named += [("analysis.exploratory", m) for m in a.exploratory]
    for where, metric in named:
        prefix = next((p for p in METRIC_PREFIXES if metric.startswith(p)), None)
        if not is_metric_column(metric) or (prefix is not None and metric == prefix):
            raise src.error(where, unknown_message(metric, known, what="metric"))

    frame = trial_frame(plan)
    try:
        plan.design = design_check(a, frame, plan.axes)
    except PlanError as e:
        raise src.error(e.where, e.message) from None
    _check_looks(plan)


def seed_order(plan: SweepPlan) -> list[int]:
    """The order seeds are run in by a sequential design: grid.seed as written (else sorted)."""
    written = plan.spec.grid.get("seed")
    return [int(s) for s in written] if written else plan.seeds


def _check_looks(plan: SweepPlan) -> None:
    """A sequential design (analysis.looks) runs the first n of grid.seed at a look of n seeds: the grid
    must list at least max(looks) seeds, and every primary and family must have an exact design."""
    from analysis.looks import look_groups

    a, src = plan.spec.analysis, plan.source
    if a is None or a.looks is None:
        return
    seeds = seed_order(plan)
    if len(seeds) < a.looks[-1]:
        raise src.error("analysis.looks", f"looks {a.looks} need {a.looks[-1]} seeds but grid.seed lists "
                                          f"{len(seeds)}: list at least {a.looks[-1]} (a look of n runs the "
                                          f"first n of grid.seed)")
    try:
        look_groups(a)
    except ValueError as e:
        where, _, message = str(e).partition(": ")
        if not message:
            where, message = "looks", str(e)
        raise src.error(f"analysis.{where}", message) from None


def trial_frame(plan: SweepPlan, extra: dict[str, dict] | None = None):
    """One row per trial of ``plan`` (trial_id, seed, status done, the axes; ``extra[trial_id]`` adds
    columns, e.g. its metrics): the frame analysis.hypotheses binds the plan's hypotheses to."""
    import pandas as pd

    extra = extra or {}
    return pd.DataFrame([{"trial_id": t.trial_id, "seed": t.seed, "status": "done",
                          **{k: _hashable(t.axes[k]) for k in plan.axes}, **extra.get(t.trial_id, {})}
                         for t in plan.trials])


def _hashable(value: Any) -> Any:
    return show_value(value) if isinstance(value, dict) else value


def _seed_warnings(plan: SweepPlan) -> list[str]:
    """Paired tests need every condition on the same seeds (include/exclude can break that)."""
    all_seeds = set(plan.seeds)
    out = []
    for label, trials in plan.conditions().items():
        missing = all_seeds - {t.seed for t in trials}
        if missing and len(plan.conditions()) > 1:
            out.append(f"condition {label} lacks seeds {sorted(missing)}: those seeds are unpaired for it")
    return out


# --- helpers ---------------------------------------------------------------------------------------

def same_value(a: Any, b: Any) -> bool:
    """YAML-tolerant equality: 1 == 1.0, "1e-3" == 0.001, None == "null"."""
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return show_value(a) == show_value(b)


def _same_axis(key: str, a: Any, b: Any) -> bool:
    """``same_value`` of two values of axis ``key``, a cost in any spelling (analysis.pairing.canonical_value)."""
    return same_value(canonical_value(key, a), canonical_value(key, b))


def show_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, dict | list):
        return json.dumps(v, sort_keys=True, separators=(",", ":"))
    return str(v)


def _show_repr(v: Any) -> str:
    return repr(v) if not isinstance(v, dict | list) else show_value(v)


def _set(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    last = parts[-1]
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        node[last] = _merge(node[last], value)
    else:
        node[last] = value


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
