"""``affsweep plan SWEEP.yaml [--pilot DIR]``: how many seeds the declared hypotheses need (docs/methods.md §15).

Before any GPU-hour is spent it prints, per declared hypothesis and per family, the fewest matched
seeds at which its threshold is attainable at all under the exact paired sign-flip test
(:func:`analysis.power.seeds_needed`: ``alpha`` for a primary, ``alpha/m`` for Holm's first step in
a family of ``m``, one-sided where declared), next to the paired seeds the grid gives it. With looks
declared it adds what each look of the sequential design can decide (:mod:`analysis.looks`).

``--pilot DIR`` (a finished sweep with at least 3 matched seeds of the same conditions) estimates
each hypothesis's power at n = 6, 8, 10, 12, 16, 20 seeds from the pilot's paired differences
(:func:`analysis.power.power_from_pilot`, normal model: the sign-flip test depends only on the
standardised effect mean/sd), with the interval the pilot's own uncertainty gives, and the n that
reaches power 0.8. The pilot is bound to the hypotheses by the analysis package itself
(``analysis.results.load_sweep`` + ``analysis.hypotheses.evaluate_hypotheses``).

Only the YAML is read and expanded: no dataset root, backbone weight or cost file is looked at, so
it works for ``*.real.yaml`` sweeps on a machine without the data.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from analysis.looks import describe_looks
from analysis.power import DEFAULT_NS, power_from_pilot, seeds_needed
from orchestrator.expand import SweepPlan, load_sweep
from orchestrator.spec import ConfigError

__all__ = ["Attainability", "attainability", "format_pilot", "format_plan", "main"]

MIN_PILOT_SEEDS = 3


@dataclass(frozen=True)
class Attainability:
    """One declared hypothesis: the threshold its exact test must reach, the fewest seeds at which
    it can, and the paired seeds this grid gives it."""

    label: str
    family: str | None
    direction: str
    threshold: float
    family_size: int
    needed: int
    paired: int

    @property
    def enough(self) -> bool:
        return self.paired >= self.needed


def attainability(plan: SweepPlan) -> list[Attainability]:
    a = plan.analysis
    out = []
    for row in plan.design:  # analysis.hypotheses.DesignRow, from the expansion's design check
        h = row.hypothesis
        out.append(Attainability(h.label, h.family, h.direction, row.threshold, row.family_size,
                                 seeds_needed(a.alpha, row.family_size, h.direction), row.n_paired))
    return out


def _verdict(paired: int, needed: int) -> str:
    return "enough" if paired >= needed else f"NOT enough: needs {needed - paired} more"


def format_plan(plan: SweepPlan) -> str:
    a = plan.analysis
    seeds = len(plan.seeds)
    out = [f"sweep {plan.name} ({plan.source.path}): {len(plan.conditions())} conditions x {seeds} seeds; "
           f"analysis plan {a.plan_hash()}; alpha {a.alpha:g}"]
    rows = attainability(plan)
    if not rows:
        out.append("no hypotheses declared: nothing is confirmed, so no seed count is needed for a decision "
                   f"(a two-sided test at alpha {a.alpha:g} needs at least {seeds_needed(a.alpha)} seeds)")
    else:
        out.append("fewest seeds at which each threshold is attainable at all under the exact paired sign-flip "
                   "test (every seed agreeing; necessary, not sufficient: --pilot DIR estimates power)")
    for family in dict.fromkeys(r.family for r in rows):
        members = [r for r in rows if r.family == family]
        if family is None:
            out.append("  primary (each at alpha):")
        else:
            need = max(r.needed for r in members)
            have = min(r.paired for r in members)
            out.append(f"  family {family} (Holm, m = {len(members)}; first step p <= alpha/m = "
                       f"{members[0].threshold:.4g}): needs {need} seeds, has {have}: {_verdict(have, need)}")
        for r in members:
            out.append(f"    {r.label} [{r.direction}]: p <= {r.threshold:.4g} needs {r.needed} seeds; "
                       f"{r.paired} paired here: {_verdict(r.paired, r.needed)}")
    looks = describe_looks(a)
    if looks:
        out += ["", *looks]
    return "\n".join(out)


def format_pilot(plan: SweepPlan, pilot_dir: str | Path, ns: Sequence[int] = DEFAULT_NS, n_sim: int = 2000,
                 seed: int = 0, target: float = 0.8) -> str:
    """Power at each ``n`` per declared hypothesis, from the pilot sweep's paired differences."""
    from analysis.hypotheses import PlanError, evaluate_hypotheses
    from analysis.results import load_sweep as load_results

    a = plan.analysis
    pilot = load_results(pilot_dir)
    warnings: list[str] = []
    try:
        results = evaluate_hypotheses(a, pilot.results, pilot.axes, warnings)
    except PlanError as e:
        raise ConfigError(f"{pilot_dir}: the pilot cannot carry the plan of {plan.source.path}: {e}") from None
    out = [f"power from pilot {pilot.directory} ({pilot.name}): exact sign-flip test, normal model (future "
           f"differences N(mean, sd) with the pilot's standardised effect mean/sd); {n_sim} simulated studies "
           f"per n; interval: 95% over the pilot's uncertainty (parametric bootstrap); target power {target:g}; a "
           f"family member's power is that of Holm's first step at alpha/m (a lower bound under Holm)"]
    for r in results:
        h = r.hypothesis
        out.append(f"  {h.role}: {h.label} [{h.direction}], p <= {r.threshold:.4g}:")
        if r.n < MIN_PILOT_SEEDS:
            out.append(f"    the pilot has {r.n} paired seed(s) for it; a power estimate needs at least "
                       f"{MIN_PILOT_SEEDS}")
            continue
        est = power_from_pilot(r.differences, ns=ns, alpha=a.alpha, family_size=r.family_size,
                               alternative=h.direction, n_sim=n_sim, seed=seed, target=target)
        out.append(f"    pilot: {est.pilot_n} paired seeds, mean difference {r.differences.mean():+.4g}, "
                   f"standardised effect {est.effect:+.3g}")
        for row in est.rows:
            power = f"{row.power:.2f} ± {row.mc_se:.2f} (95% {row.low:.2f}–{row.high:.2f})" if row.attainable \
                else "0 (threshold not attainable at this n)"
            out.append(f"    n = {row.n:>2}: power {power}")
        rec = f"{est.recommended_n} seeds" if est.recommended_n else f"more than {max(ns)} seeds"
        cons = (f"{est.recommended_n_conservative} seeds" if est.recommended_n_conservative
                else f"none of the planned n up to {max(ns)}")
        out.append(f"    recommended: {rec} for power >= {target:g} at the pilot's effect; at the interval's "
                   f"low end: {cons}")
    out += [f"  warning: {w}" for w in warnings]
    return "\n".join(out)


def main(args) -> int:
    try:
        plan = load_sweep(args.sweep)  # expansion only: no preflight of dataset roots or weights
        text = format_plan(plan)
        if args.pilot:
            text += "\n\n" + format_pilot(plan, args.pilot, n_sim=args.n_sim)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        print(f"error: affsweep plan: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0
