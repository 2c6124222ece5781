"""Declared hypotheses bound to a sweep's trials, tested, Holm-adjusted per family, and decided.

:func:`resolve` binds one :class:`~analysis.plan.Hypothesis` to the trials (its contrast's pairing,
restricted to its stratum) and raises :class:`PlanError` (the YAML key path and what is wrong) when
the plan cannot mean anything on this grid: a selector matching no condition, a stratum matching
none, or a contrast spanning several strata without saying which. The dry run calls it on the
expanded grid (:func:`design_check`), the report on the results (:func:`evaluate_hypotheses`).

Decision at ``alpha`` (docs/methods.md §7): a primary is *supported* when ``p <= alpha``; a family member
when its Holm-adjusted p is. A hypothesis whose smallest attainable p (zeros included,
:func:`analysis.paired.min_attainable_pvalue`) exceeds its threshold — ``alpha`` for a primary,
``alpha / m`` (Holm's first step) in a family of ``m`` — *cannot be decided by this design*.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.contrasts import LOWER_IS_BETTER
from analysis.paired import (
    ConfidenceInterval,
    PairedTestResult,
    bootstrap_ci,
    holm,
    min_attainable_pvalue,
    paired_permutation_test,
)
from analysis.pairing import Contrast, Items, MatchedPair, Pairing, pair_trials, select, stratum_label
from analysis.plan import AnalysisPlan, Hypothesis

__all__ = [
    "CANNOT_DECIDE",
    "NOT_SUPPORTED",
    "SUPPORTED",
    "answer",
    "DesignRow",
    "HypothesisResult",
    "PlanError",
    "design_check",
    "resolve",
    "evaluate_hypotheses",
    "thresholds",
]

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
CANNOT_DECIDE = "cannot be decided by this design"


class PlanError(ValueError):
    """The plan names something this grid does not have; ``where`` is the YAML key path."""

    def __init__(self, where: str, message: str):
        self.where, self.message = where, message
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Resolved:
    hypothesis: Hypothesis
    pairing: Pairing
    stratum: Items | None
    pairs: tuple[MatchedPair, ...]


def resolve(hypothesis: Hypothesis, frame: pd.DataFrame, axes: Sequence[str],
            pairing: Pairing | None = None) -> Resolved:
    """Bind ``hypothesis`` to the rows of ``frame`` (see the module docstring)."""
    h = hypothesis
    for j, side in enumerate((h.a, h.b)):
        try:
            matched = select(frame, side).any()
        except KeyError as exc:
            raise PlanError(f"{h.where}.contrast.{j}", exc.args[0]) from None
        if not matched:
            raise PlanError(f"{h.where}.contrast.{j}", f"selector {side} matches no condition of the grid")
    if pairing is None:
        try:
            pairing = pair_trials(frame, Contrast.of(h.a, h.b, h.role), axes)
        except ValueError as exc:
            raise PlanError(f"{h.where}.contrast", str(exc)) from None
    strata = pairing.by_stratum()
    if h.stratum is not None:
        outside = [k for k in h.stratum if k not in pairing.strata_axes]
        if outside:
            raise PlanError(f"{h.where}.stratum", f"{outside[0]} is not a stratum of this contrast (its strata "
                                                  f"axes: {', '.join(pairing.strata_axes) or 'none'})")
        rows = select(frame, {**h.a, **h.stratum})
        if not rows.any():
            raise PlanError(f"{h.where}.stratum", f"{h.stratum} matches no condition of the contrast")
        matching = [s for s, pairs in strata.items() if rows[pairs[0].row_a]]
        if len(matching) > 1:
            raise PlanError(f"{h.where}.stratum", f"{h.stratum} matches {len(matching)} strata "
                                                  f"({'; '.join(map(stratum_label, matching))}); name one")
    else:
        matching = list(strata)
        if len(matching) > 1:
            labels = "; ".join(map(stratum_label, matching))
            raise PlanError(h.where, f"the contrast spans {len(matching)} strata ({labels}): a hypothesis is one "
                                     f"test, so declare stratum: (or, in a family, strata:)")
    stratum = matching[0] if matching else None
    return Resolved(h, pairing, stratum, strata.get(stratum, ()) if stratum is not None else ())


def thresholds(plan: AnalysisPlan) -> dict[str, tuple[float, int]]:
    """Per family name ('' for primaries): the threshold its members must reach at Holm's first
    step (``alpha / m``) and the family size ``m``."""
    out = {"": (plan.alpha, 1)}
    for name in plan.families:
        m = len(plan.family(name))
        out[name] = (plan.alpha / m, m)
    return out


@dataclass(frozen=True)
class DesignRow:
    """What the design can decide about one hypothesis (the dry run's and the report's check)."""

    hypothesis: Hypothesis
    stratum: Items | None
    n_paired: int
    n_zero: int | None  # None at a dry run: no differences yet
    min_pvalue: float
    threshold: float
    family_size: int

    @property
    def can_reach(self) -> bool:
        return math.isfinite(self.min_pvalue) and self.min_pvalue <= self.threshold

    def sentence(self) -> str:
        h = self.hypothesis
        step = "alpha" if h.family is None else f"alpha/m = {self.threshold:.4g} (Holm's first step, m = " \
                                                f"{self.family_size})"
        zeros = "" if not self.n_zero else f", {self.n_zero} zero difference(s)"
        floor = "–" if not math.isfinite(self.min_pvalue) else f"{self.min_pvalue:.4g}"
        verdict = "can reach it" if self.can_reach else f"this design cannot decide H ({h.label})"
        return (f"{h.role}: {h.label}: {self.n_paired} paired seeds{zeros}; smallest attainable p = {floor} "
                f"vs {step}: {verdict}")


def design_check(plan: AnalysisPlan, frame: pd.DataFrame, axes: Sequence[str]) -> list[DesignRow]:
    """Paired seeds, best-case floor and reachability of every hypothesis, before anything runs.

    ``frame``: one row per expanded trial (``trial_id``, ``seed``, ``status``, the axes). Raises
    :class:`PlanError` for a plan this grid cannot carry.
    """
    limits = thresholds(plan)
    rows = []
    for h in plan.hypotheses():
        r = resolve(h, frame, axes)
        threshold, m = limits[h.family or ""]
        rows.append(DesignRow(h, r.stratum, len(r.pairs), None,
                              min_attainable_pvalue(len(r.pairs), 0, h.direction), threshold, m))
    return rows


@dataclass(frozen=True)
class HypothesisResult:
    hypothesis: Hypothesis
    pairing: Pairing
    stratum: Items | None
    seeds: tuple
    a_values: tuple[float, ...]
    b_values: tuple[float, ...]
    test: PairedTestResult
    ci: ConfidenceInterval
    n_improved: int
    n_missing: int
    threshold: float
    family_size: int
    adjusted_pvalue: float
    decision: str

    @property
    def differences(self) -> np.ndarray:
        return np.asarray(self.a_values) - np.asarray(self.b_values)

    @property
    def delta(self) -> float:
        return self.test.statistic

    @property
    def pvalue(self) -> float:
        return self.test.pvalue

    @property
    def n(self) -> int:
        return self.test.n

    @property
    def design(self) -> DesignRow:
        return DesignRow(self.hypothesis, self.stratum, self.n, self.test.n_zero, self.test.min_pvalue,
                         self.threshold, self.family_size)

    def to_json(self) -> dict:
        h = self.hypothesis

        def num(x: float) -> float | None:
            return float(x) if x is not None and math.isfinite(x) else None

        return {
            "where": h.where, "role": "primary" if h.family is None else "family", "family": h.family,
            "contrast": {"a": h.a, "b": h.b, "label": h.contrast_label}, "metric": h.metric,
            "stratum": h.stratum, "resolved_stratum": dict(self.stratum) if self.stratum else None,
            "direction": h.direction, "n_paired": self.n, "n_zero": self.test.n_zero,
            "seeds": list(self.seeds), "a_values": list(self.a_values), "b_values": list(self.b_values),
            "differences": self.differences.tolist(), "delta": num(self.delta),
            "ci95": [num(self.ci.low), num(self.ci.high)], "n_improved": self.n_improved,
            "pvalue": num(self.pvalue), "adjusted_pvalue": num(self.adjusted_pvalue),
            "adjustment": "none" if h.family is None else f"holm over family {h.family} (m = {self.family_size})",
            "min_attainable_pvalue": num(self.test.min_pvalue), "threshold": self.threshold,
            "can_reach_threshold": self.design.can_reach, "decision": self.decision,
        }


def _decide(n: int, adjusted: float, floor: float, threshold: float, alpha: float) -> str:
    if n == 0 or not math.isfinite(adjusted):
        return CANNOT_DECIDE
    if adjusted <= alpha:
        return SUPPORTED
    if not math.isfinite(floor) or floor > threshold:
        return CANNOT_DECIDE
    return NOT_SUPPORTED


def evaluate_hypotheses(plan: AnalysisPlan, frame: pd.DataFrame, axes: Sequence[str],
                    warnings: list[str] | None = None) -> tuple[HypothesisResult, ...]:
    """Test every declared hypothesis on the finished trials of ``frame`` and decide it."""
    warnings = [] if warnings is None else warnings
    limits = thresholds(plan)
    pairings: dict[tuple, Pairing] = {}
    raw = []
    for h in plan.hypotheses():
        key = (repr(sorted(h.a.items())), repr(sorted(h.b.items())))
        r = resolve(h, frame, axes, pairings.get(key))
        pairings[key] = r.pairing
        if h.metric in frame.columns:
            column = frame[h.metric].to_numpy(dtype=float)
            a = column[[p.row_a for p in r.pairs]]
            b = column[[p.row_b for p in r.pairs]]
        else:
            warnings.append(f"{h.where}: metric {h.metric} is not in the results; {h.label} cannot be decided")
            a = b = np.full(len(r.pairs), np.nan)
        finite = np.isfinite(a) & np.isfinite(b)
        seeds = tuple(p.seed for p, ok in zip(r.pairs, finite) if ok)
        a, b = a[finite], b[finite]
        d = a - b
        test = paired_permutation_test(a, b, alpha=plan.alpha, alternative=h.direction)
        improved = int((d < 0).sum()) if h.metric in LOWER_IS_BETTER else int((d > 0).sum())
        raw.append((h, r, seeds, a, b, test, bootstrap_ci(d, n_resamples=plan.n_resamples, seed=plan.seed),
                    improved, int((~finite).sum())))
    adjusted = {i: x[5].pvalue for i, x in enumerate(raw)}
    for name in plan.families:
        members = [i for i, x in enumerate(raw) if x[0].family == name]
        for i, p in zip(members, holm([raw[i][5].pvalue for i in members])):
            adjusted[i] = float(p)
    out = []
    for i, (h, r, seeds, a, b, test, ci, improved, missing) in enumerate(raw):
        threshold, m = limits[h.family or ""]
        out.append(HypothesisResult(h, r.pairing, r.stratum, seeds, tuple(a.tolist()), tuple(b.tolist()), test, ci,
                                    improved, missing, threshold, m, adjusted[i],
                                    _decide(test.n, adjusted[i], test.min_pvalue, threshold, plan.alpha)))
    return tuple(out)


def answer(r: HypothesisResult, decision: str | None = None) -> str:
    """One sentence: contrast and metric, Δ with its CI, seeds improved, p (Holm p), decision
    (``decision`` replaces the fixed-n one: a sequential design's, analysis.looks)."""
    h = r.hypothesis
    where = f" in {stratum_label(r.stratum)}" if r.stratum else ""
    if r.n == 0:
        return f"{h.role.capitalize()}: {h.contrast_label} on {h.metric}{where}: no paired seeds — {CANNOT_DECIDE}."
    sided = {"two-sided": "two-sided", "greater": "one-sided, A > B", "less": "one-sided, A < B"}[h.direction]
    p = f"p = {r.pvalue:.4g} ({sided})"
    if h.family is not None:
        p += f", Holm p = {r.adjusted_pvalue:.4g} in family {h.family} of {r.family_size}"
    return (f"{h.role.capitalize()}: {h.contrast_label} on {h.metric}{where}: Δ (A − B) = {r.delta:+.4g}, "
            f"95% CI [{r.ci.low:+.4g}, {r.ci.high:+.4g}]; A better in {r.n_improved}/{r.n} seeds; {p}; "
            f"{decision or f'at α = {r.test.alpha:g}: {r.decision}'}.")
