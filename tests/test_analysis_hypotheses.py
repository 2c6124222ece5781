"""Declared hypotheses end to end: analysis.json against scipy and statsmodels, the zero-aware floor,
family-aware reachability, dry-run errors, and the plans the shipped sweeps declare."""

from __future__ import annotations

import glob
import itertools
import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st
from scipy.stats import rankdata
from statsmodels.stats.multitest import multipletests

from analysis.hypotheses import PlanError, evaluate_hypotheses
from analysis.isolation import spearman_permutation_test
from analysis.paired import min_attainable_pvalue, paired_permutation_test
from analysis.plan import AnalysisPlan
from analysis.report import run_analysis
from analysis.results import SweepResults, metric_columns
from analysis.study import analyze
from analysis.tables import error_structure_table, method_table
from tests.support.fake_sweep import write_demo_sweep

C, U, N, P = ({"method.cost": c} for c in ("circumplex", "uniform", "none", "permuted"))
STUDY_PLAN = {
    "baseline": N,
    "primary": [{"contrast": [U, C], "metric": "p_mtl"}],
    "families": {
        "error_structure": [{"contrast": [C, U], "metrics": ["error_severity", "quadrant_keep"]}],
        "controls": [{"contrast": [C, N], "metric": "expr_f1", "direction": "greater"},
                     {"contrast": [P, C], "metric": "p_mtl", "direction": "less"},
                     {"contrast": [U, N], "metric": "error_severity"}],
    },
    "exploratory": ["p_mtl", "expr_f1", "error_severity", "quadrant_keep"],
    "n_resamples": 2000,
}


def scipy_p(d, alternative):
    """The exact paired (sign-flip) permutation test of the mean of the per-seed differences."""
    return st.permutation_test((np.asarray(d),), np.mean, permutation_type="samples", n_resamples=np.inf,
                               alternative=alternative).pvalue


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    directory = write_demo_sweep(tmp_path_factory.mktemp("demo") / "demo", analysis=STUDY_PLAN)
    report = run_analysis(directory)
    return report, json.loads((directory / "analysis.json").read_text())


def test_analysis_json_pvalues_equal_scipy_on_its_own_differences(demo_report):
    report, payload = demo_report
    hyps = payload["hypotheses"]
    assert len(hyps) == 6 and {h["direction"] for h in hyps} == {"two-sided", "greater", "less"}
    for h in hyps:
        d = np.asarray(h["differences"])
        assert d.size == h["n_paired"] == 6
        np.testing.assert_allclose(d, np.asarray(h["a_values"]) - np.asarray(h["b_values"]))
        assert h["delta"] == pytest.approx(d.mean())
        assert h["pvalue"] == pytest.approx(scipy_p(d, h["direction"]), abs=1e-12), h["where"]
        low, high = h["ci95"]
        assert low <= h["delta"] <= high
    assert payload["plan_hash"] == report.plan_hash == AnalysisPlan.model_validate(STUDY_PLAN).plan_hash()
    assert payload["warnings"] == list(report.warnings)


def test_holm_equals_statsmodels_within_each_family(demo_report):
    _, payload = demo_report
    by_family: dict = {}
    for h in payload["hypotheses"]:
        by_family.setdefault(h["family"], []).append(h)
    assert list(by_family) == [None, "error_structure", "controls"]
    for family, members in by_family.items():
        raw = [h["pvalue"] for h in members]
        if family is None:  # a primary is its own test
            assert [h["adjusted_pvalue"] for h in members] == raw
            continue
        np.testing.assert_allclose([h["adjusted_pvalue"] for h in members], multipletests(raw, method="holm")[1])


def test_error_structure_family_decisions_and_table_sign(demo_report):
    report, payload = demo_report
    es = [h for h in payload["hypotheses"] if h["family"] == "error_structure"]
    # 6 seeds, m = 2: Holm's first step needs 0.025 < 0.03125, the two-sided floor
    assert [h["metric"] for h in es] == ["error_severity", "quadrant_keep"]
    assert all(h["threshold"] == 0.025 and not h["can_reach_threshold"] for h in es)
    assert {h["decision"] for h in es} == {"cannot be decided by this design"}
    # Table XI in the study's sign: circumplex - uniform, straight from the results frame
    frame = report.analysis.sweep.results
    by = {c: frame[frame["method.cost"] == c].sort_values("seed") for c in ("circumplex", "uniform")}
    expected = (by["circumplex"]["error_severity"].to_numpy() - by["uniform"]["error_severity"].to_numpy()).mean()
    table = report.table("error_structure")
    assert table.title.startswith("Error structure, declared family")
    assert table.column("Error severity Δ [95% CI]")[0].startswith(f"{expected:+.3f} ")
    assert expected < 0  # errors land nearer under the circumplex in the demo world


