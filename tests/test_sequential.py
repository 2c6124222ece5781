"""analysis.sequential: exact boundaries against a brute-force enumeration written out here, Holm at a
single look, and by simulation: alpha kept over all looks, fewer seeds than the fixed-n design."""

import itertools
import math

import numpy as np
import pytest
from scipy.stats import norm

from analysis.paired import holm, paired_permutation_test
from analysis.sequential import (
    critical_means,
    decide_at_look,
    operating_characteristics,
    plan_looks,
    spent_alpha,
)
from analysis.signflip import signflip_pvalues


def brute_force_first_crossing(d, looks, alpha, spending, alternative):
    """The spending rule by definition, enumerating every sign vector of all n_K seeds with equal
    weight: at look j reject the paths not yet rejected whose statistic is in the largest upper set
    keeping P(rejected by look j) <= alpha(t_j); return the first look (0-based) the observed path is in."""
    d = np.asarray(d, dtype=float)
    n_max = looks[-1]
    paths = np.array(list(itertools.product([1.0, -1.0], repeat=n_max))) * np.abs(d)
    stat = {"two-sided": np.abs, "greater": lambda x: x, "less": lambda x: -x}[alternative]
    rejected = np.zeros(len(paths), dtype=bool)
    for j, n in enumerate(looks):
        allowed = math.floor(spent_alpha(n / n_max, alpha, spending) * len(paths) * (1 + 1e-12)) if j < len(looks) - 1 \
            else math.floor(alpha * len(paths) * (1 + 1e-12))
        s = stat(paths[:, :n].sum(axis=1))
        tol = 1e-9 * np.abs(d[:n]).sum()
        region = np.zeros(len(paths), dtype=bool)
        for c in sorted(set(np.round(s[~rejected], 12)), reverse=True):  # grow the upper set value by value
            candidate = ~rejected & (s >= c - tol)
            if rejected.sum() + candidate.sum() > allowed:
                break
            region = candidate
        if stat(d[:n].sum()) >= (s[region].min() - tol if region.any() else np.inf):
            return j
        rejected |= region
    return len(looks)


@pytest.mark.parametrize(("looks", "alpha", "spending", "alternative"), [
    ((3, 5, 8), 0.3, "pocock", "two-sided"),
    ((3, 5, 8), 0.3, "obrien_fleming", "greater"),
    ((2, 6, 9), 0.2, "pocock", "less"),
    ((4, 9), 0.1, "obrien_fleming", "two-sided"),
    ((4, 6, 9), 0.4, "pocock", "greater"),
    ((4, 7, 10), 0.3, "pocock", "two-sided"),
])
def test_boundaries_equal_brute_force_enumeration(looks, alpha, spending, alternative):
    design = plan_looks(looks, alpha=alpha, spending=spending, alternative=alternative)
    rng = np.random.default_rng(len(looks) + looks[-1])
    for k in range(25):
        d = rng.normal(0.6 if k % 2 else -0.6, 1.0, looks[-1])
        if k % 3 == 0:
            d = np.round(d)  # ties in magnitude, zeros
        expected = brute_force_first_crossing(d, looks, alpha, spending, alternative)
        decision = decide_at_look({"h": d}, len(looks), design)["h"]
        got = decision.look - 1 if decision.status == "rejected" else len(looks)
        assert got == expected, (d, got, expected)


def test_a_single_look_family_is_holm_on_exact_pvalues():
    rng = np.random.default_rng(11)
    for _ in range(40):
        effects = rng.choice([0.0, 0.4, 1.0], size=4)
        diffs = {f"h{i}": rng.normal(e, 1.0, 9) for i, e in enumerate(effects)}
        design = plan_looks([9], alpha=0.05, family_size=4)
        decision = decide_at_look(diffs, 1, design)
        p = [paired_permutation_test(d, np.zeros(9)).pvalue for d in diffs.values()]
        expected = holm(p) <= 0.05
        assert [decision[h].status == "rejected" for h in diffs] == list(expected)


def test_spending_functions_are_lan_demets():
    assert spent_alpha(1.0, 0.05, "obrien_fleming") == pytest.approx(0.05)
    assert spent_alpha(0.5, 0.05, "obrien_fleming") == pytest.approx(2 * norm.sf(1.959964 * math.sqrt(2)), rel=1e-5)
    assert spent_alpha(0.5, 0.05, "pocock") == pytest.approx(0.05 * math.log(1 + (math.e - 1) / 2))


def test_plan_says_which_looks_can_reject():
    design = plan_looks([6, 10, 16], alpha=0.05, spending="obrien_fleming")
    # O'Brien-Fleming spends 0.0014 by 6 of 16 seeds; the exact test's floor at 6 is 2/64
    assert [row.attainable for row in design.rows] == [False, True, True]
    assert plan_looks([6, 10, 16], alternative="greater", spending="pocock").rows[0].attainable  # 1/64 <= .0249
    with pytest.raises(ValueError, match="strictly increasing"):
        plan_looks([6, 6, 10])
    with pytest.raises(ValueError, match="spending"):
        plan_looks([6, 10], spending="haybittle")


