"""How many matched seeds a hypothesis needs (docs/methods.md §15): attainability and power from a pilot.

Pure functions returning frozen results, in the manner of ``analysis.paired``:

- :func:`smallest_pvalue` — the floor of the exact sign-flip test with ``n`` pairs, ``z`` of them
  zero: ``2 * 2**z / 2**n`` two-sided (docs/methods.md §7), half that one-sided;
- :func:`seeds_needed` — the fewest seeds at which a hypothesis's threshold (α for a primary, α/m for
  Holm's first step in a family of m) is attainable at all;
- :func:`power_from_pilot` — the power of the exact sign-flip test at several seed counts, estimated
  from a pilot's paired differences, with its uncertainty, and the smallest ``n`` reaching a target.

The test simulated is docs/methods.md §7's exact test itself (every sign assignment enumerated, by
:func:`analysis.signflip.signflip_pvalues`), not a normal approximation to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from analysis.paired import _PTOL, min_attainable_pvalue, seeds_needed  # seeds_needed: re-exported
from analysis.signflip import check_alternative, signflip_pvalues

__all__ = ["PowerAtN", "PowerEstimate", "power_from_pilot", "seeds_needed", "smallest_pvalue"]

DEFAULT_NS = (6, 8, 10, 12, 16, 20)
MODELS = ("normal", "bootstrap")
# Standardised effects beyond this are "all signs agree" for every n planned (P(Z < -50) = 0); the
# clip keeps an exactly constant pilot (sd = 0, effect infinite) finite.
_MAX_EFFECT = 50.0


def smallest_pvalue(n: int, alternative: str = "two-sided", zeros: int = 0) -> float:
    """Smallest p-value the exact sign-flip test can give with ``n`` pairs, ``zeros`` of them zero.

    Two-sided ``2 * 2**zeros / 2**n`` (docs/methods.md §7: only the observed assignment of the non-zero
    differences and its mirror image reach the maximal ``|sum|``; n = 6 gives 2/64 = 0.03125, one
    zero in six 0.0625), which is ``paired.min_attainable_pvalue(n - zeros)``; one-sided half that.
    All differences zero gives 1.
    """
    check_alternative(alternative)
    n, zeros = int(n), int(zeros)
    if n < 0 or not 0 <= zeros <= n:
        raise ValueError(f"need n >= 0 and 0 <= zeros <= n, got n={n}, zeros={zeros}")
    if n - zeros == 0:
        return 1.0
    return min_attainable_pvalue(n, zeros, alternative)


@dataclass(frozen=True)
class PowerAtN:
    """Estimated power at ``n`` seeds: ``power`` at the pilot's point estimate (Monte-Carlo standard
    error ``mc_se``), ``low``–``high`` its interval from the pilot's uncertainty; ``attainable`` is
    False when ``n`` seeds can never reach the threshold (the power is then exactly 0)."""

    n: int
    power: float
    mc_se: float
    low: float
    high: float
    attainable: bool


@dataclass(frozen=True)
class PowerEstimate:
    """Power of the exact sign-flip test at each planned ``n``, from a pilot of ``pilot_n`` seeds.

    ``effect`` is the pilot's standardised mean difference ``mean/sd`` (model "normal") or its mean
    difference (model "bootstrap"); ``recommended_n`` is the smallest planned ``n`` whose point
    estimate reaches ``target`` (None: none does), ``recommended_n_conservative`` the smallest whose
    interval's lower end does.
    """

    model: str
    alternative: str
    alpha: float
    family_size: int
    threshold: float
    target: float
    level: float
    pilot_n: int
    effect: float
    rows: tuple[PowerAtN, ...]
    recommended_n: int | None
    recommended_n_conservative: int | None
    n_sim: int

    def at(self, n: int) -> PowerAtN:
        for row in self.rows:
            if row.n == n:
                return row
        raise KeyError(f"n={n} was not planned (planned: {[r.n for r in self.rows]})")


def _rejection_rate(diffs: np.ndarray, threshold: float, alternative: str) -> np.ndarray:
    """Fraction of rows (last axis = seeds) rejected by the exact test at ``threshold``."""
    shape = diffs.shape[:-1]
    p = signflip_pvalues(diffs.reshape(-1, diffs.shape[-1]), alternative).reshape(shape)
    return (p <= threshold * (1 + _PTOL)).mean(axis=-1)


def power_from_pilot(
    diffs,
    ns=DEFAULT_NS,
    alpha: float = 0.05,
    family_size: int = 1,
    alternative: str = "two-sided",
    n_sim: int = 2000,
    seed: int = 0,
    model: str = "normal",
    target: float = 0.8,
    level: float = 0.95,
) -> PowerEstimate:
    """Power of the exact paired sign-flip test at each ``n`` in ``ns``, from pilot differences.

    ``diffs`` are a pilot's paired differences ``A - B`` over matched seeds (NaN dropped). The power
    is that of rejecting at ``alpha / family_size`` — for a family member this is the power of
    Holm's first step (Bonferroni), a lower bound for its power under Holm.

    Models (``model``):

    - ``"normal"`` (default): the differences of a future seed are ``N(mu, sigma)`` with the pilot's
      mean and sd. The sign-flip test is invariant to scaling the differences, so its power depends
      on the standardised effect ``delta = mu / sigma`` only; simulated data are ``delta + Z``.
      Uncertainty: a parametric bootstrap over the pilot (``n_boot = 4000`` pilots of the pilot's
      size drawn from ``N(delta, 1)``, each giving ``delta* = mean*/sd*``); the power is monotone in
      ``delta`` (in ``|delta|`` two-sided), so the ``level`` interval of the power is the power at
      the interval's ends of ``delta*``. With 3 pilot seeds ``sd`` has 2 degrees of freedom and
      this interval is typically most of [alpha, 1]: that is the honest answer.
    - ``"bootstrap"``: future differences are drawn with replacement from the pilot itself; the
      interval is the spread of the power over 100 bootstrap resamples of the pilot (each estimated
      from ``max(60, n_sim // 30)`` simulated data sets, so it includes that Monte-Carlo noise and
      is somewhat wider than the pilot's uncertainty alone).
      With few pilot seeds this is over-confident — three same-signed pilot differences can only
      produce same-signed simulated seeds, i.e. power 1 at every attainable ``n`` with a
      degenerate interval — which is why it is not the default.

    Each estimate simulates ``n_sim`` data sets (common random numbers across the interval's ends,
    so the row is monotone); ``mc_se = sqrt(p (1 - p) / n_sim)`` is the Monte-Carlo error of
    ``power``. ``recommended_n`` is the smallest ``n`` with ``power >= target``.
    """
    check_alternative(alternative)
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if not 0 < alpha <= 1 or not 0 < target < 1 or not 0 < level < 1:
        raise ValueError(f"need 0 < alpha <= 1, 0 < target < 1 and 0 < level < 1, got {alpha}, {target}, {level}")
    d = np.asarray(diffs, dtype=float).ravel()
    d = d[np.isfinite(d)]
    if d.size < 2:
        raise ValueError(f"a pilot needs at least 2 paired differences (3 or more advised), got {d.size}")
    ns = tuple(sorted({int(n) for n in ns}))
    if not ns or ns[0] < 1:
        raise ValueError(f"ns must be positive seed counts, got {ns}")
    threshold = alpha / int(family_size)
    rng = np.random.default_rng(seed)
    tails = [(1.0 - level) / 2.0, (1.0 + level) / 2.0]

    if model == "normal":
        sd = d.std(ddof=1)
        effect = float(np.sign(d.mean()) * _MAX_EFFECT if sd == 0 else d.mean() / sd)
        draws = rng.normal(effect if np.isfinite(effect) else 0.0, 1.0, size=(4000, d.size))
        boot = draws.mean(axis=1) / draws.std(axis=1, ddof=1)
        # "shift": the effect in the direction the test looks for (power increases with it)
        shift = {"two-sided": np.abs, "greater": lambda x: x, "less": np.negative}[alternative]
        low_shift, high_shift = np.quantile(shift(boot), tails)
        shifts = np.clip([shift(effect), low_shift, high_shift], -_MAX_EFFECT, _MAX_EFFECT)
        tested = "two-sided" if alternative == "two-sided" else "greater"
    else:
        effect = float(d.mean())
        n_outer, n_inner = 100, max(60, n_sim // 30)
        outer = d[rng.integers(0, d.size, size=(n_outer, d.size))]

    rows = []
    for n in ns:
        attainable = smallest_pvalue(n, alternative) <= threshold * (1 + _PTOL)
        if model == "normal":
            z = rng.standard_normal((n_sim, n))
            power, low, high = (float(_rejection_rate(s + z, threshold, tested)) for s in shifts)
        else:
            power = float(_rejection_rate(d[rng.integers(0, d.size, size=(n_sim, n))], threshold, alternative))
            picks = rng.integers(0, d.size, size=(n_outer, n_inner, n))
            per_pilot = _rejection_rate(np.take_along_axis(outer, picks.reshape(n_outer, -1), axis=1)
                                        .reshape(n_outer, n_inner, n), threshold, alternative)
            low, high = (float(v) for v in np.quantile(per_pilot, tails))
        rows.append(PowerAtN(n=n, power=power, mc_se=math.sqrt(power * (1 - power) / n_sim),
                             low=low, high=high, attainable=bool(attainable)))

    def smallest(key):
        return next((r.n for r in rows if key(r) >= target), None)

    return PowerEstimate(
        model=model, alternative=alternative, alpha=float(alpha), family_size=int(family_size),
        threshold=float(threshold), target=float(target), level=float(level), pilot_n=int(d.size),
        effect=effect, rows=tuple(rows), recommended_n=smallest(lambda r: r.power),
        recommended_n_conservative=smallest(lambda r: r.low), n_sim=int(n_sim),
    )
