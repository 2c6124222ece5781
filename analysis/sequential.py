"""Group-sequential design for the exact paired sign-flip test (docs/methods.md §16): seeds added only where
a hypothesis is still undecided.

A design (:func:`plan_looks`) fixes the looks — seed counts ``n_1 < ... < n_K`` — and an
alpha-spending rule ``alpha(t)`` over the information fraction ``t_j = n_j / n_K`` (Lan & DeMets,
"Discrete sequential boundaries for clinical trials", Biometrika 70:659–663, 1983):

- ``"obrien_fleming"``: ``alpha(t) = 2 - 2 Phi(Phi^-1(1 - alpha/2) / sqrt(t))`` — spends almost
  nothing early (the usual choice when an early stop must be overwhelming);
- ``"pocock"``: ``alpha(t) = alpha ln(1 + (e - 1) t)`` — spends more evenly, stops earlier on large
  effects, costs more seeds at the last look.

**Exact boundaries.** Under H0 the paired differences are symmetric about 0, independently over
seeds, so given the magnitudes ``|d_1|, ..., |d_n|`` their signs are iid fair coins. The look
statistics ``S_j = sum_{i <= n_j} d_i`` (``|S_j|`` two-sided) are then functions of one sign vector,
and their joint conditional null distribution is the uniform distribution over the ``2**n_j`` sign
assignments of the first ``n_j`` magnitudes — enumerable exactly, no normal approximation. At look
``j`` the rejection region is ``{stat(S_j) >= c_j}`` among the sign paths not rejected at an earlier
look, with ``c_j`` the smallest value for which the paths rejected at looks ``1..j`` number at most
``alpha(t_j) * 2**n_j``. ``c_j`` depends only on the magnitudes of the first ``n_j`` seeds, so it is
known at look ``j``; and since the later magnitudes do not change the conditional probability of an
earlier rejection, ``P(reject by look K | all magnitudes) <= alpha(1) = alpha``, hence also
unconditionally. Alpha a discrete look cannot use (e.g. 6 seeds two-sided can only reject at
``p = 2/64``) is carried forward: the budget is cumulative. The seeds' order matters — the first
``n_1`` differences are the look-1 seeds — so differences are passed in the order seeds were run.

**Families.** A family of ``m`` hypotheses (each a sequential test as above) is tested by the closure
principle with Bonferroni intersection tests: an intersection ``H_I`` is rejected at the first look
at which some member crosses its boundary for the spending ``alpha(t) / |I|``; ``H_i`` is rejected
once every ``H_I`` with ``i in I`` is. Each intersection test has level ``|I| * alpha/|I| = alpha``
by the union bound, whatever the dependence between hypotheses (they share seeds), so the
family-wise error is at most ``alpha`` over all looks. Because the level-``alpha/s`` boundary only
depends on ``s = |I|``, the ``2**m`` intersections need not be enumerated: ``H_i`` is rejected iff for
every ``s`` it crossed at level ``alpha/s`` or fewer than ``s - 1`` other hypotheses have not. This is
Holm's step-down carried through the looks (with one primary, ``m = 1``, it is the single test at
``alpha``). It does not assume that the exact discrete boundaries are monotone in ``alpha`` — the
condition under which the graphical shortcut of Maurer & Bretz (Stat. Biopharm. Res. 5:311–320,
2013) would apply — which is why the closure is written out.

**Futility** (optional, ``futility=p``): at an interim look an undecided hypothesis whose fixed-sample
exact p-value exceeds ``p`` stops, accepted. Non-binding: the efficacy boundaries ignore it, and
stopping without rejecting can only lower the error rates above.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from analysis.power import smallest_pvalue
from analysis.signflip import (
    RTOL,
    check_alternative,
    count_pairs_at_least,
    observed_statistic,
    signed_sums,
    signflip_pvalues,
)

__all__ = [
    "HypothesisDecision",
    "LookPlan",
    "OperatingCharacteristics",
    "SPENDING_RULES",
    "SequentialDecision",
    "SequentialDesign",
    "critical_means",
    "decide_at_look",
    "operating_characteristics",
    "plan_looks",
    "spent_alpha",
]

SPENDING_RULES = ("obrien_fleming", "pocock")
# Exact enumeration: the sign paths up to the next-to-last look and the last look's new seeds are
# each materialised (2**n per hypothesis); beyond this the design is refused rather than approximated.
MAX_ENUMERATED_SEEDS = 22
_PTOL = 1e-12  # budgets alpha * 2**n are floored with this slack (alpha/m is rarely a binary fraction)


def spent_alpha(t, alpha: float, rule: str):
    """Cumulative alpha spent at information fraction ``t`` in (0, 1] (Lan & DeMets 1983)."""
    t = np.asarray(t, dtype=float)
    if rule == "obrien_fleming":
        return 2.0 - 2.0 * norm.cdf(norm.ppf(1.0 - alpha / 2.0) / np.sqrt(t))
    if rule == "pocock":
        return alpha * np.log1p((math.e - 1.0) * t)
    raise ValueError(f"spending must be one of {SPENDING_RULES}, got {rule!r}")


def _cumulative_alpha(looks, alpha, rule):
    spent = spent_alpha(np.asarray(looks) / looks[-1], alpha, rule)
    spent[-1] = alpha  # alpha(1) = alpha, without rounding
    return spent


@dataclass(frozen=True)
class LookPlan:
    """One look: ``n`` seeds, information ``t = n / n_K``, cumulative ``alpha_spent`` (at the design's
    alpha) and ``alpha_spent_first_step`` (at alpha/m, Holm's first step), the exact test's floor
    ``smallest_pvalue`` at ``n``, and ``attainable``: whether the most extreme outcome could be
    rejected here at alpha/m (if not, this look can only stop for futility)."""

    look: int
    n: int
    information: float
    alpha_spent: float
    alpha_spent_first_step: float
    smallest_pvalue: float
    attainable: bool


@dataclass(frozen=True)
class SequentialDesign:
    """What :func:`plan_looks` fixed before any data: looks, spending rule, alpha, family size."""

    looks: tuple[int, ...]
    alpha: float
    spending: str
    alternative: str
    family_size: int
    futility: float | None
    rows: tuple[LookPlan, ...]

    @property
    def max_n(self) -> int:
        return self.looks[-1]

    def cumulative_alpha(self, level_divisor: int = 1) -> np.ndarray:
        """Cumulative alpha at each look for the spending ``alpha(t) / level_divisor``; exactly
        ``alpha / level_divisor`` at the last look."""
        return _cumulative_alpha(self.looks, self.alpha, self.spending) / level_divisor

    def budgets(self, level_divisor: int = 1) -> np.ndarray:
        """Sign paths that may be rejected by each look: ``floor(alpha_j * 2**n_j)``."""
        alphas = self.cumulative_alpha(level_divisor)
        return np.array([math.floor(a * 2.0**n * (1 + _PTOL)) for a, n in zip(alphas, self.looks)], dtype=np.int64)


def plan_looks(looks: Sequence[int], alpha: float = 0.05, spending: str = "obrien_fleming",
               alternative: str = "two-sided", family_size: int = 1, futility: float | None = None) -> SequentialDesign:
    """A group-sequential design with looks at the given seed counts (e.g. ``[6, 10, 16]``).

    ``family_size`` is 1 for a primary, ``m`` for a Holm family of ``m``; ``futility`` an optional
    non-binding futility p-value (see the module docstring). Raises ValueError for looks that are
    not strictly increasing positive integers, or too large to enumerate exactly.
    """
    check_alternative(alternative)
    looks = tuple(int(n) for n in looks)
    if not looks or looks[0] < 1 or any(b <= a for a, b in zip(looks, looks[1:])):
        raise ValueError(f"looks must be strictly increasing positive seed counts, got {list(looks)}")
    widest = max([looks[-2] if len(looks) > 1 else 0, looks[-1] - (looks[-2] if len(looks) > 1 else 0)])
    if widest > MAX_ENUMERATED_SEEDS:
        raise ValueError(f"looks {list(looks)}: exact enumeration supports at most {MAX_ENUMERATED_SEEDS} seeds up to "
                         f"the next-to-last look and {MAX_ENUMERATED_SEEDS} new seeds at the last")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if int(family_size) < 1:
        raise ValueError(f"family_size must be >= 1, got {family_size}")
    if futility is not None and not 0 < futility < 1:
        raise ValueError(f"futility must be a p-value in (0, 1), got {futility}")
    spent = _cumulative_alpha(looks, alpha, spending)
    rows = tuple(
        LookPlan(look=j + 1, n=n, information=n / looks[-1], alpha_spent=float(a),
                 alpha_spent_first_step=float(a / family_size), smallest_pvalue=smallest_pvalue(n, alternative),
                 attainable=bool(smallest_pvalue(n, alternative) <= a / family_size * (1 + _PTOL)))
        for j, (n, a) in enumerate(zip(looks, spent))
    )
    return SequentialDesign(looks=looks, alpha=float(alpha), spending=spending, alternative=alternative,
                            family_size=int(family_size), futility=futility, rows=rows)


def _critical_values(stat, excluded, allowed, tolerance):
    """Per row b and level l: the smallest c such that the paths not in ``excluded[b, l]`` with
    ``stat >= c - tol`` number at most ``allowed[b, l]`` (+inf when not even the most extreme group
    of tied paths fits). One sort of ``stat`` serves every level."""
    order = np.argsort(stat, axis=1)
    values = np.take_along_axis(stat, order, axis=1)
    width = values.shape[1]
    new_group = np.ones(values.shape, dtype=bool)
    new_group[:, 1:] = np.diff(values, axis=1) > tolerance[:, None]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(width), 0), axis=1)
    is_open = ~np.take_along_axis(excluded, order[:, None, :], axis=2)
    # open paths at sorted positions >= k: all open paths less those before k
    open_from = is_open.sum(axis=2, keepdims=True, dtype=np.int32) - np.cumsum(is_open, axis=2, dtype=np.int32)
    open_from += is_open
    at_least = np.take_along_axis(open_from, np.broadcast_to(group_start[:, None, :], is_open.shape), axis=2)
    fits = is_open & (at_least <= allowed[..., None])  # a suffix of the open paths: counts fall with c
    first = np.argmax(fits, axis=2)
    c = np.take_along_axis(values, first, axis=1)
    return np.where(fits.any(axis=2), c, np.inf)


def _first_crossings(diffs, looks, budgets, alternative, last_boundary=False):
    """Exact sequential test of each row at each of L levels: the 0-based look at which it first
    crosses (``len(looks)`` when it never does), shape (B, L), and the critical sums ``c_j``,
    shape (B, L, K) (NaN at the last look unless ``last_boundary``, which enumerates all
    ``2**n_K`` paths instead of counting by meet in the middle). ``budgets[b, l, j]`` is how many of
    the ``2**n_j`` sign paths row b may reject by look j at level l."""
    d = np.asarray(diffs, dtype=float)
    rows, n_looks = d.shape[0], len(looks)
    budgets = np.asarray(budgets).reshape(rows, -1, n_looks)
    levels = budgets.shape[1]
    magnitudes = np.abs(d)
    prefix = np.zeros((rows, 1))
    excluded = np.zeros((rows, levels, 1), dtype=bool)
    first = np.full((rows, levels), n_looks)
    boundaries = np.full((rows, levels, n_looks), np.nan)
    for j, n in enumerate(looks):
        block = signed_sums(magnitudes[:, (looks[j - 1] if j else 0):n])
        observed = observed_statistic(d[:, :n].sum(axis=1), alternative)[:, None]
        tolerance = RTOL * magnitudes[:, :n].sum(axis=1)
        if j < n_looks - 1 or last_boundary:
            prefix = (prefix[:, :, None] + block[:, None, :]).reshape(rows, -1)
            excluded = np.repeat(excluded, block.shape[1], axis=2)  # same path order as the reshape
            stat = observed_statistic(prefix, alternative)
            c = _critical_values(stat, excluded, budgets[:, :, j] - excluded.sum(axis=2), tolerance)
            crossed = observed >= c - tolerance[:, None]
            excluded |= stat[:, None, :] >= (c - tolerance[:, None])[:, :, None]
            boundaries[:, :, j] = c
        else:  # last look, decision only: count the paths at least as extreme as the observed one
            rejected_before = excluded.sum(axis=2) * block.shape[1]
            count = count_pairs_at_least(prefix, block, observed[:, 0] - tolerance, alternative, left_excluded=excluded)
            crossed = rejected_before + count <= budgets[:, :, j]
        first = np.where((first == n_looks) & crossed, j, first)
    return first, boundaries


def _chunked_first_crossings(diffs, looks, budgets, alternative, max_elements=1 << 22):
    """:func:`_first_crossings` over row chunks that keep each path array near ``max_elements``."""
    rows, levels = budgets.shape[:2]
    last = looks[-1] - (looks[-2] if len(looks) > 1 else 0)
    widest = 2 ** max(looks[-2] if len(looks) > 1 else 0, last) * levels
    chunk = max(1, max_elements // widest)
    first = np.empty((rows, levels), dtype=int)
    for start in range(0, rows, chunk):
        first[start:start + chunk], _ = _first_crossings(diffs[start:start + chunk], looks,
                                                         budgets[start:start + chunk], alternative)
    return first


def _closed_test(crossed):
    """Closure over Bonferroni intersections. ``crossed[..., h, s-1]``: hypothesis h crossed its
    level-alpha/s boundary. Returns ``rejected[..., h]`` (see the module docstring)."""
    m = crossed.shape[-1]
    not_crossed = ~crossed
    others_open = not_crossed.sum(axis=-2, keepdims=True) - not_crossed  # other hypotheses, per level
    fewer_than_needed = others_open < np.arange(m)  # fewer than s - 1 others still open at level s
    return (crossed | fewer_than_needed).all(axis=-1)


@dataclass(frozen=True)
class HypothesisDecision:
    """One hypothesis after a look. ``status``: ``"rejected"``, ``"futility"`` (stopped, accepted),
    ``"not_rejected"`` (the last look passed without rejection) or ``"continue"`` (give it the next
    seeds). ``look``/``n``: the look (1-based) and seed count that decided it, or the current ones
    while it continues; ``mean_difference`` at that look; ``critical_mean``: the exact boundary on
    ``mean(d)`` (on ``|mean|`` two-sided) at that look for its first Holm step, alpha(t)/m — given the
    observed magnitudes, as the boundaries are conditional on them (NaN beyond
    ``MAX_ENUMERATED_SEEDS`` seeds)."""

    name: str
    status: str
    look: int
    n: int
    mean_difference: float
    critical_mean: float

    @property
    def decided(self) -> bool:
        return self.status != "continue"


@dataclass(frozen=True)
class SequentialDecision:
    """All hypotheses of a family (or one primary) after ``look``; ``next_n`` is the next look's seed
    count for those that continue (None after the last look)."""

    look: int
    n: int
    decisions: tuple[HypothesisDecision, ...]
    design: SequentialDesign

    @property
    def undecided(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.decisions if not d.decided)

    @property
    def next_n(self) -> int | None:
        return self.design.looks[self.look] if self.look < len(self.design.looks) and self.undecided else None

    def __getitem__(self, name: str) -> HypothesisDecision:
        for decision in self.decisions:
            if decision.name == name:
                return decision
        raise KeyError(name)


def critical_means(diffs, design: SequentialDesign, level_divisor: int = 1) -> np.ndarray:
    """Exact boundary on ``mean(d)`` (``|mean|`` two-sided; ``-mean`` for "less") at each look that
    ``diffs`` reach, for the spending ``alpha(t)/level_divisor``, given the observed magnitudes
    (``inf``: that look cannot reject). Enumerates every path, for reports and checks, so at most
    ``MAX_ENUMERATED_SEEDS`` seeds."""
    d = np.asarray(diffs, dtype=float).ravel()
    looks = [n for n in design.looks if n <= d.size]
    if looks[-1] > MAX_ENUMERATED_SEEDS:
        raise ValueError(f"critical means enumerate all 2**n paths: at most {MAX_ENUMERATED_SEEDS} seeds, "
                         f"got {looks[-1]}")
    budgets = design.budgets(level_divisor)[None, : len(looks)]
    _, c = _first_crossings(d[None, : looks[-1]], looks, budgets, design.alternative, last_boundary=True)
    return c[0, 0] / np.asarray(looks)


def _pvalue(d, alternative):
    return float(signflip_pvalues(d[None, :], alternative)[0])


def decide_at_look(diffs_by_hypothesis: Mapping[str, Sequence[float]], look: int,
                   design: SequentialDesign) -> SequentialDecision:
    """Decisions for a family (one entry: a primary) after ``look`` (1-based) of ``design``.

    ``diffs_by_hypothesis[name]`` are that hypothesis's paired differences in seed order; an
    undecided hypothesis needs at least ``design.looks[look-1]`` of them, one decided at an earlier
    look needs only the seeds up to that look (later ones are ignored). Stateless: the looks
    ``1..look`` are replayed, so the same data give the same decisions whenever this is called.
    """
    names = list(diffs_by_hypothesis)
    m = len(names)
    if m != design.family_size:
        raise ValueError(f"design is for a family of {design.family_size}, got {m} hypotheses: {names}")
    if not 1 <= look <= len(design.looks):
        raise ValueError(f"look must be in 1..{len(design.looks)}, got {look}")
    data = {h: np.asarray(diffs_by_hypothesis[h], dtype=float).ravel() for h in names}
    for h, d in data.items():
        if not np.isfinite(d).all():
            raise ValueError(f"{h}: paired differences contain NaN or inf")
    budgets = np.stack([design.budgets(s) for s in range(1, m + 1)])  # (levels, looks)
    crossed = np.zeros((m, m), dtype=bool)  # by the current look
    status = dict.fromkeys(names, "continue")
    decided_at = {}
    for j in range(1, look + 1):
        n = design.looks[j - 1]
        active = [h for h in names if status[h] == "continue"]
        for h in active:
            if data[h].size < n:
                raise ValueError(f"{h}: look {j} needs {n} seeds, got {data[h].size}")
        for i, h in enumerate(names):
            if h in active:
                first, _ = _first_crossings(data[h][None, :n], design.looks[:j], budgets[None, :, :j],
                                            design.alternative)
                crossed[i] = first[0] < j
        rejected = _closed_test(crossed)
        for i, h in enumerate(names):
            if h not in active:
                continue
            if rejected[i]:
                status[h] = "rejected"
            elif j == len(design.looks):
                status[h] = "not_rejected"
            elif design.futility is not None and _pvalue(data[h][:n], design.alternative) > design.futility:
                status[h] = "futility"
            if status[h] != "continue" or j == look:
                decided_at[h] = j
    decisions = []
    for h in names:
        j = decided_at[h]
        n = design.looks[j - 1]
        decisions.append(HypothesisDecision(
            name=h, status=status[h], look=j, n=n, mean_difference=float(data[h][:n].mean()),
            critical_mean=float(critical_means(data[h][:n], design, m)[j - 1]) if n <= MAX_ENUMERATED_SEEDS else np.nan,
        ))
    return SequentialDecision(look=look, n=design.looks[look - 1], decisions=tuple(decisions), design=design)


@dataclass(frozen=True)
class OperatingCharacteristics:
    """Simulated behaviour of a design: per hypothesis, ``rejection_rate`` and ``expected_n`` (seeds
    it used: the look that rejected it, else the last), ``stop_probabilities[h, j]`` that it was
    rejected at look j; ``familywise_error`` the rate of rejecting any hypothesis whose effect is
    0; ``n_studies`` simulated (Monte-Carlo error of a rate r: ``sqrt(r (1 - r) / n_studies)``)."""

    effects: tuple[float, ...]
    rejection_rate: tuple[float, ...]
    expected_n: tuple[float, ...]
    stop_probabilities: np.ndarray
    familywise_error: float
    n_studies: int


def operating_characteristics(design: SequentialDesign, effects: Sequence[float] = (0.0,),
                              n_studies: int = 10_000, seed: int = 0) -> OperatingCharacteristics:
    """Simulate ``n_studies`` studies of ``design`` (futility not applied): hypothesis h's paired
    differences are iid ``N(effects[h], 1)``, independent across hypotheses (the sign-flip test is
    scale-invariant, so ``effects`` are standardised effects ``mean/sd``). Vectorised: every
    hypothesis of every study is one row of the exact sequential test, its Holm levels sharing
    the enumerated paths."""
    m = len(effects)
    if m != design.family_size:
        raise ValueError(f"design is for a family of {design.family_size}, got {m} effects")
    rng = np.random.default_rng(seed)
    d = np.asarray(effects, dtype=float)[None, :, None] + rng.standard_normal((n_studies, m, design.max_n))
    budgets = np.stack([design.budgets(s) for s in range(1, m + 1)])  # (levels, looks)
    rows = d.reshape(-1, design.max_n)  # (study, hypothesis); the Holm levels share each row's paths
    row_budgets = np.broadcast_to(budgets[None], (rows.shape[0],) + budgets.shape)
    first = _chunked_first_crossings(rows, design.looks, row_budgets, design.alternative).reshape(n_studies, m, m)
    n_looks = len(design.looks)
    rejected_at = np.full((n_studies, m), n_looks)
    for j in range(n_looks):  # closure is monotone in the look: the first look at which it holds
        now = _closed_test(first <= j)
        rejected_at = np.where((rejected_at == n_looks) & now, j, rejected_at)
    looks = np.asarray(design.looks)
    used = np.where(rejected_at < n_looks, looks[np.minimum(rejected_at, n_looks - 1)], design.max_n)
    stop = np.stack([(rejected_at == j).mean(axis=0) for j in range(n_looks)], axis=1)
    null = np.asarray(effects) == 0
    fwer = float(((rejected_at < n_looks) & null).any(axis=1).mean()) if null.any() else 0.0
    return OperatingCharacteristics(
        effects=tuple(float(e) for e in effects), rejection_rate=tuple((rejected_at < n_looks).mean(axis=0).tolist()),
        expected_n=tuple(used.mean(axis=0).tolist()), stop_probabilities=stop, familywise_error=fwer,
        n_studies=int(n_studies),
    )