def _mc_bound(rate, n):
    return rate + 3 * math.sqrt(rate * (1 - rate) / n)


@pytest.mark.parametrize(("spending", "alternative"), [("obrien_fleming", "two-sided"), ("pocock", "greater")])
def test_null_rejection_rate_is_at_most_alpha_over_all_looks(spending, alternative):
    design = plan_looks([6, 10, 16], alpha=0.05, spending=spending, alternative=alternative)
    oc = operating_characteristics(design, effects=(0.0,), n_studies=10_000, seed=5)
    rate = oc.rejection_rate[0]
    assert rate <= _mc_bound(0.05, 10_000), rate
    assert rate >= 0.03, rate  # the design does use its alpha (discreteness costs a little)
    assert oc.stop_probabilities[0, 1:].sum() > 0.01  # and not only at the last look


def test_familywise_error_of_a_family_is_at_most_alpha():
    design = plan_looks([5, 8, 12], alpha=0.05, spending="pocock", family_size=2)
    oc = operating_characteristics(design, effects=(0.0, 0.0), n_studies=10_000, seed=6)
    assert oc.familywise_error <= _mc_bound(0.05, 10_000), oc.familywise_error
    assert oc.familywise_error >= 0.03  # Holm-type closure spends nearly all of alpha under the global null
    mixed = operating_characteristics(design, effects=(0.0, 1.2), n_studies=2000, seed=7)
    assert mixed.familywise_error <= _mc_bound(0.05, 2000), mixed.familywise_error
    assert mixed.rejection_rate[1] > 0.8  # the true effect is still found


def test_sequential_design_uses_fewer_seeds_than_fixed_n_with_the_same_power():
    effect = 1.0
    design = plan_looks([6, 10, 16], alpha=0.05, spending="pocock")
    oc = operating_characteristics(design, effects=(effect,), n_studies=4000, seed=7)
    power = oc.rejection_rate[0]
    rng = np.random.default_rng(8)
    fixed = {n: np.mean(signflip_pvalues(rng.normal(effect, 1.0, (4000, n))) <= 0.05) for n in range(6, 17)}
    n_fixed = min(n for n, p in fixed.items() if p >= power - 3 * math.sqrt(power * (1 - power) / 4000))
    assert oc.expected_n[0] < n_fixed, (oc.expected_n, n_fixed, power, fixed)


def test_decisions_say_which_look_decided_and_stop_decided_hypotheses():
    rng = np.random.default_rng(3)
    strong, null = rng.normal(2.0, 1.0, 16), rng.normal(0.0, 1.0, 16)
    design = plan_looks([6, 10, 16], alpha=0.05, spending="pocock", family_size=2)
    after_2 = decide_at_look({"strong": strong, "null": null}, 2, design)
    assert after_2["strong"].status == "rejected" and after_2["strong"].look == 2 and after_2["strong"].n == 10
    assert after_2.undecided == ("null",) and after_2.next_n == 16
    # the decided hypothesis needs no more seeds; the result does not change with the call
    final = decide_at_look({"strong": strong[:10], "null": null}, 3, design)
    assert final["strong"] == after_2["strong"]
    assert final["null"].status == "not_rejected" and final["null"].look == 3 and final.next_n is None
    assert abs(final["strong"].mean_difference) >= final["strong"].critical_mean
    with pytest.raises(ValueError, match="needs 16 seeds"):
        decide_at_look({"strong": strong[:10], "null": null[:10]}, 3, design)
    with pytest.raises(ValueError, match="family of 2"):
        decide_at_look({"strong": strong}, 1, design)


def test_futility_stops_an_interim_look_without_rejecting():
    d = np.array([0.3, -0.5, 0.2, -0.4, 0.1, -0.2, 0.3, -0.1, 0.2, -0.3])
    design = plan_looks([6, 10, 16], futility=0.5)
    decision = decide_at_look({"h": d}, 2, design)["h"]
    assert decision.status == "futility" and decision.look == 1


def test_critical_means_are_the_boundary_of_the_decision():
    rng = np.random.default_rng(4)
    design = plan_looks([6, 10, 16], spending="pocock")
    for _ in range(30):
        d = rng.normal(0.7, 1.0, 16)
        c = critical_means(d, design)
        crossed = [abs(d[:n].mean()) >= c[j] - 1e-12 for j, n in enumerate(design.looks)]
        first = crossed.index(True) + 1 if any(crossed) else None
        decision = decide_at_look({"h": d}, 3, design)["h"]
        assert (decision.look if decision.status == "rejected" else None) == first
