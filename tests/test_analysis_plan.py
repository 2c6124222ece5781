"""AnalysisPlan: the sweep YAML's analysis: block."""

import subprocess
import sys

import pytest
import yaml
from pydantic import ValidationError

from analysis.plan import DEFAULT_METRICS, AnalysisPlan

BLOCK = """
analysis:
  baseline: {method.cost: none}
  primary:   [[{method.cost: uniform}, {method.cost: circumplex}]]
  secondary: [[{method.cost: circumplex}, {method.cost: none}]]
  metrics: [p_mtl, expr_f1, error_severity, quadrant_keep]
"""


def test_parses_the_design_example():
    plan = AnalysisPlan.model_validate(yaml.safe_load(BLOCK)["analysis"])
    assert plan.baseline == {"method.cost": "none"}
    assert plan.primary == [({"method.cost": "uniform"}, {"method.cost": "circumplex"})]
    assert plan.secondary == [({"method.cost": "circumplex"}, {"method.cost": "none"})]
    assert plan.alpha == 0.05 and plan.n_resamples == 10_000 and plan.seed == 0


def test_defaults():
    plan = AnalysisPlan()
    assert plan.metrics == list(DEFAULT_METRICS) == ["p_mtl", "expr_f1", "error_severity", "quadrant_keep"]
    assert plan.baseline is None and plan.primary == [] and plan.secondary == []


def test_nested_selectors_flatten_to_dotted_keys():
    nested = AnalysisPlan(baseline={"method": {"cost": "none"}},
                          primary=[[{"method": {"cost": "uniform", "lam": 1.0}}, {"method.cost": "circumplex"}]])
    assert nested.baseline == {"method.cost": "none"}
    assert nested.primary[0][0] == {"method.cost": "uniform", "method.lam": 1.0}


@pytest.mark.parametrize("block, message", [
    ({"primry": []}, "primry"),                                           # typo: extra keys are forbidden
    ({"primary": [[{"method.cost": "a"}]]}, "pair"),                      # one side only
    ({"primary": [[{"method.cost": "a"}, "none"]]}, "mapping"),           # a side that is not a selector
    ({"secondary": [[{"method.cost": "a"}, {"method.cost": "a"}]]}, "same condition"),
    ({"alpha": 1.5}, "alpha"),
    ({"metrics": []}, "at least one metric"),
    ({"n_resamples": 0}, "n_resamples"),
])
def test_rejects_bad_blocks(block, message):
    with pytest.raises(ValidationError, match=message):
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
