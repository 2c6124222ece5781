"""analysis.paired against independent oracles: scipy's exact permutation test, brute-force
enumeration, statsmodels' Holm, scipy's percentile bootstrap."""

import itertools
import warnings

import numpy as np
import pytest
import scipy.stats as st
from statsmodels.stats.multitest import multipletests

from analysis.paired import (
    DesignCannotReachAlpha,
    bootstrap_ci,
    holm,
    min_attainable_pvalue,
    paired_permutation_test,
    warn_if_alpha_unreachable,
)


def scipy_exact_paired_p(a, b):
    res = st.permutation_test((a, b), lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples",
                              alternative="two-sided", n_resamples=np.inf, vectorized=True)
    return res.pvalue, res.statistic


@pytest.mark.parametrize("n", [2, 3, 5, 6, 8, 11])
@pytest.mark.parametrize("shift", [0.0, 0.4, 1.5])
def test_pvalue_equals_scipy_exact_permutation_test(n, shift):
    rng = np.random.default_rng(100 * n + int(10 * shift))
    a = rng.normal(size=n)
    b = a - shift + rng.normal(size=n)
    result = paired_permutation_test(a, b)
    p_scipy, stat_scipy = scipy_exact_paired_p(a, b)
    assert result.pvalue == pytest.approx(p_scipy, abs=1e-12)
    assert result.statistic == pytest.approx(stat_scipy)
    assert result.n == n


def brute_force_p(d):
    """#{s in {-1,1}^n : |mean(s d)| >= |mean(d)|} / 2^n by explicit enumeration."""
    d = np.asarray(d, dtype=float)
    signs = np.array(list(itertools.product([-1.0, 1.0], repeat=d.size)))
    null = np.abs(signs @ d)
    return np.count_nonzero(null >= abs(d.sum()) - 1e-9 * np.abs(d).sum()) / 2.0**d.size


@pytest.mark.parametrize("n", [1, 4, 9, 14])
def test_pvalue_equals_brute_force_enumeration(n):
    rng = np.random.default_rng(n)
    d = rng.normal(0.3, 1.0, size=n)
    assert paired_permutation_test(d, np.zeros(n)).pvalue == pytest.approx(brute_force_p(d), abs=1e-15)


def test_ties_in_magnitude_count_as_extreme():
    # |d| all equal: every assignment with the same number of + signs ties with the observed one
    d = np.array([0.1, 0.1, 0.1, -0.1, 0.1, 0.1])
    # observed |sum| = 0.4 (5 plus, 1 minus); |sum| >= 0.4 iff #plus in {0,1,5,6}: 1+6+6+1 = 14 of 64
    assert paired_permutation_test(d, np.zeros(6)).pvalue == pytest.approx(14 / 64)


def test_six_all_positive_differences_give_the_floor():
    a = np.array([1.21, 1.22, 1.23, 1.20, 1.25, 1.22])
    result = paired_permutation_test(a + np.array([0.01, 0.02, 0.005, 0.03, 0.01, 0.001]), a)
    assert result.pvalue == 0.03125
    assert result.min_pvalue == 0.03125
    assert result.n_positive == 6 and result.n_negative == 0
    assert result.significant and result.can_reach_alpha


def test_identical_conditions_give_p_one_and_zero_statistic():
    a = np.linspace(0, 1, 6)
    result = paired_permutation_test(a, a)
    assert result.pvalue == 1.0
    assert result.statistic == 0.0


def test_sign_of_statistic_is_a_minus_b():
    assert paired_permutation_test([1, 2, 3], [2, 4, 6]).statistic == pytest.approx(-2.0)


def test_min_attainable_pvalue():
    assert min_attainable_pvalue(6) == 0.03125
    assert min_attainable_pvalue(5) == 0.0625
    assert min_attainable_pvalue(1) == 1.0
    assert np.isnan(min_attainable_pvalue(0))
    # the floor is attained: one all-positive design of each size
    for n in (3, 5, 7):
        assert paired_permutation_test(np.arange(1, n + 1) + 0.5, np.zeros(n)).pvalue == min_attainable_pvalue(n)


