"""Tables from a results frame built by hand with a known structure (study Tables I, II, VIII, X, XI).

Six seeds; circumplex = base + 0.01 in every seed; permuted = base exactly; uniform = circumplex plus
small noise of both signs. Every expected number below is computed here, independently of the
package (numpy means/stds, brute-force sign enumeration, statsmodels' Holm).
"""

import csv
import io
import itertools
import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st
from statsmodels.stats.multitest import multipletests

from analysis.isolation import spearman_permutation_test
from analysis.plan import AnalysisPlan
from analysis.results import SweepResults, metric_columns
from analysis.study import analyze
from analysis.tables import all_tables, cost_control_table, method_table, per_au_table, per_class_table

BASE = np.array([1.201, 1.215, 1.209, 1.224, 1.198, 1.212])
NOISE = np.array([0.0010, -0.0020, 0.0005, -0.0010, 0.0020, -0.0015])
P_MTL = {"none": BASE, "circumplex": BASE + 0.01, "permuted": BASE.copy(), "uniform": BASE + 0.01 + NOISE}
# per-class: anger falls by 0.02 under the circumplex in every seed, fear unchanged
ANGER = {"none": BASE - 1.1, "circumplex": BASE - 1.12, "permuted": BASE - 1.1, "uniform": BASE - 1.1}
ES = {"none": np.full(6, 0.50), "circumplex": 0.45 + 0.001 * np.arange(6), "permuted": np.full(6, 0.50),
      "uniform": np.full(6, 0.49)}


def brute_p(d):
    d = np.asarray(d, dtype=float)
    signs = np.array(list(itertools.product([-1.0, 1.0], repeat=d.size)))
    return np.count_nonzero(np.abs(signs @ d) >= abs(d.sum()) - 1e-12) / 2.0**d.size


def hand_frame(seeds=range(6)):
    rows = []
    for s in seeds:
        for cost in ("none", "circumplex", "permuted", "uniform"):
            rows.append({"trial_id": f"{cost}-{s}", "sweep": "hand", "seed": s, "status": "done", "method.cost": cost,
                         "p_mtl": P_MTL[cost][s], "expr_f1": P_MTL[cost][s] - 0.9, "va_ccc": 0.44, "au_f1": 0.49,
                         "expr_f1/Anger": ANGER[cost][s], "expr_f1/Fear": 0.11, "au_f1/AU1": 0.578,
                         "error_severity": ES[cost][s], "quadrant_keep": 0.4, "data_order_hash": f"h{s}"})
    return pd.DataFrame(rows)


CIRC, NONE, UNIFORM = {"method.cost": "circumplex"}, {"method.cost": "none"}, {"method.cost": "uniform"}
PLAN = AnalysisPlan(baseline=NONE,
                    primary=[{"contrast": [UNIFORM, CIRC], "metric": "p_mtl"}],
                    families={"f": [{"contrast": [CIRC, NONE], "metrics": ["p_mtl", "error_severity"]},
                                    {"contrast": [CIRC, UNIFORM], "metrics": ["p_mtl", "error_severity"]}]},
                    exploratory=["p_mtl", "error_severity"], n_resamples=2000)


def sweep_of(frame):
    return SweepResults(results=frame, name="hand", axes=("method.cost",), metrics=metric_columns(frame))


@pytest.fixture(scope="module")
def analysis():
    return analyze(sweep_of(hand_frame()), PLAN)


def test_significance_pattern_of_the_planned_contrasts(analysis):
    uniform_vs_circ = analysis.hypotheses[0]
    assert uniform_vs_circ.hypothesis.family is None and uniform_vs_circ.hypothesis.metric == "p_mtl"
    assert uniform_vs_circ.pvalue == pytest.approx(brute_p(NOISE)) and uniform_vs_circ.pvalue > 0.05
    assert uniform_vs_circ.delta == pytest.approx(NOISE.mean())
    assert uniform_vs_circ.decision == "not supported"
    circ_vs_none = analysis.hypotheses[1]
    assert circ_vs_none.hypothesis.contrast_label == "method.cost=circumplex vs method.cost=none"
    assert circ_vs_none.pvalue == 0.03125
    assert circ_vs_none.delta == pytest.approx(0.01)
    assert circ_vs_none.n_improved == 6
    assert circ_vs_none.ci.low == pytest.approx(0.01) and circ_vs_none.ci.high == pytest.approx(0.01)


