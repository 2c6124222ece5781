"""Everything the report computes, in one pass over a loaded sweep: :func:`analyze`.

The result, :class:`Analysis`, holds only result objects (condition summaries, paired contrast
results, isolation correlations, pooled confusions, dose-response arrays); the tables and figures
are drawn from it without recomputing anything.

What is compared:
- the plan's declared hypotheses (:mod:`analysis.hypotheses`): each primary at its own alpha, each
  family with Holm — the only confirmatory results;
- everything below is exploratory: the declared contrasts on the plan's ``exploratory`` metrics,
- every other value of the baseline's axis against the baseline, and against the circumplex cost
  when the sweep has one (the cost-control table, study Table II);
- the *treatment* against the baseline on every metric, per class and per AU (Tables IV, VIII-X).
  The treatment is ``method.cost: circumplex`` (else ``method.name: ot``) when the sweep has it,
  else the A side of the first planned contrast against the baseline;
- the circumplex against the uniform cost on the error-structure metrics in the study's sign
  (circumplex − uniform, Table XI) when the sweep has both;
- class isolation vs ΔF1 (§6.3): per dataset two-sided; combined within-dataset ranks, in the
  plan's ``isolation_direction`` (docs/methods.md: one-sided, rho > 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.contrasts import ContrastResult, SampleStats, compare_contrast, describe
from analysis.errors import class_isolation
from analysis.hypotheses import HypothesisResult, evaluate_hypotheses
from analysis.isolation import CorrelationResult, spearman_permutation_test
from analysis.pairing import Contrast, Items, freeze_selector, normalise_value, select, sort_key, stratum_label
from analysis.plan import DEFAULT_METRICS, AnalysisPlan
from analysis.results import SweepResults

__all__ = [
    "Analysis",
    "ConditionStats",
    "DoseResponse",
    "IsolationResult",
    "PooledConfusion",
    "analyze",
    "condition_stats",
    "infer_plan",
]

COST_AXIS = "method.cost"
LAM_AXIS = "method.lam"
DATASET_AXES = ("dataset.name", "dataset.preset")
REFERENCE_COST = "circumplex"
UNIFORM_COST = "uniform"
ERROR_METRICS = ("error_severity", "quadrant_keep", "affect_weighted_acc")
SUMMARY_METRICS = ("p_mtl", "va_ccc", "expr_f1", "au_f1")
MAX_FIGURE_STRATA = 4


@dataclass(frozen=True, eq=False)
class ConditionStats:
    """Mean, std and n over seeds of every metric for one condition (one combination of axes)."""

    condition: Items
    trial_ids: tuple[str, ...]
    n_failed: int
    stats: dict[str, SampleStats]

    @property
    def n(self) -> int:
        return len(self.trial_ids)

    @property
    def label(self) -> str:
        return stratum_label(self.condition)


@dataclass(frozen=True)
class IsolationResult:
    """Class isolation vs mean per-class F1 change (treatment - baseline) in one stratum."""

    stratum: Items
    class_names: tuple[str, ...]
    isolation: tuple[float, ...]
    delta_f1: tuple[float, ...]
    result: CorrelationResult


@dataclass(frozen=True, eq=False)
class PooledConfusion:
    """Confusion matrices summed over the paired seeds of one condition in one stratum."""

    stratum: Items
    condition: str
    class_names: tuple[str, ...]
    matrix: np.ndarray
    n_trials: int


@dataclass(frozen=True, eq=False)
class DoseResponse:
    """Metric vs ``method.lam`` in one stratum: per series, values of shape (len(lam), n_seeds)."""

    stratum: Items
    lam: np.ndarray
    metric: str
    series: dict[str, np.ndarray]
    class_series: dict[str, np.ndarray]  # "<series>: <class> F1" for the degenerate pair


@dataclass(frozen=True, eq=False)
class Analysis:
    sweep: SweepResults
    plan: AnalysisPlan
    plan_source: str  # "given", "sweep.yaml" or "inferred"
    varying_axes: tuple[str, ...]
    conditions: tuple[ConditionStats, ...]
    hypotheses: tuple[HypothesisResult, ...]
    exploratory: tuple[ContrastResult, ...]  # the declared contrasts on every exploratory metric
    baseline: Items | None
    treatment: Items | None
    versus_baseline: tuple[ContrastResult, ...]
    versus_reference: tuple[ContrastResult, ...]
    treatment_vs_baseline: ContrastResult | None
    isolation: tuple[IsolationResult, ...]
    isolation_combined: CorrelationResult | None
    circumplexes: tuple[tuple[Items, dict], ...]
    confusions: tuple[PooledConfusion, ...]
    dose_response: tuple[DoseResponse, ...]
    error_structure: ContrastResult | None = None  # circumplex vs uniform (study sign), exploratory
    warnings: tuple[str, ...] = field(default=())

    def family(self, name: str) -> tuple[HypothesisResult, ...]:
        return tuple(r for r in self.hypotheses if r.hypothesis.family == name)

    def geometry(self, stratum: Items) -> dict | None:
        """The circumplex.json payload of the stratum's dataset (None when no trial wrote one)."""
        key = dataset_key(stratum)
        for k, payload in self.circumplexes:
            if k == key:
                return payload
        return self.circumplexes[0][1] if len(self.circumplexes) == 1 else None

    @property
    def all_contrasts(self) -> tuple[ContrastResult, ...]:
        seen, out = set(), []
        for r in (*self.exploratory, *self.versus_baseline, *self.versus_reference,
                  *([self.treatment_vs_baseline] if self.treatment_vs_baseline else []),
                  *([self.error_structure] if self.error_structure else [])):
            key = (r.contrast.a, r.contrast.b)
            if key not in seen:
                seen.add(key)
                out.append(r)
        return tuple(out)