def test_small_designs_cannot_reach_alpha_and_say_so():
    result = paired_permutation_test([1.0, 2.0, 3.0, 4.0, 5.0], [0.0] * 5)
    assert result.pvalue == 0.0625 and not result.can_reach_alpha and not result.significant
    with pytest.warns(DesignCannotReachAlpha, match="smallest attainable p is 0.0625 > alpha=0.05"):
        assert warn_if_alpha_unreachable(5, 0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_if_alpha_unreachable(6, 0.05)


def test_nan_policy():
    a, b = np.array([1.0, np.nan, 3.0, 4.0]), np.array([0.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        paired_permutation_test(a, b)
    omitted = paired_permutation_test(a, b, nan_policy="omit")
    assert omitted.n == 3
    assert omitted.pvalue == paired_permutation_test([1.0, 3.0, 4.0], [0.0, 1.0, 1.0]).pvalue


def test_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="equal length"):
        paired_permutation_test([1, 2, 3], [1, 2])


def test_sixteen_pairs_match_scipy_exact():
    rng = np.random.default_rng(7)
    a, b = rng.normal(0.2, 1, 16), np.zeros(16)
    result = paired_permutation_test(a, b)
    assert result.pvalue == pytest.approx(scipy_exact_paired_p(a, b)[0], abs=1e-12)


def test_forty_pairs_are_exact():
    d = np.random.default_rng(8).normal(0.1, 1, 40)
    p = paired_permutation_test(d, np.zeros(40)).pvalue
    # exact enumeration: a multiple of 2^-40 (2^40 assignments), not a Monte Carlo fraction
    assert p * 2.0**40 == round(p * 2.0**40)
    with pytest.raises(ValueError, match="at most 40"):
        paired_permutation_test(np.ones(41), np.zeros(41))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_holm_equals_statsmodels(seed):
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(0, 0.06, 5), rng.uniform(0, 1, 7), [0.03125, 0.03125]])
    rng.shuffle(p)
    expected = multipletests(p, method="holm")[1]
    np.testing.assert_allclose(holm(p), expected, rtol=0, atol=1e-12)


def test_holm_hand_example_and_nan_members():
    # sorted 0.01, 0.02, 0.04 -> 3*0.01 = 0.03, 2*0.02 = 0.04, 1*0.04 = 0.04
    np.testing.assert_allclose(holm([0.04, 0.01, 0.02]), [0.04, 0.03, 0.04])
    out = holm([0.01, np.nan, 0.02])
    assert np.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.02])
    assert holm([0.6, 0.7]).max() == 1.0  # capped


def test_bootstrap_ci_matches_scipy_percentile_bootstrap():
    rng = np.random.default_rng(3)
    diffs = rng.normal(0.01, 0.004, size=6)
    low, high = bootstrap_ci(diffs, level=0.95, n_resamples=10_000, seed=11)
    ref = st.bootstrap((diffs,), np.mean, method="percentile", n_resamples=10_000,
                       rng=np.random.default_rng(11), vectorized=True).confidence_interval
    assert low == pytest.approx(ref.low, abs=2e-4)
    assert high == pytest.approx(ref.high, abs=2e-4)
    assert low <= diffs.mean() <= high


def test_bootstrap_ci_equals_plain_numpy_reimplementation():
    diffs = np.array([0.012, 0.007, 0.011, 0.009, 0.015, 0.004, 0.010])
    rng = np.random.default_rng(5)
    means = np.array([diffs[rng.integers(0, 7, 7)].mean() for _ in range(2000)])
    expected = np.percentile(means, [5, 95])
    assert bootstrap_ci(diffs, level=0.90, n_resamples=2000, seed=5) == pytest.approx(tuple(expected))


def test_bootstrap_ci_is_reproducible_and_degenerate_cases():
    d = [0.1, 0.2, 0.3]
    assert bootstrap_ci(d, seed=1) == bootstrap_ci(d, seed=1)
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert all(np.isnan(bootstrap_ci([np.nan])))
    with pytest.raises(ValueError):
        bootstrap_ci(d, level=1.5)