def test_report_answers_first_and_never_calls_exploratory_results_significant(demo_report):
    report, payload = demo_report
    md = report.markdown.read_text()
    assert md.splitlines()[2] == "## Answers"
    answers = md[md.index("## Answers"):md.index("## Design check")]
    assert answers.count("\n- ") == len(payload["hypotheses"]) == len(payload["answers"])
    assert "error_severity" not in answers.split("Family")[0]  # the first sentence is the primary, on p_mtl
    html = report.html.read_text()
    assert html.index("id='answers'") < html.index("id='design-check'") < html.index("id='exploratory'")
    exploratory = md[md.index("## Study tables"):]
    assert "**" not in "".join(line for line in exploratory.splitlines() if line.startswith("|"))
    assert "significant" not in exploratory.lower().replace("not significant", "")


def hand_sweep(diffs: dict[str, list[float]]) -> SweepResults:
    """Six seeds; circumplex = base, and each other cost = base + the given per-seed differences."""
    rows = []
    base = np.linspace(1.2, 1.25, 6)
    for cost, d in {"circumplex": [0.0] * 6, **diffs}.items():
        for s in range(6):
            rows.append({"trial_id": f"{cost}-{s}", "seed": s, "status": "done", "method.cost": cost,
                         "p_mtl": base[s] + d[s], "data_order_hash": f"h{s}"})
    frame = pd.DataFrame(rows)
    return SweepResults(results=frame, name="hand", axes=("method.cost",), metrics=metric_columns(frame))


def test_one_zero_among_six_raises_the_floor_to_0_0625():
    assert min_attainable_pvalue(6) == 0.03125 and min_attainable_pvalue(6, 1) == 0.0625
    assert min_attainable_pvalue(6, 1, "greater") == 0.03125 and min_attainable_pvalue(6, 0, "less") == 0.015625
    d = [0.0, 0.01, 0.02, 0.015, 0.03, 0.005]  # every non-zero difference positive: the best it can do
    result = paired_permutation_test(np.asarray(d), np.zeros(6))
    assert result.pvalue == 0.0625 == result.min_pvalue == pytest.approx(scipy_p(d, "two-sided"))
    plan = AnalysisPlan(primary=[{"contrast": [U, C], "metric": "p_mtl"}])
    (r,) = evaluate_hypotheses(plan, hand_sweep({"uniform": d}).results, ("method.cost",))
    assert r.test.n_zero == 1 and r.test.min_pvalue == 0.0625
    assert r.decision == "cannot be decided by this design" and not r.design.can_reach
    assert "1 zero difference(s)" in r.design.sentence() and "this design cannot decide H" in r.design.sentence()


def test_can_reach_is_family_aware():
    up = [0.01, 0.02, 0.015, 0.03, 0.005, 0.012]
    sweep = hand_sweep({"uniform": up, "permuted": up, "none": up})
    family = {"f": [{"contrast": [U, C], "metric": "p_mtl"}, {"contrast": [P, C], "metric": "p_mtl"}]}
    alone = analyze(sweep, AnalysisPlan(primary=[{"contrast": [U, C], "metric": "p_mtl"}]))
    (primary,) = alone.hypotheses
    assert primary.design.can_reach and primary.pvalue == 0.03125 and primary.decision == "supported"
    pair = analyze(sweep, AnalysisPlan(families=family)).hypotheses
    assert [r.threshold for r in pair] == [0.025, 0.025] and not any(r.design.can_reach for r in pair)
    assert [r.adjusted_pvalue for r in pair] == [0.0625, 0.0625]
    assert {r.decision for r in pair} == {"cannot be decided by this design"}
    # declared one-sided, the same family can reach alpha/2: 1/64 <= 0.025
    one_sided = {"f": [{**h, "direction": "greater"} for h in family["f"]]}
    pair = analyze(sweep, AnalysisPlan(families=one_sided)).hypotheses
    assert all(r.design.can_reach for r in pair) and [r.pvalue for r in pair] == [1 / 64, 1 / 64]
    assert {r.decision for r in pair} == {"supported"}  # Holm: 2/64 <= 0.05


