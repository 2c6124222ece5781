"""AnalysisPlan: the sweep YAML's analysis: block (hypotheses, families, exploratory metrics)."""

import subprocess
import sys

import pytest
import yaml
from pydantic import ValidationError

from analysis.plan import DEFAULT_METRICS, AnalysisPlan

BLOCK = """
analysis:
  baseline: {method.cost: none}
  primary:
    - {contrast: [{method.cost: uniform}, {method.cost: circumplex}], metric: p_mtl}
  families:
    error_structure:
      - contrast: [{method.cost: circumplex}, {method.cost: uniform}]
        metrics: [error_severity, quadrant_keep]
        strata: [{dataset.preset: affwild2_like}, {dataset.preset: affectnet_like}]
    score:
      - {contrast: [{method.cost: circumplex}, {method.cost: none}], metric: p_mtl, direction: greater}
  exploratory: [p_mtl, expr_f1, error_severity, quadrant_keep]
"""
U, C, N = {"method.cost": "uniform"}, {"method.cost": "circumplex"}, {"method.cost": "none"}


def test_parses_and_expands_the_design_example():
    plan = AnalysisPlan.model_validate(yaml.safe_load(BLOCK)["analysis"])
    assert plan.baseline == N and plan.alpha == 0.05 and plan.n_resamples == 10_000 and plan.seed == 0
    hs = plan.hypotheses()
    assert [(h.a, h.b, h.metric, h.family) for h in hs[:1]] == [(U, C, "p_mtl", None)]
    family = plan.family("error_structure")
    # the shorthand: 2 metrics x 2 strata = 4 hypotheses, all in the one family, all two-sided
    assert [(h.metric, h.stratum["dataset.preset"]) for h in family] == [
        ("error_severity", "affwild2_like"), ("quadrant_keep", "affwild2_like"),
        ("error_severity", "affectnet_like"), ("quadrant_keep", "affectnet_like")]
    assert {(h.a["method.cost"], h.b["method.cost"], h.direction) for h in family} == {
        ("circumplex", "uniform", "two-sided")}
    (score,) = plan.family("score")
    assert score.direction == "greater" and score.role == "family score"
    assert len(hs) == 6 and plan.metrics == ["p_mtl", "error_severity", "quadrant_keep", "expr_f1"]


def test_defaults():
    plan = AnalysisPlan()
    assert plan.exploratory == list(DEFAULT_METRICS) == ["p_mtl", "expr_f1", "error_severity", "quadrant_keep"]
    assert plan.baseline is None and plan.hypotheses() == () and plan.families == {}
    assert plan.isolation_direction == "greater"  # docs/methods.md §7: the combined isolation test is one-sided


def test_nested_selectors_flatten_to_dotted_keys():
    nested = AnalysisPlan(baseline={"method": {"cost": "none"}},
                          primary=[{"contrast": [{"method": {"cost": "uniform", "lam": 1.0}}, {"method.cost": "a"}],
                                    "metric": "p_mtl"}])
    assert nested.baseline == {"method.cost": "none"}
    assert nested.hypotheses()[0].a == {"method.cost": "uniform", "method.lam": 1.0}


H = {"contrast": [U, C], "metric": "p_mtl"}


@pytest.mark.parametrize("block, message", [
    ({"primry": []}, "primry"),                                                    # typo: extra keys are forbidden
    ({"primary": [{"contrast": [U], "metric": "p_mtl"}]}, "pair"),                 # one side only
    ({"primary": [{"contrast": [U, "none"], "metric": "p_mtl"}]}, "mapping"),      # a side that is not a selector
    ({"primary": [{"contrast": [U, U], "metric": "p_mtl"}]}, "same condition"),
    ({"primary": [{"contrast": [U, C]}]}, "name the metric"),
    ({"primary": [{"contrast": [U, C], "metrics": ["p_mtl", "expr_f1"]}]}, "ONE metric"),
    ({"primary": [{**H, "direction": "up"}]}, "direction"),
    ({"primary": [H, H]}, "again"),                                                # the same hypothesis twice
    ({"families": {"error_structure": []}}, "named but empty"),
    ({"alpha": 1.5}, "alpha"),
    ({"n_resamples": 0}, "n_resamples"),
])
def test_rejects_bad_blocks(block, message):
    with pytest.raises(ValidationError, match=message):
        AnalysisPlan.model_validate(block)


@pytest.mark.parametrize("block", [
    {"primary": [[U, C]]},
    {"secondary": [[C, N]]},
    {"metrics": ["p_mtl"]},
])
def test_the_old_form_is_refused_with_how_to_rewrite_it(block):
    with pytest.raises(ValidationError, match=r"form is gone.*contrast: \[A, B\], metric: M.*families:"):
        AnalysisPlan.model_validate(block)


def test_plan_hash_is_stable_and_sensitive():
    a = AnalysisPlan.model_validate(yaml.safe_load(BLOCK)["analysis"])
    b = AnalysisPlan.model_validate(yaml.safe_load(BLOCK)["analysis"])
    assert a.plan_hash() == b.plan_hash() and len(a.plan_hash()) == 12
    changed = a.model_copy(update={"alpha": 0.01})
    assert changed.plan_hash() != a.plan_hash()
    # key order inside a selector does not change the plan
    reordered = AnalysisPlan(baseline={"y": 1, "x": 2})
    assert reordered.plan_hash() == AnalysisPlan(baseline={"x": 2, "y": 1}).plan_hash()


def test_importable_without_heavy_dependencies():
    code = ("import sys, analysis.plan; heavy = {'torch', 'pandas', 'matplotlib', 'mlflow', 'scipy'} "
            "& set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