def test_holm_family_equals_statsmodels(analysis):
    comps = analysis.family("f")
    assert [(c.hypothesis.contrast_label, c.hypothesis.metric) for c in comps] == [
        ("method.cost=circumplex vs method.cost=none", "p_mtl"),
        ("method.cost=circumplex vs method.cost=none", "error_severity"),
        ("method.cost=circumplex vs method.cost=uniform", "p_mtl"),
        ("method.cost=circumplex vs method.cost=uniform", "error_severity")]
    raw = [c.pvalue for c in comps]
    assert raw == pytest.approx([0.03125, 0.03125, brute_p(-NOISE), 0.03125])
    np.testing.assert_allclose([c.adjusted_pvalue for c in comps], multipletests(raw, method="holm")[1])
    # three tests at the floor: Holm gives 4*0.03125 = 0.125 to the first, none survives at 0.05
    assert min(c.adjusted_pvalue for c in comps) == pytest.approx(0.125)
    assert {c.decision for c in comps} == {"cannot be decided by this design"}  # 0.03125 > 0.05/4
    # a primary is not adjusted: its adjusted p is its p
    assert analysis.hypotheses[0].adjusted_pvalue == analysis.hypotheses[0].pvalue


def test_error_severity_improvement_counts_decreases(analysis):
    es = analysis.hypotheses[2]
    assert es.hypothesis.metric == "error_severity"
    assert es.delta == pytest.approx((ES["circumplex"] - ES["none"]).mean())
    assert es.n_improved == 6  # lower error severity is better


def test_method_table_means_and_stds(analysis):
    table = method_table(analysis)
    assert table.columns == ("method.cost", "Seeds", "P_MTL", "VA (CCC)", "EXPR (F1)", "AU (F1)")
    assert table.column("method.cost") == ["none", "circumplex", "permuted", "uniform"]
    assert table.column("Seeds") == ["6"] * 4
    expected = [f"{P_MTL[c].mean():.3f} ± {P_MTL[c].std(ddof=1):.3f}" for c in
                ("none", "circumplex", "permuted", "uniform")]
    assert table.column("P_MTL") == expected


def test_cost_control_table_shape_and_pvalues(analysis):
    table = cost_control_table(analysis)
    assert table.columns == ("method.cost", "Seeds", "P_MTL", "EXPR (F1)", "p vs base", "p vs circumplex")
    rows = {r[0]: r for r in table.cells("csv")}
    assert list(rows) == ["none", "circumplex", "permuted", "uniform"]
    assert rows["none"][4:] == ["–", "0.03125"]
    assert rows["circumplex"][4:] == ["0.03125", "–"]
    assert rows["permuted"][4:] == ["1", "0.03125"]            # permuted = base exactly
    assert rows["uniform"][4] == "0.03125"                      # uniform - base > 0 in every seed
    assert float(rows["uniform"][5]) == pytest.approx(brute_p(NOISE))  # uniform vs circumplex: n.s.
    md = table.to_markdown()
    assert "| circumplex | 6 |" in md and "0.03125" in md and "**" not in md.split("\n", 1)[1]  # exploratory
    assert "smallest attainable p = 0.03125" in md


def test_per_class_and_per_au_tables(analysis):
    (classes,) = per_class_table(analysis)
    rows = {r[0]: r for r in classes.cells("md")}
    assert rows["Anger"][3] == "-0.020" and rows["Anger"][4] == "0/6" and rows["Anger"][5] == "0.03125"
    assert rows["Fear"][3] == "+0.000" and rows["Fear"][5] == "1"
    (aus,) = per_au_table(analysis)
    assert aus.cells("md") == [["AU1", "0.578 ± 0.000", "0.578 ± 0.000", "+0.000", "0/6", "1"]]


