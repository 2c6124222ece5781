"""``controls: auto`` (docs/methods.md §14): every structured cost with its own permuted and uniform controls,
their hypotheses declared in the plan, selectors on ``{source, control}`` cost values, and the
preflight checks of a cost's source."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.controls import with_control_hypotheses
from analysis.hypotheses import SUPPORTED, evaluate_hypotheses
from analysis.pairing import select
from analysis.plan import AnalysisPlan
from analysis.results import _normalise, plan_of
from orchestrator.cli import main as cli_main
from orchestrator.expand import load_sweep
from tests.support.sweeps import sweep_yaml
from trainers.config import ConfigError
from trainers.costs import register_cost

REPO = Path(__file__).resolve().parents[1]
FILE = "file:sweeps/costs/affwild2_name_similarity.json"
TOY = "test_controls_toy"


@register_cost(TOY)
def toy_cost(label_space, train_index, geometry):
    """A registered cost function of the tiniest kind: |i - j| between class indices."""
    k = label_space.num_classes
    idx = np.arange(k)
    return np.abs(idx[:, None] - idx[None, :]).astype(float)


def write(tmp_path: Path, body: str, name: str = "sweep.yaml", base: str = "") -> Path:
    path = tmp_path / name
    path.write_text("name: t\nbase:\n  dataset: {name: synthetic, n: 200, image_size: 16}\n" + base
                    + textwrap.dedent(body).strip() + "\n")
    return path


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # the cost file's relative path means what it means to a user in the repo


def costs_of(plan) -> list:
    return [t.axes["method.cost"] for t in plan.trials]


# --- expansion ------------------------------------------------------------------------------------

def test_circumplex_expansion_equals_the_hand_written_grid(tmp_path):
    auto = load_sweep(write(tmp_path, """
        grid: {seed: [0, 1, 2], method.cost: [none, circumplex]}
        controls: auto""", "auto.yaml"))
    hand = load_sweep(write(tmp_path, """
        grid: {seed: [0, 1, 2], method.cost: [none, circumplex, permuted, uniform]}""", "hand.yaml"))
    assert sorted(t.trial_id for t in auto.trials) == sorted(t.trial_id for t in hand.trials)
    assert len(auto.trials) == 12 and auto.axes == ["method.cost"]
    # today's strings, not mappings: the ids are those the study's sweeps always had
    assert set(costs_of(auto)) == {"none", "circumplex", "permuted", "uniform"}
    added = {t.trial_id: t.axes["method.cost"] for t in auto.trials if t.trial_id in auto.added_by_controls}
    assert sorted(added.values()) == ["permuted"] * 3 + ["uniform"] * 3
    # each source is followed by its controls
    assert costs_of(auto)[:4] == ["none", "circumplex", "permuted", "uniform"]


def test_file_and_function_sources_get_their_own_controls(tmp_path):
    auto = load_sweep(write(tmp_path, f"""
        grid: {{seed: [0, 1], method.cost: [none, "{FILE}", {TOY}]}}
        controls: auto"""))
    hand = load_sweep(write(tmp_path, f"""
        grid:
          seed: [0, 1]
          method.cost:
            - none
            - "{FILE}"
            - {{source: "{FILE}", control: permuted}}
            - {{source: "{FILE}", control: uniform}}
            - {TOY}
            - {{source: {TOY}, control: permuted}}
            - {{source: {TOY}, control: uniform}}""", "hand.yaml"))
    assert sorted(t.trial_id for t in auto.trials) == sorted(t.trial_id for t in hand.trials)
    assert len(auto.trials) == 14
    assert {"source": TOY, "control": "uniform"} in costs_of(auto)
    assert {"source": FILE, "control": "permuted"} in costs_of(auto)


def test_a_list_picks_the_controls_and_a_base_cost_becomes_an_axis(tmp_path):
    plan = load_sweep(write(tmp_path, """
        grid: {seed: [0, 1]}
        controls: [uniform]""", base=f'  method: {{name: focal, cost: "{FILE}"}}\n'))
    assert plan.axes == ["method.cost"]
    assert [t.axes["method.cost"] for t in plan.trials] == [FILE, {"source": FILE, "control": "uniform"}] * 2
    (primary,) = [h for h in plan.analysis.hypotheses() if h.family is None]
    assert primary.b == {"method.cost": {"source": FILE, "control": "uniform"}}


def test_exclude_applies_to_the_added_points(tmp_path):
    plan = load_sweep(write(tmp_path, """
        grid: {seed: [0, 1], method.cost: [none, circumplex]}
        exclude: [{method.cost: none, seed: 1}]
        controls: auto"""))
    assert len(plan.trials) == 7


def test_bad_controls_value_is_one_line_exit_2(tmp_path, capsys):
    path = write(tmp_path, """
        grid: {seed: [0, 1], method.cost: [none, circumplex]}
        controls: [permutd]""")
    with pytest.raises(ConfigError) as exc:
        load_sweep(path)
    assert str(exc.value).startswith(f"{path}:5: controls:") and 'did you mean "permuted"' in str(exc.value)
    assert cli_main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ":5: controls:" in err[0]


def test_controls_without_a_structured_cost_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"sweep.yaml:5: controls: no structured cost"):
        load_sweep(write(tmp_path, """
            grid: {seed: [0, 1], method.cost: [none]}
            controls: auto"""))


# --- the plan -------------------------------------------------------------------------------------

def test_the_plan_gets_the_primary_and_the_family(tmp_path):
    plan = load_sweep(write(tmp_path, f"""
        grid: {{seed: [0, 1, 2, 3, 4, 5], method.cost: [none, circumplex, "{FILE}"]}}
        controls: auto""")).analysis
    hs = plan.hypotheses()
    primaries = [(h.a, h.b, h.metric) for h in hs if h.family is None]
    assert primaries == [
        ({"method.cost": "circumplex"}, {"method.cost": "uniform"}, "p_mtl"),
        ({"method.cost": FILE}, {"method.cost": {"source": FILE, "control": "uniform"}}, "p_mtl")]
    assert list(plan.families) == ["circumplex vs controls", f"{FILE} vs controls"]
    circ = plan.family("circumplex vs controls")
    assert [(h.b["method.cost"], h.metric) for h in circ] == [
        ("permuted", "error_severity"), ("permuted", "quadrant_keep"),
        ("uniform", "error_severity"), ("uniform", "quadrant_keep")]
    mine = plan.family(f"{FILE} vs controls")  # a user's source: also scored under its own geometry
    assert [h.metric for h in mine] == ["error_severity", "quadrant_keep", "error_severity@source"] * 2
    assert all(h.a == {"method.cost": FILE} for h in mine)


def test_added_hypotheses_hash_as_if_written_by_hand(tmp_path):
    auto = load_sweep(write(tmp_path, f"""
        grid: {{seed: [0, 1], method.cost: [none, "{FILE}"]}}
        controls: [uniform]
        analysis: {{baseline: {{method.cost: none}}}}""", "auto.yaml"))
    hand = load_sweep(write(tmp_path, f"""
        grid:
          seed: [0, 1]
          method.cost: [none, "{FILE}", {{source: "{FILE}", control: uniform}}]
        analysis:
          baseline: {{method.cost: none}}
          primary:
            - {{contrast: [{{method.cost: "{FILE}"}}, {{method.cost: {{source: "{FILE}", control: uniform}}}}],
               metric: p_mtl}}
          families:
            "{FILE} vs controls":
              - contrast: [{{method.cost: "{FILE}"}}, {{method.cost: {{source: "{FILE}", control: uniform}}}}]
                metrics: [error_severity, quadrant_keep, error_severity@source]""", "hand.yaml"))
    without = AnalysisPlan(baseline={"method.cost": "none"})
    assert auto.analysis.plan_hash() == hand.analysis.plan_hash() != without.plan_hash()
    assert sorted(t.trial_id for t in auto.trials) == sorted(t.trial_id for t in hand.trials)
    # the analysis derives the same plan from the same YAML (analysis.results.plan_of)
    import yaml

    spec = yaml.safe_load((tmp_path / "auto.yaml").read_text())
    assert plan_of(spec).plan_hash() == auto.analysis.plan_hash()
    assert len(auto.design) == 4


def test_declared_hypotheses_are_not_added_twice_and_the_metric_can_be_named(tmp_path):
    plan = load_sweep(write(tmp_path, """
        grid: {seed: [0, 1, 2, 3, 4, 5], method.cost: [none, circumplex]}
        controls: {against: auto, metric: expr_f1}
        analysis:
          primary:
            - {contrast: [{method.cost: uniform}, {method.cost: circumplex}], metric: expr_f1}
          families:
            error_structure:
              - contrast: [{method.cost: circumplex}, {method.cost: {source: circumplex, control: uniform}}]
                metrics: [error_severity, quadrant_keep]""")).analysis
    hs = plan.hypotheses()
    assert [h.where for h in hs if h.family is None] == ["analysis.primary.0"]  # the study's own, kept
    assert [(h.b["method.cost"], h.metric) for h in plan.family("circumplex vs controls")] == [
        ("permuted", "error_severity"), ("permuted", "quadrant_keep")]


def test_several_strata_get_one_primary_each(tmp_path):
    plan = load_sweep(write(tmp_path, """
        grid:
          seed: [0, 1, 2, 3, 4, 5]
          dataset.preset: [affwild2_like, affectnet_like]
          method.cost: [none, circumplex]
        controls: [uniform]""")).analysis
    primaries = [h for h in plan.hypotheses() if h.family is None]
    assert [h.stratum for h in primaries] == [{"dataset.preset": "affwild2_like"},
                                             {"dataset.preset": "affectnet_like"}]
    assert len(plan.family("circumplex vs controls")) == 4  # 2 metrics x 2 strata


def test_dry_run_shows_the_added_points_and_hypotheses(tmp_path, capsys):
    path = write(tmp_path, f"""
        grid: {{seed: [0, 1, 2, 3, 4, 5], method.cost: [none, "{FILE}"]}}
        controls: auto
        analysis: {{baseline: {{method.cost: none}}}}""")
    assert cli_main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    plan = load_sweep(path)
    assert "24 trials (4 conditions x 6 seeds)" in out
    assert "controls: permuted, uniform of every structured cost -> 12 added trials (2 conditions), " \
           "7 added hypotheses" in out
    assert f"  + method.cost=permuted({FILE})" in out and f"  + method.cost=uniform({FILE})" in out
    assert f"analysis plan {plan.analysis.plan_hash()}" in out
    primary = f"method.cost={FILE} vs method.cost=uniform({FILE}) on p_mtl [controls]: 6 paired seeds, " \
              f"min attainable p 0.03125 vs 0.05: can reach it"
    assert primary in out
    # a Holm family of 6 needs 2/2^n <= 0.05/6, i.e. 8 seeds: the dry run says so
    assert f"family {FILE} vs controls (Holm over m = 6" in out
    assert out.count("[controls]") == 7 and "CANNOT reach it -- this design cannot decide H" in out


# --- selectors on {source, control} values ---------------------------------------------------------

def _fake_results(cost_cells) -> pd.DataFrame:
    """Six seeds of four conditions; p_mtl of the source beats uniform(source) by 0.01·(seed+1)."""
    rows = []
    for seed in range(6):
        for name, cell in cost_cells.items():
            bump = {"src": 0.01 * (seed + 1), "uniform": 0.0, "permuted": -0.02, "none": -0.01}[name]
            rows.append({"trial_id": f"{name}{seed}", "seed": seed, "status": "done", "method.cost": cell,
                         "p_mtl": 0.5 + bump + 0.001 * seed, "error_severity": 0.3 - bump,
                         "quadrant_keep": 0.6 + bump, "error_severity@source": 0.2 - bump})
    return pd.DataFrame(rows)


def _as_parquet_cells():  # orchestrator.sweep_dir.write_results: a mapping becomes sorted JSON
    return {"none": "none", "src": FILE,
            "permuted": json.dumps({"source": FILE, "control": "permuted"}, sort_keys=True),
            "uniform": json.dumps({"source": FILE, "control": "uniform"}, sort_keys=True)}


def test_dict_selectors_match_parquet_cells():
    frame = _fake_results(_as_parquet_cells())
    plan = AnalysisPlan(primary=[{"contrast": [{"method": {"cost": FILE}},
                                               {"method.cost": {"source": FILE, "control": "uniform"}}],
                                  "metric": "p_mtl"}])
    h = plan.hypotheses()[0]
    assert h.b == {"method.cost": {"source": FILE, "control": "uniform"}}  # one value, not two keys
    assert frame.loc[select(frame, h.b), "trial_id"].tolist() == [f"uniform{s}" for s in range(6)]
    assert frame.loc[select(frame, {"method.cost": {"control": "permuted", "source": FILE}}),
                     "trial_id"].tolist() == [f"permuted{s}" for s in range(6)]
    (r,) = evaluate_hypotheses(plan, frame, ["method.cost"])
    # every one of 6 differences is positive: the exact two-sided sign-flip p is 2 / 2^6
    assert r.n == 6 and r.pvalue == pytest.approx(2 / 64) and r.decision == SUPPORTED
    assert r.delta == pytest.approx(np.mean([0.01 * (s + 1) for s in range(6)]))


def test_circumplex_mapping_selects_the_shorthand_rows():
    frame = pd.DataFrame({"trial_id": ["a", "b", "c"], "seed": [0, 0, 0], "method.cost": ["uniform", "permuted",
                                                                                        "circumplex"]})
    assert select(frame, {"method.cost": {"source": "circumplex", "control": "uniform"}}).tolist() == [
        True, False, False]
    assert select(frame, {"method.cost": {"source": "circumplex"}}).tolist() == [False, False, True]


def test_mlflow_params_and_parquet_cells_load_to_one_form():
    parquet = _normalise(_fake_results(_as_parquet_cells()))
    # MLflow: a shorthand or bare source is the param method.cost; a mapping is method.cost.source/.control
    mlflow = _fake_results({"none": "none", "src": FILE, "permuted": None, "uniform": None})
    mapped = mlflow["method.cost"].isna()
    mlflow["method.cost.source"] = [FILE if m else None for m in mapped]
    mlflow["method.cost.control"] = [t.rstrip("012345") if m else None for m, t in zip(mapped, mlflow["trial_id"])]
    mlflow = _normalise(mlflow)
    assert "method.cost.source" not in mlflow.columns
    assert parquet["method.cost"].tolist() == mlflow["method.cost"].tolist()
    assert set(parquet["method.cost"]) == {"none", FILE, f"permuted({FILE})", f"uniform({FILE})"}
    analysis = with_control_hypotheses({"grid": {"seed": list(range(6)), "method.cost": ["none", FILE]},
                                        "controls": "auto"})
    plan = AnalysisPlan.model_validate(analysis)
    a = evaluate_hypotheses(plan, parquet, ["method.cost"])
    b = evaluate_hypotheses(plan, mlflow, ["method.cost"])
    assert [r.pvalue for r in a] == [r.pvalue for r in b] and all(r.n == 6 for r in a)
    assert len(a) == 7


# --- preflight on a {source, control} cost ---------------------------------------------------------

NO_VA = "dataset: {name: synthetic, preset: affectnet_like, n: 200, image_size: 16, drop_tasks: [va, au]}"


@pytest.mark.parametrize("cost, words", [
    ("{source: gaussian_w2, control: permuted}", ("base.method.cost", "permuted(gaussian_w2)", "own VA labels")),
    ("{source: circumplex, control: uniform}", ("base.method.cost", "'uniform'", "method.imported_from")),
])
def test_preflight_checks_the_source_of_a_mapping(tmp_path, capsys, cost, words):
    path = tmp_path / "sweep.yaml"
    path.write_text(f"name: bad\nbase:\n  {NO_VA}\n  method: {{name: focal, cost: {cost}}}\ngrid:\n  seed: [0]\n")
    assert cli_main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}:4: base.method.cost:" in err[0], err
    assert all(w in err[0] for w in words), err[0]


# --- end to end -----------------------------------------------------------------------------------



@pytest.mark.slow
@pytest.mark.ci
def test_affsweep_run_of_a_controls_auto_sweep(tmp_path, ray_local, mlflow_http, monkeypatch, capsys):
    """``affsweep run`` in this process, on the session's Ray and MLflow server (conftest)."""
    monkeypatch.chdir(REPO)  # the cost file's path is relative to the clone, as in a user's run
    path = tmp_path / "tiny.yaml"
    sweep_yaml(path, name="controls-e2e", storage=tmp_path / "runs", uri=mlflow_http.uri, epochs=1, retries=0,
               eval_every=None, base={"dataset": {"image_size": 32}, "batch_size": 64, "ema_warmup": True},
               grid={"seed": [0, 1], "method.cost": [FILE]}, analysis={}, extra={"controls": "auto"})
    assert cli_main(["run", str(path)]) == 0, capsys.readouterr().out[-3000:]
    plan = load_sweep(path)
    sweep_dir = plan.spec.sweep_dir()
    results = pd.read_parquet(sweep_dir / "results.parquet")
    assert len(results) == 6 and (results["status"] == "done").all()
    counts = _normalise(results).groupby("method.cost")["seed"].apply(sorted).to_dict()
    assert counts == {FILE: [0, 1], f"permuted({FILE})": [0, 1], f"uniform({FILE})": [0, 1]}
    assert results["error_severity@source"].notna().all()
    report = json.loads((sweep_dir / "analysis.json").read_text())
    assert report["plan_hash"] == plan.analysis.plan_hash()
    hyps = report["hypotheses"]
    assert len(hyps) == 7 and all(h["n_paired"] == 2 for h in hyps)
    primary = [h for h in hyps if h["role"] == "primary"]
    assert [(h["contrast"]["label"], h["metric"]) for h in primary] == [
        (f"method.cost={FILE} vs method.cost=uniform({FILE})", "p_mtl")]
    assert {h["family"] for h in hyps if h["role"] == "family"} == {f"{FILE} vs controls"}
    # the same conditions and the @source metric read back from MLflow (method.cost.source/.control params)
    from analysis.results import load_sweep_from_mlflow

    info = json.loads((sweep_dir / "mlflow.json").read_text())
    loaded = load_sweep_from_mlflow(info["tracking_uri"], "controls-e2e").results
    assert sorted(loaded["method.cost"]) == sorted(_normalise(results)["method.cost"])
    assert loaded["error_severity@source"].notna().all()


