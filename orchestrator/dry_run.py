"""``affsweep run SWEEP.yaml --dry-run``: the grid, the resources, the packs and the analysis plan with
its design check, as text. Reads a ``SweepPlan`` (``orchestrator.expand``); starts and writes nothing."""

from __future__ import annotations

import os
from pathlib import Path

from analysis.pairing import canonical_value
from analysis.plan import AnalysisPlan, selector_label
from orchestrator.expand import SweepPlan, condition_label, show_value
from orchestrator.packing import pack_trials

__all__ = ["format_dry_run"]


def format_dry_run(plan: SweepPlan, sweep_dir: Path) -> str:
    spec = plan.spec
    cols = ["trial_id", "seed", *plan.axes]
    rows = [[t.trial_id, str(t.seed), *(show_value(canonical_value(k, t.axes[k])) for k in plan.axes)]
            for t in plan.trials]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [f"sweep {plan.name}: {len(plan.trials)} trials "
           f"({len(plan.conditions())} conditions x {len(plan.seeds)} seeds) -> {sweep_dir}", "",
           line(cols), line(["-" * w for w in widths]), *map(line, rows), ""]

    r = spec.resources
    cpus, gpus = os.cpu_count() or 1, _local_gpus()
    fits = int(cpus // r.cpu)
    if r.gpu > 0:
        fits = min(fits, int(gpus / r.gpu)) if gpus else 0
    cap = f"max_concurrent {spec.max_concurrent}" if spec.max_concurrent else "max_concurrent unset"
    local = min(fits, spec.max_concurrent or fits)
    out.append(f"resources: per trial cpu={_num(r.cpu)} gpu={_num(r.gpu)}; {cap}; on this machine "
               f"({cpus} CPUs, {gpus} GPUs) {local} trial(s) at once"
               + ("" if local else " -- the trials do not fit here; run with --address on a cluster"))
    if spec.pack is not None:
        n = len(pack_trials(plan.trials, spec.pack, plan.axes))
        out.append(f"pack: {len(plan.trials)} trials in {n} packs of up to {spec.pack.size} (differing in "
                   f"{', '.join(spec.pack.by)}); each pack is one Ray trial with the resources above")
    out.append(f"failure: max_retries {spec.failure.max_retries}; tracking: {spec.tracking.uri} "
               f"(experiment {spec.tracking.experiment!r})")
    out += _format_controls(plan)
    out += _format_analysis(plan)
    out += [f"  WARNING: {w}" for w in plan.warnings]
    return "\n".join(out)


def _declared_hypotheses(plan: SweepPlan) -> set[str] | None:
    """Labels of the hypotheses written in the YAML's own analysis: block (None without controls)."""
    if plan.spec.controls is None:
        return None
    import yaml

    raw = (yaml.safe_load(plan.source.text) or {}).get("analysis")
    return {h.label for h in AnalysisPlan.model_validate(raw).hypotheses()} if raw else set()


def _format_controls(plan: SweepPlan) -> list[str]:
    c = plan.spec.controls
    if c is None:
        return []
    added = set(plan.added_by_controls)
    conditions = dict.fromkeys(condition_label({k: canonical_value(k, v) for k, v in t.axes.items()})
                               for t in plan.trials if t.trial_id in added)
    declared = _declared_hypotheses(plan) or set()
    n_hyp = sum(h.label not in declared for h in plan.analysis.hypotheses())
    out = ["", f"controls: {', '.join(c.against)} of every structured cost -> {len(added)} added trials "
               f"({len(conditions)} conditions), {n_hyp} added hypotheses on {c.metric} and the error structure"]
    out += [f"  + {label}" for label in conditions]
    return out


def _format_analysis(plan: SweepPlan) -> list[str]:
    """The plan and its design check: per hypothesis the paired seeds, the smallest attainable p of
    the exact test (analysis.paired.min_attainable_pvalue; zeros can only raise it) and whether it
    can reach its threshold (alpha for a primary, alpha/m at Holm's first step in a family of m)."""
    from analysis.paired import min_attainable_pvalue, seeds_needed

    a = plan.analysis
    out = ["", f"analysis plan {a.plan_hash()}" + ("" if plan.spec.analysis else " (no analysis block: defaults)")]
    if a.baseline:
        out.append(f"  baseline:  {selector_label(a.baseline)}")
    rows = plan.design
    declared = _declared_hypotheses(plan)
    if not rows:
        out.append("  hypotheses: none declared -- every result will be exploratory")
    for family in dict.fromkeys(r.hypothesis.family for r in rows):
        members = [r for r in rows if r.hypothesis.family == family]
        out.append("  primary (each at alpha):" if family is None else
                   f"  family {family} (Holm over m = {len(members)}; first step needs p <= alpha/m = "
                   f"{members[0].threshold:.4g}):")
        for r in members:
            verdict = "can reach it" if r.can_reach else "CANNOT reach it -- this design cannot decide H"
            tag = " [controls]" if declared is not None and r.hypothesis.label not in declared else ""
            out.append(f"    {r.hypothesis.label}{tag}: {r.n_paired} paired seeds, min attainable p "
                       f"{r.min_pvalue:.4g} vs {r.threshold:.4g}: {verdict}")
    out.append(f"  exploratory metrics: {', '.join(a.exploratory) or '(none)'}; alpha {a.alpha}")
    from analysis.looks import describe_looks

    out += [f"  {line}" for line in describe_looks(a)]
    n = len(plan.seeds)
    p_min = min_attainable_pvalue(n)
    out.append(f"  {n} seeds -> smallest attainable two-sided p = 2/2^{n} = {p_min:.4g} "
               f"(zero differences raise it: 2^(z+1)/2^n)")
    if p_min > a.alpha:
        out.append(f"  WARNING: with {n} seeds no two-sided test can reach alpha={a.alpha}; "
                   f"use at least {seeds_needed(a.alpha)} seeds")
    out += [f"  WARNING: this design cannot decide H: {r.hypothesis.label} (min attainable p {r.min_pvalue:.4g} > "
            f"{r.threshold:.4g})" for r in rows if not r.can_reach]
    return out


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 -- a dry run must not fail on a broken CUDA install
        return 0