def _done(frame: pd.DataFrame) -> pd.DataFrame:
    if "status" not in frame.columns:
        return frame
    return frame[frame["status"].astype(str) == "done"]


def varying_axes(frame: pd.DataFrame, axes: Sequence[str]) -> tuple[str, ...]:
    return tuple(a for a in axes if len({normalise_value(v) for v in frame[a]}) > 1)


def condition_stats(frame: pd.DataFrame, axes: Sequence[str], metrics: Sequence[str]) -> tuple[ConditionStats, ...]:
    """Summaries over seeds of every combination of axis values (failed trials counted, not averaged)."""
    groups: dict[Items, list[int]] = {}
    for i in range(len(frame)):
        key = tuple((a, normalise_value(frame[a].iloc[i])) for a in axes)
        groups.setdefault(key, []).append(i)
    status = frame["status"].astype(str) if "status" in frame.columns else pd.Series(["done"] * len(frame))
    done = (status == "done").to_numpy()
    out = []
    for key, rows in groups.items():
        ok = [r for r in rows if done[r]]
        stats = {m: describe(frame[m].to_numpy(dtype=float)[ok]) for m in metrics if m in frame.columns}
        out.append(ConditionStats(key, tuple(str(frame["trial_id"].iloc[r]) for r in ok), len(rows) - len(ok), stats))
    return tuple(out)


def infer_plan(sweep: SweepResults) -> AnalysisPlan:
    """A plan for a sweep without an ``analysis:`` block: no hypotheses (nothing was declared, so
    nothing is confirmed); the cost axis (or the first varying axis) against its baseline (``none`` /
    ``focal`` / the first value) in the exploratory tables."""
    frame = sweep.results  # failed trials count too: their contrasts must exist to list them
    axes = varying_axes(frame, sweep.axes)
    if not axes:
        return AnalysisPlan(exploratory=_present(frame, DEFAULT_METRICS))
    axis = COST_AXIS if COST_AXIS in axes else ("method.name" if "method.name" in axes else axes[0])
    values = sorted({normalise_value(v) for v in frame[axis]}, key=sort_key)
    base = next((v for v in ("none", "focal") if v in values), values[0])
    return AnalysisPlan(baseline={axis: base}, exploratory=_present(frame, DEFAULT_METRICS))