def test_a_module_function_source_gets_its_controls_and_source_metrics(tmp_path, capsys):
    src = "trainers.costs:au_signature"  # the registered example, reached as module:name
    path = write(tmp_path, f"""
        grid: {{seed: [0, 1, 2, 3, 4, 5, 6, 7], method.cost: ["{src}"]}}
        controls: auto""")
    plan = load_sweep(path)
    assert len(plan.trials) == 24 and len(plan.added_by_controls) == 16
    assert {"source": src, "control": "permuted"} in costs_of(plan)
    family = plan.analysis.family(f"{src} vs controls")
    assert [h.metric for h in family] == ["error_severity", "quadrant_keep", "error_severity@source"] * 2
    # 8 seeds: 2/2^8 = 0.0078 <= 0.05/6, so the family of 6 can be decided
    assert all(r.can_reach for r in plan.design)
    assert cli_main(["run", str(path), "--dry-run"]) == 0
    assert f"  + method.cost=uniform({src})" in capsys.readouterr().out


def test_include_and_exclude_take_cost_mappings_in_any_spelling(tmp_path):
    plan = load_sweep(write(tmp_path, f"""
        grid: {{seed: [0, 1], method.cost: [none, circumplex, "{FILE}"]}}
        include:
          - {{seed: 2, method.cost: {{source: circumplex, control: uniform}}}}
        exclude:
          - {{method.cost: {{source: circumplex, control: permuted}}}}
          - {{method.cost: {{source: "{FILE}", control: permuted}}, seed: 1}}
        controls: auto"""))
    got = sorted((t.seed, json.dumps(t.axes["method.cost"], sort_keys=True)) for t in plan.trials)
    assert len(got) == 12 and (2, '"uniform"') in got
    assert not any(t.axes["method.cost"] == "permuted" for t in plan.trials)
    assert [t.seed for t in plan.trials if t.axes["method.cost"] == {"source": FILE, "control": "permuted"}] == [0]
    # the circumplex's permuted control is excluded outright: no hypothesis names it
    assert [h.b["method.cost"] for h in plan.analysis.family("circumplex vs controls")] == ["uniform", "uniform"]
