"""analysis.signflip and analysis.power against hand arithmetic and independent oracles: the scalar
exact test in analysis.paired, scipy's exact permutation test, and direct simulation of the test."""

import numpy as np
import pytest
import scipy.stats as st

from analysis.paired import min_attainable_pvalue, paired_permutation_test
from analysis.power import power_from_pilot, seeds_needed, smallest_pvalue
from analysis.signflip import signflip_pvalues


@pytest.mark.parametrize("n", [1, 2, 5, 6, 9, 13])
def test_vectorised_pvalues_equal_the_scalar_exact_test(n):
    rng = np.random.default_rng(n)
    d = rng.normal(0.3, 1.0, size=(60, n))
    d[:20] = np.round(d[:20] * 2) / 2  # ties in magnitude and zero differences
    expected = [paired_permutation_test(row, np.zeros(n)).pvalue for row in d]
    np.testing.assert_allclose(signflip_pvalues(d), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("alternative", ["greater", "less"])
def test_one_sided_pvalues_equal_scipy_exact_permutation_test(alternative):
    rng = np.random.default_rng(7)
    d = rng.normal(0.2, 1.0, size=(25, 7))
    d[:8] = np.round(d[:8])
    expected = [st.permutation_test((row,), lambda x, axis: np.sum(x, axis=axis), permutation_type="samples",
                                    alternative=alternative, n_resamples=np.inf, vectorized=True).pvalue for row in d]
    np.testing.assert_allclose(signflip_pvalues(d, alternative), expected, rtol=0, atol=1e-12)


def test_seeds_needed_hand_cases():
    assert seeds_needed(0.05) == 6  # 2/64 = .03125 <= .05; five seeds: 2/32 = .0625
    assert seeds_needed(0.05, family_size=4) == 8  # .0125: 2/256 = .0078 yes, 2/128 = .0156 no
    assert seeds_needed(0.05, alternative="greater") == 5  # 1/32 = .03125; 1/16 = .0625
    assert seeds_needed(0.05, zeros=1) == 7  # one zero doubles the floor: 4/128 = .03125
    assert seeds_needed(0.03125) == 6  # the threshold itself is attainable (p <= alpha)
    assert seeds_needed(0.01) == 8  # 2/256 = .0078; 2/128 = .0156
    assert seeds_needed(0.05, family_size=2) == 7  # .025: 2/128 = .0156; 2/64 = .03125 too big


def test_smallest_pvalue_is_the_paired_floor_and_halves_one_sided():
    for n in range(1, 15):
        assert smallest_pvalue(n) == min_attainable_pvalue(n)
        assert smallest_pvalue(n, "less") == min_attainable_pvalue(n) / 2
    assert smallest_pvalue(6, zeros=1) == pytest.approx(0.0625)  # docs/methods.md §7: one zero in six
    # the floor is what the exact test returns when every non-zero difference agrees in sign
    assert paired_permutation_test([1, 2, 0, 3, 4, 5], np.zeros(6)).pvalue == smallest_pvalue(6, zeros=1)


def _pilot_with(mean, sd, size=5):
    """Pilot differences whose sample mean and sd (ddof=1) are exactly ``mean`` and ``sd``."""
    z = np.random.default_rng(size).normal(size=size)
    return mean + sd * (z - z.mean()) / z.std(ddof=1)


def _direct_power(mean, n, alpha, n_draws, seed):
    """Power of the exact test by a plain loop over fresh N(mean, 1) data sets, one scalar test each."""
    rng = np.random.default_rng(seed)
    hits = sum(paired_permutation_test(rng.normal(mean, 1.0, n), np.zeros(n)).pvalue <= alpha
               for _ in range(n_draws))
    return hits / n_draws


@pytest.mark.parametrize(("n", "family_size"), [(8, 1), (12, 1), (12, 4)])
def test_normal_model_power_matches_direct_simulation(n, family_size):
    pilot = _pilot_with(0.5, 1.0)  # standardised effect exactly 0.5
    estimate = power_from_pilot(pilot, ns=(n,), family_size=family_size, n_sim=3000, seed=1)
    assert estimate.effect == pytest.approx(0.5)
    direct = _direct_power(0.5, n, 0.05 / family_size, n_draws=1500, seed=2)
    row = estimate.at(n)
    se = np.sqrt(row.power * (1 - row.power) / 3000 + direct * (1 - direct) / 1500)
    assert abs(row.power - direct) <= 4 * se, (row.power, direct, se)
    assert row.low <= row.power <= row.high


def test_power_under_the_null_is_the_exact_size():
    estimate = power_from_pilot(_pilot_with(0.0, 1.0), ns=(6, 8, 10), n_sim=4000, seed=3)
    for row in estimate.rows:
        # continuous data: p takes the values 2k/2**n equally often, so P(p <= .05) = 2*floor(.05*2**n/2)/2**n
        size = 2 * np.floor(0.05 * 2**row.n / 2) / 2**row.n
        assert size <= 0.05
        assert abs(row.power - size) <= 4 * np.sqrt(size * (1 - size) / 4000), (row.n, row.power, size)
    assert estimate.recommended_n is None


def test_unattainable_n_has_zero_power_and_is_never_recommended():
    estimate = power_from_pilot(_pilot_with(3.0, 1.0), ns=(5, 6, 8), n_sim=500)
    assert not estimate.at(5).attainable and estimate.at(5).power == 0.0
    assert estimate.at(6).attainable and estimate.at(6).power > 0.9  # every sign agrees almost surely
    assert estimate.recommended_n == 6


def test_one_sided_power_looks_in_its_direction():
    pilot = _pilot_with(0.8, 1.0)
    greater = power_from_pilot(pilot, ns=(8,), alternative="greater", n_sim=1000)
    less = power_from_pilot(pilot, ns=(8,), alternative="less", n_sim=1000)
    two = power_from_pilot(pilot, ns=(8,), n_sim=1000)
    assert greater.at(8).power > two.at(8).power > 0.3
    assert less.at(8).power < 0.01


def test_three_pilot_seeds_give_a_wide_interval_and_more_seeds_a_narrower_one():
    few = power_from_pilot(_pilot_with(0.7, 1.0, size=3), ns=(12,), n_sim=800)
    many = power_from_pilot(_pilot_with(0.7, 1.0, size=30), ns=(12,), n_sim=800)
    assert few.at(12).high - few.at(12).low > 0.7
    assert many.at(12).high - many.at(12).low < few.at(12).high - few.at(12).low


def test_bootstrap_model_matches_direct_resampling_of_the_pilot():
    pilot = np.array([0.9, -0.4, 1.3, 0.2, 0.6])
    estimate = power_from_pilot(pilot, ns=(10,), model="bootstrap", n_sim=2000, seed=4)
    rng = np.random.default_rng(5)
    direct = np.mean([paired_permutation_test(rng.choice(pilot, 10), np.zeros(10)).pvalue <= 0.05
                      for _ in range(1500)])
    row = estimate.at(10)
    se = np.sqrt(row.power * (1 - row.power) / 2000 + direct * (1 - direct) / 1500)
    assert abs(row.power - direct) <= 4 * se
    assert row.low <= row.power <= row.high


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="at least 2"):
        power_from_pilot([0.3])
    with pytest.raises(ValueError, match="model"):
        power_from_pilot([0.3, 0.5], model="t")
    with pytest.raises(ValueError, match="alternative"):
        seeds_needed(0.05, alternative="both")


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_pair_counts_with_exclusions_equal_brute_force(alternative):
    from analysis.signflip import count_pairs_at_least, observed_statistic

    rng = np.random.default_rng(9)
    # quarters are exact in binary, so x + y >= t and x >= t - y agree and ties are real ties
    left, right = np.round(4 * rng.normal(size=(6, 32))) / 4, np.round(4 * rng.normal(size=(6, 8))) / 4
    excluded = rng.random((6, 3, 32)) < 0.3
    threshold = np.array([0.5, 1.0, 0.0, -0.5, 2.0, 0.3])
    stat = observed_statistic(left[:, :, None] + right[:, None, :], alternative)  # (row, x, y)
    expected = ((stat[:, None] >= threshold[:, None, None, None]) & ~excluded[..., None]).sum(axis=(2, 3))
    np.testing.assert_array_equal(count_pairs_at_least(left, right, threshold, alternative, excluded), expected)
    np.testing.assert_array_equal(count_pairs_at_least(left, right, threshold, alternative),
                                  (stat >= threshold[:, None, None]).sum(axis=(1, 2)))