def _present(frame: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    present = [m for m in metrics if m in frame.columns and frame[m].notna().any()]
    return present or list(metrics)


def _treatment(frame: pd.DataFrame, plan: AnalysisPlan) -> Items | None:
    baseline = plan.baseline
    if baseline is None:
        return None
    for axis, value in ((COST_AXIS, REFERENCE_COST), ("method.name", "ot")):
        if axis in frame.columns and baseline != {axis: value} and select(frame, {axis: value}).any():
            return ((axis, value),)
    for h in plan.hypotheses():
        if h.b == baseline:
            return Contrast.of(h.a, h.b).a
    return None


def analyze(sweep: SweepResults, plan: AnalysisPlan | None = None) -> Analysis:
    """Run every planned and descriptive comparison of a sweep (see the module docstring)."""
    frame = sweep.results
    warnings: list[str] = []
    if plan is not None:
        plan_source = "given"
    elif sweep.plan is not None:
        plan, plan_source = sweep.plan, "sweep.yaml"
    else:
        plan, plan_source = infer_plan(sweep), "inferred"
        warnings.append("the sweep has no analysis: block: no hypothesis was declared, so every result is "
                        "exploratory")
    missing = [m for m in plan.exploratory if m not in frame.columns]
    if missing:
        warnings.append(f"exploratory metrics not in the results: {', '.join(missing)}")
    if "status" in frame.columns:
        unfinished = frame[frame["status"].astype(str) != "done"]
        if len(unfinished):
            listed = ", ".join(f"{t} ({s})" for t, s in zip(unfinished["trial_id"][:10], unfinished["status"][:10]))
            more = f" and {len(unfinished) - 10} more" if len(unfinished) > 10 else ""
            warnings.append(f"{len(unfinished)} trial(s) did not finish and are excluded: {listed}{more}")

    axes = sweep.axes
    done = _done(frame)
    varying = varying_axes(done, axes) if len(done) else ()
    class_metrics = [c for c in frame.columns if c.startswith("expr_f1/")]
    au_metrics = [c for c in frame.columns if c.startswith("au_f1/")]
    table_metrics = list(dict.fromkeys([*plan.metrics, *SUMMARY_METRICS, "rsa_rho", "affect_weighted_acc"]))
    conditions = condition_stats(frame, varying or (), list(dict.fromkeys([*table_metrics, *class_metrics])))

    kwargs = dict(alpha=plan.alpha, n_resamples=plan.n_resamples, seed=plan.seed)
    cache: dict[tuple, ContrastResult] = {}

    def run(a: Items | dict, b: Items | dict, role: str, metrics: Sequence[str]) -> ContrastResult | None:
        contrast = Contrast.of(dict(a), dict(b), role)
        key = (contrast.a, contrast.b, role, tuple(metrics))
        if key not in cache:
            try:
                cache[key] = compare_contrast(frame, contrast, axes, metrics, **kwargs)
            except (KeyError, ValueError) as exc:
                if role != "descriptive":
                    raise  # a planned contrast that cannot be formed is the plan's error: say so
                warnings.append(f"descriptive comparison {contrast.label} skipped: {exc}")
                cache[key] = None
        return cache[key]

    hypotheses = evaluate_hypotheses(plan, frame, axes, warnings)
    declared = list(dict.fromkeys((freeze_selector(r.hypothesis.a), freeze_selector(r.hypothesis.b))
                                  for r in hypotheses))
    exploratory = tuple(run(a, b, "exploratory", plan.metrics) for a, b in declared)

    baseline = freeze_selector(plan.baseline) if plan.baseline else None
    versus_baseline: list[ContrastResult] = []
    versus_reference: list[ContrastResult] = []
    if plan.baseline and len(plan.baseline) == 1:
        (axis, base_value), = plan.baseline.items()
        if axis in frame.columns:
            values = sorted({normalise_value(v) for v in frame[axis]}, key=sort_key)
            others = [v for v in values if v != normalise_value(base_value)]
            versus_baseline = [r for v in others if (r := run({axis: v}, plan.baseline, "descriptive",
                                                              table_metrics)) is not None]
            if REFERENCE_COST in others:
                versus_reference = [r for v in others if v != REFERENCE_COST and (
                    r := run({axis: v}, {axis: REFERENCE_COST}, "descriptive", table_metrics)) is not None]
    treatment = _treatment(frame, plan)
    treatment_vs_baseline = None
    if treatment is not None:
        treatment_vs_baseline = run(dict(treatment), plan.baseline, "descriptive",
                                    list(dict.fromkeys([*table_metrics, *class_metrics, *au_metrics])))
        if treatment_vs_baseline is None:
            treatment = None

    error_structure = None
    if COST_AXIS in frame.columns and all(select(frame, {COST_AXIS: c}).any() for c in (REFERENCE_COST, UNIFORM_COST)):
        error_structure = run({COST_AXIS: REFERENCE_COST}, {COST_AXIS: UNIFORM_COST}, "descriptive",
                              [m for m in ("expr_f1", "p_mtl", *ERROR_METRICS) if m in frame.columns])

    results = (*exploratory, *versus_baseline, *versus_reference,
               *([treatment_vs_baseline] if treatment_vs_baseline else []))
    warnings.extend(_pairing_warnings(results))
    warnings.extend(f"{r.hypothesis.where}: {r.design.sentence()}" for r in hypotheses if not r.design.can_reach)

    circumplexes = _circumplexes(sweep, treatment_vs_baseline, done)
    isolation, combined = _isolation(treatment_vs_baseline, circumplexes, plan)
    return Analysis(
        sweep=sweep,
        plan=plan,
        plan_source=plan_source,
        varying_axes=tuple(varying),
        conditions=conditions,
        hypotheses=hypotheses,
        exploratory=exploratory,
        baseline=baseline,
        treatment=treatment,
        versus_baseline=tuple(versus_baseline),
        versus_reference=tuple(versus_reference),
        treatment_vs_baseline=treatment_vs_baseline,
        isolation=isolation,
        isolation_combined=combined,
        circumplexes=circumplexes,
        confusions=_confusions(sweep, treatment_vs_baseline, versus_baseline),
        dose_response=_dose_response(done, varying, circumplexes, treatment),
        error_structure=error_structure,
        warnings=tuple(warnings),
    )


def _pairing_warnings(results: Sequence[ContrastResult]) -> list[str]:
    out, seen = [], set()
    for r in results:
        p = r.pairing
        key = (p.contrast.a, p.contrast.b)
        if key in seen:
            continue
        seen.add(key)
        label = p.contrast.label
        if p.unmatched:
            out.append(f"{label}: {len(p.unmatched)} trial(s) could not be paired and are excluded "
                       f"(listed under Pairing issues)")
        if p.integrity:
            out.append(f"{label}: {len(p.integrity)} pair(s) have different data_order_hash for the same seed "
                       f"(matched-seed integrity violated); excluded from the tests")
        out.extend(f"{label}: {note}" for note in p.notes)
        if not p.pairs and p.contrast.role != "descriptive":
            out.append(f"{label}: no matched pairs; nothing was tested")
    return out


def dataset_key(stratum: Items) -> Items:
    """The dataset part of a stratum (what a circumplex geometry depends on)."""
    return tuple((k, v) for k, v in stratum if k in DATASET_AXES)


def _circumplexes(sweep: SweepResults, treatment: ContrastResult | None,
                  done: pd.DataFrame) -> tuple[tuple[Items, dict], ...]:
    """One circumplex.json per dataset, from a treatment trial where possible (else any finished trial)."""
    candidates: dict[Items, list[str]] = {}
    if treatment is not None:
        for pair in treatment.pairing.pairs:
            candidates.setdefault(dataset_key(pair.stratum), []).append(pair.trial_a)
    present = [a for a in DATASET_AXES if a in sweep.axes]
    for i in range(len(done)):
        key = tuple((a, normalise_value(done[a].iloc[i])) for a in present)
        if treatment is not None and treatment.pairing.pairs:
            key = tuple((k, v) for k, v in key if k in treatment.pairing.strata_axes)
        candidates.setdefault(key, []).append(str(done["trial_id"].iloc[i]))
    out = []
    for key, trial_ids in candidates.items():
        for trial_id in trial_ids[:3]:
            payload = sweep.circumplex(trial_id)
            if payload is not None:
                out.append((key, payload))
                break
    return tuple(out)


def _isolation(result: ContrastResult | None, circumplexes, plan: AnalysisPlan):
    if result is None:
        return (), None
    geometry = dict(circumplexes)
    rows = []
    for stratum in dict.fromkeys(c.stratum for c in result.comparisons):
        payload = geometry.get(dataset_key(stratum)) or (next(iter(geometry.values())) if len(geometry) == 1 else None)
        if payload is None:
            continue
        names = tuple(payload["class_names"])
        deltas = []
        for name in names:
            comparison = result.get(f"expr_f1/{name}", stratum)
            deltas.append(comparison.delta if comparison is not None else np.nan)
        if np.isfinite(deltas).sum() < 3:
            continue
        iso = class_isolation(np.asarray(payload["true_cost"], dtype=float))
        test = spearman_permutation_test(iso, deltas, n_resamples=plan.n_resamples, seed=plan.seed)
        rows.append(IsolationResult(stratum, names, tuple(map(float, iso)), tuple(map(float, deltas)), test))
    combined = None
    if len(rows) > 1:  # ranks within each dataset: the datasets' ΔF1 scales differ (docs/methods.md §7)
        iso = np.concatenate([r.isolation for r in rows])
        delta = np.concatenate([r.delta_f1 for r in rows])
        groups = np.concatenate([[i] * len(r.isolation) for i, r in enumerate(rows)])
        combined = spearman_permutation_test(iso, delta, groups, n_resamples=plan.n_resamples, seed=plan.seed,
                                             alternative=plan.isolation_direction, rank_within_groups=True)
    return tuple(rows), combined


def _pooled(sweep: SweepResults, stratum: Items, label: str, trial_ids: Sequence[str]) -> PooledConfusion | None:
    total, names, n = None, None, 0
    for trial_id in trial_ids:
        loaded = sweep.confusion(trial_id)
        if loaded is None:
            continue
        class_names, matrix = loaded
        if total is None:
            total, names = np.zeros_like(matrix), tuple(class_names)
        if tuple(class_names) != names or matrix.shape != total.shape:
            continue  # a different label space cannot be pooled
        total = total + matrix
        n += 1
    if total is None:
        return None
    return PooledConfusion(stratum, label, names, total, n)


def _confusions(sweep: SweepResults, treatment: ContrastResult | None,
                versus_baseline: Sequence[ContrastResult]) -> tuple[PooledConfusion, ...]:
    if treatment is None:
        return ()
    out = []
    strata = _representative_strata(treatment.pairing.by_stratum())
    uniform = next((r for r in versus_baseline if dict(r.contrast.a).get(COST_AXIS) == "uniform"), None)
    for stratum, pairs in strata:
        panels = [(treatment.contrast.b_label, [p.trial_b for p in pairs]),
                  (treatment.contrast.a_label, [p.trial_a for p in pairs])]
        if uniform is not None and uniform.contrast != treatment.contrast:
            trials = [p.trial_a for p in uniform.pairing.pairs if p.stratum == stratum]
            panels.append((uniform.contrast.a_label, trials))
        pooled = [_pooled(sweep, stratum, label, ids) for label, ids in panels]
        out.extend(p for p in pooled if p is not None)
    return tuple(out)


def _representative_strata(by_stratum: dict[Items, tuple]) -> list[tuple[Items, tuple]]:
    """One stratum per dataset for the illustrative figures: lambda = 1 (the default) when
    lambda is a stratum axis, else the first in order."""
    chosen: dict[Items, tuple[Items, tuple]] = {}
    for stratum, pairs in sorted(by_stratum.items(), key=lambda kv: tuple(sort_key(v) for _, v in kv[0])):
        key = dataset_key(stratum)
        if key not in chosen or dict(stratum).get(LAM_AXIS) == 1:
            chosen[key] = (stratum, pairs)
    return list(chosen.values())[:MAX_FIGURE_STRATA]


def _degenerate_classes(payload: dict | None) -> list[str]:
    if not payload or payload.get("degenerate_pair") is None:
        return []
    names = payload["class_names"]
    return [names[int(i)] for i in payload["degenerate_pair"]]


def _dose_response(done: pd.DataFrame, varying: Sequence[str], circumplexes,
                   treatment: Items | None) -> tuple[DoseResponse, ...]:
    """Metric vs lambda per dataset: one series per combination of the other varying axes; the
    degenerate pair's per-class F1 for the treatment series (all series when there is no treatment)."""
    if LAM_AXIS not in varying:
        return ()
    dataset_axes = [a for a in DATASET_AXES if a in varying]
    series_axes = [a for a in varying if a != LAM_AXIS and a not in dataset_axes]
    lam_all = np.array(sorted({float(v) for v in pd.to_numeric(done[LAM_AXIS], errors="coerce").dropna()}))
    geometry = dict(circumplexes)
    out = []
    strata: dict[Items, list[int]] = {}
    for i in range(len(done)):
        strata.setdefault(tuple((a, normalise_value(done[a].iloc[i])) for a in dataset_axes), []).append(i)
    for stratum, rows in list(strata.items())[:MAX_FIGURE_STRATA]:
        sub = done.iloc[rows]
        payload = geometry.get(dataset_key(stratum)) or (next(iter(geometry.values())) if len(geometry) == 1 else None)
        pair_classes = [c for c in _degenerate_classes(payload) if f"expr_f1/{c}" in sub.columns]
        for metric in ("p_mtl", "expr_f1"):
            if metric not in sub.columns or sub[metric].isna().all():
                continue
            series, class_series = {}, {}
            labels: dict[Items, list[int]] = {}
            for j in range(len(sub)):
                labels.setdefault(tuple((a, normalise_value(sub[a].iloc[j])) for a in series_axes), []).append(j)
            wanted = [(k, v) for k, v in (treatment or ()) if k != LAM_AXIS]
            for items, members in sorted(labels.items(), key=lambda kv: tuple(sort_key(v) for _, v in kv[0])):
                part = sub.iloc[members]
                label = stratum_label(items) if items else metric
                series[label] = _by_lam(part, metric, lam_all)
                if wanted and not all(dict(items).get(k) == v for k, v in wanted):
                    continue
                for c in pair_classes:
                    class_series[f"{label}: {c} F1"] = _by_lam(part, f"expr_f1/{c}", lam_all)
            out.append(DoseResponse(stratum, lam_all, metric, series, class_series))
            break  # one metric per stratum keeps the report readable
    return tuple(out)


def _by_lam(part: pd.DataFrame, metric: str, lam_all: np.ndarray) -> np.ndarray:
    lam = pd.to_numeric(part[LAM_AXIS], errors="coerce").to_numpy(dtype=float)
    values = part[metric].to_numpy(dtype=float)
    columns: list[list[float]] = [[] for _ in lam_all]
    for x, v in zip(lam, values):
        if np.isfinite(x):
            columns[int(np.argmin(np.abs(lam_all - x)))].append(v)
    width = max((len(c) for c in columns), default=0)
    out = np.full((len(lam_all), width), np.nan)
    for k, col in enumerate(columns):
        out[k, : len(col)] = col
    return out