def test_every_format_renders_every_table(analysis):
    tables = all_tables(analysis)
    keys = [t.key for t in tables]
    assert keys[:3] == ["hypotheses", "design", "method"]
    assert {"cost_controls", "per_class", "per_au", "error_structure"} <= set(keys)
    for t in tables:
        csv_text, md, html, tex = t.to_csv(), t.to_markdown(), t.to_html(), t.to_latex()
        parsed = list(csv.reader(io.StringIO(csv_text)))
        assert tuple(parsed[0]) == t.columns and len(parsed) == len(t.rows) + 1
        assert md.count("\n|") == len(t.rows) + 2  # header, rule, rows
        assert html.count("<tr>") == len(t.rows) + 1
        assert tex.count(r"\\") == len(t.rows) + 1 and r"\begin{tabular}" in tex
    cost = next(t for t in tables if t.key == "cost_controls")
    # exploratory p-values are never bold, at any p
    assert r"\textbf" not in cost.to_latex() and "<strong>" not in cost.to_html()


def test_too_few_seeds_warns_that_alpha_is_unreachable():
    analysis = analyze(sweep_of(hand_frame(seeds=range(5))), PLAN)
    assert any("smallest attainable p = 0.0625 vs alpha" in w and "this design cannot decide H" in w
               for w in analysis.warnings)
    design = next(t for t in all_tables(analysis) if t.key == "design")
    assert set(design.column("Can reach")) == {"NO — this design cannot decide H"}
    assert {r.decision for r in analysis.hypotheses} == {"cannot be decided by this design"}
    exploratory = next(t for t in all_tables(analysis) if t.key == "exploratory")
    assert any("WARNING: with n = 5 paired seeds the smallest attainable p is 0.0625" in n for n in exploratory.notes)


def test_unmatched_and_integrity_rows_appear_in_the_report_tables():
    frame = hand_frame()
    frame = frame[frame.trial_id != "uniform-5"].reset_index(drop=True)
    frame.loc[frame.trial_id == "circumplex-2", "data_order_hash"] = "tampered"
    analysis = analyze(sweep_of(frame), PLAN)
    issues = next(t for t in all_tables(analysis) if t.key == "pairing_issues")
    text = issues.to_csv()
    assert "circumplex-5" in text and "no B trial with seed 5" in text          # circumplex vs uniform
    assert "circumplex-2 / none-2" in text and "tampered" in text               # integrity, listed
    circ_vs_none = analysis.hypotheses[1]
    assert circ_vs_none.n == 5 and 2 not in circ_vs_none.seeds                  # excluded, not paired
    assert any("matched-seed integrity violated" in w for w in analysis.warnings)


@pytest.mark.parametrize("n", [5, 6])
def test_isolation_correlation_matches_scipy_exact_permutation(n):
    rng = np.random.default_rng(n)
    iso = rng.uniform(0.05, 0.8, n)
    delta = 0.03 * iso + rng.normal(0, 0.01, n)
    result = spearman_permutation_test(iso, delta)
    ref = st.permutation_test((delta,), lambda y: st.spearmanr(iso, y).statistic, permutation_type="pairings",
                              n_resamples=np.inf)
    assert result.exact and result.n_permutations == math.factorial(n)
    assert result.statistic == pytest.approx(st.spearmanr(iso, delta).statistic)
    assert result.pvalue == pytest.approx(ref.pvalue, abs=1e-12)


def test_combined_isolation_permutes_within_datasets_only():
    iso = np.array([0.1, 0.5, 0.9, 0.2, 0.6, 0.8])
    delta = np.array([0.0, 0.02, 0.03, 0.01, 0.015, 0.05])
    groups = np.array([0, 0, 0, 1, 1, 1])
    result = spearman_permutation_test(iso, delta, groups)
    # oracle: all 3! x 3! within-group permutations of delta, Spearman via scipy
    null = []
    for p0 in itertools.permutations(range(3)):
        for p1 in itertools.permutations(range(3, 6)):
            null.append(st.spearmanr(iso, delta[list(p0) + list(p1)]).statistic)
    null = np.array(null)
    obs = st.spearmanr(iso, delta).statistic
    expected = min(1.0, 2 * min(np.mean(null <= obs + 1e-12), np.mean(null >= obs - 1e-12)))
    assert result.n_permutations == 36
    assert result.pvalue == pytest.approx(expected)
