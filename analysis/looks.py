"""The plan's ``looks:`` bound to its hypotheses: which look decided each one (docs/methods.md §16).

:mod:`analysis.sequential` decides one group of hypotheses — a primary, or a Holm family — from
paired differences in seed order. This module is what ties that to the plan:

- :func:`look_groups` — one :class:`~analysis.sequential.SequentialDesign` per primary (its own
  ``alpha`` and direction, ``m = 1``) and per family (``m`` its size; Holm's closure through the
  looks);
- :func:`describe_looks` — per group and look: the seeds, the cumulative alpha the spending rule
  allows (at Holm's first step ``alpha(t)/m``), the exact test's floor, and whether that look can
  reject at all (``affsweep plan`` and ``--dry-run`` print it);
- :func:`sequential_state` — the look each group has reached and every hypothesis's decision,
  replayed from the differences (stateless: the same data always give the same decisions).

A family mixing ``greater`` and ``less`` members is tested one-sided on ``-d`` for the ``less``
members (the same test); a family mixing two-sided and one-sided members has no single sequential
test and is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from analysis.plan import AnalysisPlan
from analysis.sequential import HypothesisDecision, SequentialDesign, decide_at_look, plan_looks

__all__ = ["LookGroup", "SequentialState", "decision_word", "describe_looks", "differences_in_seed_order",
           "look_groups", "sequential_state"]


@dataclass(frozen=True)
class LookGroup:
    """Hypotheses decided together (indices into ``plan.hypotheses()``), their design, and the sign
    each one's differences are tested with (-1: a ``less`` member of a mixed one-sided family)."""

    family: str | None  # None: a primary
    members: tuple[int, ...]
    design: SequentialDesign
    signs: tuple[float, ...]

    @property
    def label(self) -> str:
        return "primary" if self.family is None else f"family {self.family} (m = {len(self.members)})"


def look_groups(plan: AnalysisPlan) -> list[LookGroup]:
    """One design per primary and per family (ValueError for looks the exact test cannot enumerate
    or a family mixing two-sided and one-sided members)."""
    if plan.looks is None:
        return []
    hypotheses = plan.hypotheses()
    out = []
    for i, h in enumerate(hypotheses):
        if h.family is None:
            design = plan_looks(plan.looks, plan.alpha, plan.spending, h.direction, 1)
            out.append(LookGroup(None, (i,), design, (1.0,)))
    for name in plan.families:
        members = tuple(i for i, h in enumerate(hypotheses) if h.family == name)
        directions = {hypotheses[i].direction for i in members}
        if len(directions) == 1:
            alternative, signs = directions.pop(), (1.0,) * len(members)
        elif "two-sided" in directions:
            raise ValueError(f"families.{name}: a sequential family tests all its members one way; it mixes "
                             f"two-sided and one-sided hypotheses")
        else:
            alternative = "greater"
            signs = tuple(-1.0 if hypotheses[i].direction == "less" else 1.0 for i in members)
        out.append(LookGroup(name, members, plan_looks(plan.looks, plan.alpha, plan.spending, alternative,
                                                       len(members)), signs))
    return out


def describe_looks(plan: AnalysisPlan) -> list[str]:
    """Lines saying, per primary and family, what each look can decide (empty without looks)."""
    if plan.looks is None:
        return []
    hypotheses = plan.hypotheses()
    out = [f"sequential design: looks at {plan.looks} seeds, {plan.spending} alpha spending (Lan-DeMets), "
           f"exact sign-flip boundaries; alpha {plan.alpha:g} over all looks"]
    for g in look_groups(plan):
        name = hypotheses[g.members[0]].label if g.family is None else ", ".join(
            hypotheses[i].metric for i in g.members)
        out.append(f"  {g.label}: {name} ({g.design.alternative})")
        for row in g.design.rows:
            verdict = "can reject here" if row.attainable else "CANNOT reject at this look (only continue)"
            step = "alpha(t)" if g.family is None else "alpha(t)/m"
            out.append(f"    look {row.look}: {row.n} seeds, cumulative {step} = {row.alpha_spent_first_step:.4g}, "
                       f"smallest p = {row.smallest_pvalue:.4g}: {verdict}")
    return out


def differences_in_seed_order(seeds: Sequence, differences: Sequence[float], seed_order: Sequence) -> np.ndarray:
    """The differences of the seeds ``seed_order[0], seed_order[1], ...`` up to the first seed that
    has none (a look of n needs the first n seeds of the order, as run)."""
    by_seed = {int(s): float(d) for s, d in zip(seeds, differences) if np.isfinite(d)}
    out = []
    for s in seed_order:
        if int(s) not in by_seed:
            break
        out.append(by_seed[int(s)])
    return np.asarray(out, dtype=float)


@dataclass(frozen=True)
class SequentialState:
    """Per hypothesis (aligned with ``plan.hypotheses()``): its decision at the look its group has
    reached (None: its group has not reached look 1), and the seeds it needs next (None: decided)."""

    plan: AnalysisPlan
    decisions: tuple[HypothesisDecision | None, ...]

    def next_n(self, index: int) -> int | None:
        decision = self.decisions[index]
        if decision is None:
            return self.plan.looks[0]
        if decision.decided:
            return None
        return self.plan.looks[decision.look] if decision.look < len(self.plan.looks) else None

    @property
    def undecided(self) -> tuple[int, ...]:
        return tuple(i for i in range(len(self.decisions)) if self.next_n(i) is not None)


def sequential_state(plan: AnalysisPlan, differences: Mapping[int, Sequence[float]] | Sequence[Sequence[float]]
                     ) -> SequentialState:
    """Replay the looks for every group: ``differences[i]`` are hypothesis i's paired differences in
    seed order (:func:`differences_in_seed_order`). A group advances to look j when every member still
    undecided has the first ``looks[j-1]`` seeds."""
    hypotheses = plan.hypotheses()
    decisions: list[HypothesisDecision | None] = [None] * len(hypotheses)
    for g in look_groups(plan):
        data = {str(i): s * np.asarray(differences[i], dtype=float) for i, s in zip(g.members, g.signs)}
        decided = None
        for look, n in enumerate(g.design.looks, start=1):
            active = list(data) if decided is None else list(decided.undecided)
            if not active or any(data[h].size < n for h in active):
                break
            decided = decide_at_look(data, look, g.design)
        if decided is None:
            continue
        for i, s in zip(g.members, g.signs):
            d = decided[str(i)]
            decisions[i] = dataclasses.replace(d, name=hypotheses[i].label, mean_difference=s * d.mean_difference)
    return SequentialState(plan, tuple(decisions))


def decision_word(decision: HypothesisDecision | None, plan: AnalysisPlan) -> str:
    """The report's words for a sequential decision."""
    if decision is None:
        return f"not yet looked at (look 1 needs {plan.looks[0]} paired seeds)"
    where = f"at look {decision.look} of {len(plan.looks)} ({decision.n} seeds)"
    return {"rejected": f"supported {where}", "not_rejected": f"not supported {where}",
            "futility": f"stopped for futility {where}"}.get(
        decision.status, f"undecided after look {decision.look} ({decision.n} seeds): continue to "
                         f"{plan.looks[min(decision.look, len(plan.looks) - 1)]} seeds")