def test_a_contrast_over_two_datasets_needs_a_stratum(tmp_path):
    directory = write_demo_sweep(tmp_path / "x", datasets=("affwild2_like", "affectnet_like"),
                                 analysis={"primary": [{"contrast": [U, C], "metric": "p_mtl"}]})
    from analysis.results import load_sweep

    sweep = load_sweep(directory)
    with pytest.raises(PlanError, match=r"analysis.primary.0: the contrast spans 2 strata .*declare stratum"):
        analyze(sweep)
    plan = AnalysisPlan(families={"es": [{"contrast": [C, U], "metric": "error_severity",
                                          "strata": [{"dataset.preset": "affwild2_like"},
                                                     {"dataset.preset": "affectnet_like"}]}]})
    rs = analyze(sweep, plan).hypotheses
    assert [dict(r.stratum)["dataset.preset"] for r in rs] == ["affwild2_like", "affectnet_like"]
    assert all(r.n == 6 and r.family_size == 2 for r in rs)


def test_combined_isolation_ranks_within_datasets_one_sided():
    iso = np.array([0.1, 0.5, 0.9, 0.3, 0.2, 0.6, 0.8, 0.4])
    delta = np.array([0.0, 0.02, 0.03, 0.01, 0.1, 0.3, 0.5, 0.2])  # the second dataset's scale is ~10x
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    result = spearman_permutation_test(iso, delta, groups, alternative="greater", rank_within_groups=True)
    # oracle: ranks within each dataset (scipy), centred; every within-dataset permutation of ΔF1
    rx = np.concatenate([rankdata(iso[groups == g]) - 2.5 for g in (0, 1)])
    ry = np.concatenate([rankdata(delta[groups == g]) - 2.5 for g in (0, 1)])

    def rho(y):
        return float(rx @ y) / np.sqrt(float(rx @ rx) * float(y @ y))

    null = np.array([rho(np.concatenate([ry[list(p0)], ry[4 + np.array(p1)]]))
                     for p0 in itertools.permutations(range(4)) for p1 in itertools.permutations(range(4))])
    obs = rho(ry)
    assert result.statistic == pytest.approx(obs) and result.n_permutations == 576
    assert result.pvalue == pytest.approx(np.mean(null >= obs - 1e-12))
    two = spearman_permutation_test(iso, delta, groups, rank_within_groups=True)
    assert two.pvalue == pytest.approx(min(1.0, 2 * min(np.mean(null >= obs - 1e-12), np.mean(null <= obs + 1e-12))))
    assert result.alternative == "greater" and two.alternative == "two-sided"


def test_method_table_shows_sampling_when_results_have_it():
    sweep = hand_sweep({"uniform": [0.01] * 6})
    assert "Sampling" not in method_table(analyze(sweep)).columns  # tolerated absent
    frame = sweep.results.assign(sampling=np.where(sweep.results["method.cost"] == "uniform", "natural", "oversample"))
    table = method_table(analyze(SweepResults(results=frame, name="hand", axes=("method.cost",),
                                              metrics=metric_columns(frame))))
    assert dict(zip(table.column("method.cost"), table.column("Sampling"))) == {
        "circumplex": "oversample", "uniform": "natural"}


def test_error_structure_table_without_the_family_is_exploratory_in_the_study_sign(tmp_path):
    directory = write_demo_sweep(tmp_path / "x", analysis={"baseline": N})
    from analysis.results import load_sweep

    table = error_structure_table(analyze(load_sweep(directory)))
    assert table.title == "Error structure, exploratory (study Table XI)"
    assert table.column("Contrast (A vs B)") == ["method.cost=circumplex vs method.cost=uniform"]
    assert "Error severity p (exploratory)" in table.columns


# --- --dry-run -----------------------------------------------------------------------------------

GRID = """\
name: t
base:
  dataset: {name: synthetic, preset: affwild2_like, n: 300, image_size: 24}
  backbone: {name: test_resnet}
  epochs: 1
grid:
  seed: [0, 1, 2, 3, 4, 5]
  method.cost: [none, circumplex, uniform]
  method.lam: [0.5, 1.0]
exclude: [{method.cost: uniform, method.lam: 0.5}]
storage: STORAGE
analysis:
"""


@pytest.mark.parametrize("block, expected", [
    ("  primary:\n    - {contrast: [{method.cost: uniform}, {method.cost: circumplex}], metric: p_mtll,\n"
     "       stratum: {method.lam: 1.0}}\n",
     ':14: analysis.primary.0.metric: unknown metric \'p_mtll\' (did you mean "p_mtl"?)'),
    ("  families:\n    error_structure: []\n",
     ":14: analysis.families.error_structure: the family is named but empty"),
    ("  primary:\n    - {contrast: [{method.cost: uniform, method.lam: 0.5}, {method.cost: none}], metric: p_mtl}\n",
     ":14: analysis.primary.0.contrast.0: selector {'method.cost': 'uniform', 'method.lam': 0.5} matches no "
     "condition of the grid"),
    ("  primary:\n    - {contrast: [{method.cost: circumplex}, {method.cost: none}], metric: p_mtl}\n",
     ":14: analysis.primary.0: the contrast spans 2 strata (method.lam=0.5; method.lam=1)"),
    ("  primary: [[{method.cost: uniform}, {method.cost: circumplex}]]\n",
     ":13: analysis.primary.0: the primary/secondary/metrics form is gone"),
    ("  secondary: []\n", ":13: analysis.secondary: the primary/secondary/metrics form is gone"),
])
def test_dry_run_plan_errors_are_one_line_exit_2_nothing_started(tmp_path, capsys, block, expected):
    from orchestrator.cli import main as cli_main

    path = tmp_path / "s.yaml"
    path.write_text((GRID + block).replace("STORAGE", str(tmp_path / "runs")))
    assert cli_main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and (str(path) + expected) in err[0], err
    assert not (tmp_path / "runs").exists()


def test_dry_run_design_check_counts_paired_seeds_per_hypothesis(tmp_path, capsys):
    from orchestrator.cli import main as cli_main

    block = textwrap.indent(textwrap.dedent("""\
        primary:
          - {contrast: [{method.cost: uniform}, {method.cost: circumplex}], metric: p_mtl, stratum: {method.lam: 1.0}}
        families:
          error_structure:
            - contrast: [{method.cost: circumplex}, {method.cost: none}]
              metrics: [error_severity, quadrant_keep]
              strata: [{method.lam: 0.5}, {method.lam: 1.0}]
              direction: less
        """), "  ")
    path = tmp_path / "s.yaml"
    path.write_text((GRID + block).replace("STORAGE", str(tmp_path / "runs")))
    assert cli_main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert ("method.cost=uniform vs method.cost=circumplex [method.lam=1.0] on p_mtl: 6 paired seeds, "
            "min attainable p 0.03125 vs 0.05: can reach it") in out
    assert "family error_structure (Holm over m = 4; first step needs p <= alpha/m = 0.0125)" in out
    # one-sided: 1/64 = 0.015625 > 0.0125 -- a family of four cannot be decided with six seeds
    assert out.count("min attainable p 0.01562 vs 0.0125: CANNOT reach it -- this design cannot decide H") == 4


# --- the shipped sweeps -----------------------------------------------------------------------------

SWEEPS = sorted(p for p in glob.glob("sweeps/**/*.yaml", recursive=True) if "analysis:" in Path(p).read_text())


def test_every_shipped_sweep_has_a_plan_the_dry_run_accepts():
    from orchestrator.expand import load_sweep

    assert len(SWEEPS) >= 20
    for path in SWEEPS:
        plan = load_sweep(path)  # raises ConfigError on a plan the grid cannot carry
        assert len(plan.design) == len(plan.analysis.hypotheses())


@pytest.mark.parametrize("path", SWEEPS)
def test_error_structure_metrics_are_never_primary(path):
    from orchestrator.spec import read_spec

    spec = read_spec(path)[0]
    plan = spec.analysis
    for h in plan.hypotheses():
        if spec.controls is not None and h.family is not None and h.family.endswith(" vs controls"):
            continue  # controls: auto's family "<source> vs controls" (tests/test_controls_auto.py)
        if h.metric in ("error_severity", "quadrant_keep"):
            assert h.family == "error_structure", (path, h.where)
            assert (h.a, h.b) == (C, U)  # the study's sign: circumplex - uniform


def test_the_demo_states_the_study_plan():
    from orchestrator.spec import read_spec

    plan = read_spec("sweeps/demo.yaml")[0].analysis
    (primary,) = [h for h in plan.hypotheses() if h.family is None]
    assert (primary.a, primary.b, primary.metric) == (U, C, "p_mtl")
    assert [(h.metric, h.family) for h in plan.family("error_structure")] == [
        ("error_severity", "error_structure"), ("quadrant_keep", "error_structure")]
    assert list(plan.families) == ["error_structure"]
    cost = read_spec("sweeps/study/cost_controls.synthetic.yaml")[0].analysis
    assert cost.hypotheses() == plan.hypotheses()
    cross = read_spec("sweeps/study/cross_dataset.synthetic.yaml")[0].analysis
    assert len(cross.family("error_structure")) == 4  # 2 metrics x 2 datasets, as in study §5.8
    au = read_spec("sweeps/study/au_routing.synthetic.yaml")[0].analysis
    assert [(h.a, h.b, h.metric, h.family) for h in au.hypotheses()] == [
        ({"method.cost": "va_au"}, C, "expr_f1/Anger", None)]
