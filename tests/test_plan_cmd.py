"""`affsweep plan`, analysis.looks and `affsweep run --until-decided` (docs/methods.md §15–16 wiring); no Ray.

Seed counts are checked against hand arithmetic: the exact two-sided sign-flip floor with n seeds
is 2/2**n (one-sided 1/2**n), so p <= .05 needs 2**n >= 40 (n = 6), Holm's first step in a family
of 2 needs 2**n >= 80 (n = 7), of 4 needs 2**n >= 160 (n = 8), one-sided at .05 2**n >= 20 (n = 5).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis.plan import AnalysisPlan
from orchestrator import sweep_dir as record
from orchestrator.cli import main as cli
from orchestrator.expand import load_sweep
from orchestrator.until_decided import run_until_decided
from tests.support.fake_sweep import write_demo_sweep
from tests.support.sweeps import CIRCUMPLEX_VS_NONE, sweep_yaml

REPO = Path(__file__).resolve().parent.parent
BASE = {"dataset": {"name": "synthetic", "preset": "affwild2_like", "n": 600, "image_size": 32},
        "backbone": {"name": "test_resnet", "pretrained": False}, "method": {"name": "focal"}, "epochs": 1}
DEMO_PLAN = {
    "baseline": {"method.cost": "none"},
    "primary": [{"contrast": [{"method.cost": "uniform"}, {"method.cost": "circumplex"}], "metric": "p_mtl"}],
    "families": {"error_structure": [{"contrast": [{"method.cost": "circumplex"}, {"method.cost": "uniform"}],
                                      "metrics": ["error_severity", "quadrant_keep"]}]},
}


def write_sweep(tmp_path: Path, seeds, costs=("none", "circumplex", "uniform"), **analysis) -> Path:
    spec = {"name": "plan-test", "base": BASE, "grid": {"seed": list(seeds), "method.cost": list(costs)},
            "analysis": analysis, "storage": str(tmp_path / "runs")}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_plan_prints_the_seeds_each_hypothesis_needs_for_the_demo(capsys):
    assert cli(["plan", str(REPO / "sweeps/demo.yaml")]) == 0
    out = capsys.readouterr().out
    assert "on p_mtl [two-sided]: p <= 0.05 needs 6 seeds; 6 paired here: enough" in out
    assert re.search(r"family error_structure \(Holm, m = 2; first step p <= alpha/m = 0\.025\): needs 7 seeds, "
                     r"has 6: NOT enough: needs 1 more", out)


def test_a_holm_family_of_four_needs_eight_seeds_and_one_sided_needs_five(tmp_path, capsys):
    path = write_sweep(
        tmp_path, range(6), costs=("none", "circumplex", "uniform", "permuted"),
        primary=[{"contrast": [{"method.cost": "circumplex"}, {"method.cost": "none"}], "metric": "expr_f1",
                  "direction": "greater"}],
        families={"four": [{"contrast": [{"method.cost": "circumplex"}, {"method.cost": "uniform"}],
                            "metrics": ["error_severity", "quadrant_keep", "expr_f1", "p_mtl"]}]})
    assert cli(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "[greater]: p <= 0.05 needs 5 seeds; 6 paired here: enough" in out
    assert "family four (Holm, m = 4; first step p <= alpha/m = 0.0125): needs 8 seeds, has 6: NOT enough" in out
    assert out.count("p <= 0.0125 needs 8 seeds") == 4


def test_plan_works_for_every_sweep_in_sweeps(capsys):
    sweeps = [p for p in sorted((REPO / "sweeps").rglob("*.yaml")) if "grid" in yaml.safe_load(p.read_text())]
    assert len(sweeps) >= 20
    for path in sweeps:
        assert cli(["plan", str(path)]) == 0, (path, capsys.readouterr().err)
    capsys.readouterr()


def test_pilot_power_uses_the_pilots_own_paired_differences(tmp_path, capsys):
    pilot = write_demo_sweep(tmp_path / "pilot", seeds=range(4), costs=("none", "circumplex", "uniform"),
                             analysis=DEMO_PLAN)
    path = write_sweep(tmp_path, range(6), **DEMO_PLAN)
    assert cli(["plan", str(path), "--pilot", str(pilot), "--n-sim", "400"]) == 0
    out = capsys.readouterr().out
    # independent of the analysis package: pivot the pilot's results by hand
    frame = pd.read_parquet(pilot / "results.parquet").pivot(index="seed", columns="method.cost", values="p_mtl")
    d = (frame["uniform"] - frame["circumplex"]).to_numpy()
    block = out[out.index("primary: method.cost=uniform vs method.cost=circumplex on p_mtl"):]
    effect = d.mean() / d.std(ddof=1)
    assert f"pilot: 4 paired seeds, mean difference {d.mean():+.4g}, standardised effect {effect:+.3g}" in block
    for n in (6, 8, 10, 12, 16, 20):
        assert re.search(rf"n = {n:>2}: power [01]\.\d\d ± 0\.\d\d \(95% [01]\.\d\d–[01]\.\d\d\)", block), n
    assert "recommended:" in block and "normal model" in out
    # the family of 2 at .025: 6 seeds cannot reach it (2/64 > .025), so the power there is exactly 0
    family = out[out.index("family error_structure: method.cost=circumplex vs method.cost=uniform on error_severity"):]
    assert "n =  6: power 0 (threshold not attainable at this n)" in family


def test_a_pilot_with_two_seeds_gives_no_estimate(tmp_path, capsys):
    pilot = write_demo_sweep(tmp_path / "pilot", seeds=range(2), costs=("circumplex", "uniform"), analysis=DEMO_PLAN)
    path = write_sweep(tmp_path, range(6), costs=("circumplex", "uniform"), primary=DEMO_PLAN["primary"])
    assert cli(["plan", str(path), "--pilot", str(pilot)]) == 0
    assert "the pilot has 2 paired seed(s) for it; a power estimate needs at least 3" in capsys.readouterr().out


def test_looks_beyond_the_grids_seeds_are_one_line_exit_2(tmp_path, capsys):
    path = write_sweep(tmp_path, range(6), primary=DEMO_PLAN["primary"], looks=[6, 10, 16])
    for argv in (["run", str(path), "--dry-run"], ["plan", str(path)]):
        assert cli(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err
        line = 1 + next(i for i, t in enumerate(path.read_text().splitlines()) if t.strip().startswith("looks:"))
        assert err.startswith(f"error: {path}:{line}: analysis.looks: looks [6, 10, 16] need 16 seeds but grid.seed "
                              f"lists 6"), err


def test_until_decided_without_looks_is_one_line_exit_2(tmp_path, capsys):
    path = write_sweep(tmp_path, range(6), primary=DEMO_PLAN["primary"])
    assert cli(["run", str(path), "--until-decided", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--until-decided needs a sequential design: analysis.looks" in err


def test_plan_and_dry_run_say_an_obrien_fleming_first_look_at_6_of_16_cannot_reject(tmp_path, capsys):
    path = write_sweep(tmp_path, range(16), primary=DEMO_PLAN["primary"], looks=[6, 10, 16])
    for argv in (["plan", str(path)], ["run", str(path), "--dry-run"]):
        assert cli(argv) == 0
        out = capsys.readouterr().out
        # O'Brien-Fleming: alpha(6/16) = 2 - 2 Phi(1.96 / sqrt(.375)) = .0014 < 2/64
        assert re.search(r"look 1: 6 seeds, cumulative alpha\(t\) = 0\.00137\d, smallest p = 0\.03125: CANNOT reject",
                         out), out
        assert "look 2: 10 seeds" in out and "can reject here" in out


def test_the_plan_hash_covers_looks_and_spending_and_not_their_absence():
    fixed = AnalysisPlan(primary=DEMO_PLAN["primary"])
    hashes = {fixed.plan_hash(), AnalysisPlan(primary=DEMO_PLAN["primary"], looks=[8, 12, 16]).plan_hash(),
              AnalysisPlan(primary=DEMO_PLAN["primary"], looks=[8, 12, 16], spending="pocock").plan_hash(),
              AnalysisPlan(primary=DEMO_PLAN["primary"], looks=[8, 12]).plan_hash()}
    assert len(hashes) == 4
    assert "looks" not in fixed.canonical_json() and "spending" not in fixed.canonical_json()
    with pytest.raises(ValueError, match="spending rule needs looks"):
        AnalysisPlan(spending="pocock")


def test_the_shipped_sequential_sweep_can_reject_at_every_look(capsys):
    path = REPO / "sweeps/study/cost_controls.sequential.synthetic.yaml"
    assert load_sweep(path).analysis.looks == [8, 12, 16]
    assert cli(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "CANNOT" not in out and out.count("can reject here") == 6


# --- the until-decided loop, with a fake runner -----------------------------------------------------

EFFECT = {"none": 0.0, "uniform": 1.0, "circumplex": 0.0}  # uniform vs none: large; circumplex vs none: null


class FakeRunner:
    """Stands in for driver.run_sweep: 'runs' a filtered plan by writing each pending trial's result.json."""

    def __init__(self):
        self.calls: list[list] = []

    def __call__(self, plan, sweep_dir, say=print, **kwargs):
        ran = []
        for t in plan.trials:
            tdir = record.trial_dir(sweep_dir, t.trial_id)
            if record.read_result(tdir) is not None:
                continue
            rng = np.random.default_rng([t.seed, len(t.axes["method.cost"])])
            value = 0.5 + 0.1 * t.seed + EFFECT[t.axes["method.cost"]] + rng.normal(0, 0.05)
            record.write_json(tdir / "result.json", {"trial_id": t.trial_id, "seed": t.seed, "status": "done",
                                                     **t.axes, "p_mtl": value, "expr_f1": value / 2})
            ran.append((t.axes["method.cost"], t.seed))
        self.calls.append(ran)
        return SimpleNamespace(exit_code=0)


def _sequential_sweep(tmp_path):
    primary = [{"contrast": [{"method.cost": "uniform"}, {"method.cost": "none"}], "metric": "p_mtl"},
               {"contrast": [{"method.cost": "circumplex"}, {"method.cost": "none"}], "metric": "p_mtl"}]
    seeds = [15, 3, 9, 0, 12, 6, 1, 8, 14, 2, 11, 5, 7, 13, 4, 10]  # run in the order written
    return write_sweep(tmp_path, seeds, primary=primary, exploratory=["p_mtl"], looks=[8, 12, 16],
                       spending="pocock"), seeds


def test_until_decided_extends_only_undecided_hypotheses(tmp_path):
    path, seeds = _sequential_sweep(tmp_path)
    plan = load_sweep(path)
    sweep_dir = plan.spec.sweep_dir()
    runner = FakeRunner()
    outcome = run_until_decided(plan, sweep_dir, run=runner, say=lambda _: None)
    assert outcome.looks_run == [1, 2, 3] and outcome.exit_code == 0
    look1, look2, look3 = (sorted(c) for c in runner.calls)
    assert look1 == sorted((c, s) for c in ("none", "circumplex", "uniform") for s in seeds[:8])  # the whole grid
    # uniform vs none was decided at look 1 (8 same-signed seeds: p = 2/256 <= Pocock's .031): no more uniform seeds
    assert look2 == sorted((c, s) for c in ("none", "circumplex") for s in seeds[8:12])
    assert look3 == sorted((c, s) for c in ("none", "circumplex") for s in seeds[12:16])
    first, last = outcome.states[0], outcome.states[-1]
    assert first.decisions[0].status == "rejected" and first.decisions[0].look == 1
    assert first.decisions[1].status == "continue" and first.next_n(1) == 12
    assert last.decisions[0] == first.decisions[0]  # decided once, replayed the same
    assert last.decisions[1].look == 3 and last.decisions[1].decided and not last.undecided
    # a rerun finds everything done: nothing more is run, the same decisions come out
    again = FakeRunner()
    rerun = run_until_decided(plan, sweep_dir, run=again, say=lambda _: None)
    assert all(c == [] for c in again.calls) and rerun.states[-1].decisions == last.decisions

    # the report says which look decided each hypothesis (analysis.json too)
    from analysis.report import run_analysis

    shutil.copyfile(path, sweep_dir / "sweep.yaml")
    record.write_results(plan, sweep_dir)
    report = run_analysis(sweep_dir)
    payload = json.loads(report.json.read_text())
    assert payload["sequential"] == {"looks": [8, 12, 16], "spending": "pocock"}
    uniform, circumplex = payload["hypotheses"]
    assert uniform["decided_at_look"] == 1 and uniform["sequential"]["n"] == 8
    assert uniform["decision"].endswith("supported at look 1 of 3 (8 seeds)")
    assert circumplex["decided_at_look"] == 3 and circumplex["sequential"]["n"] == 16
    assert "supported at look 1 of 3 (8 seeds)" in report.markdown.read_text()


def test_a_failed_look_stops_the_loop(tmp_path):
    path, _ = _sequential_sweep(tmp_path)
    plan = load_sweep(path)
    outcome = run_until_decided(plan, plan.spec.sweep_dir(), run=lambda *a, **k: SimpleNamespace(exit_code=1),
                                say=lambda _: None)
    assert outcome.looks_run == [1] and outcome.exit_code == 1 and "rerun the same command" in outcome.stopped


# --- end to end, through Ray Tune and MLflow (slow) --------------------------------------------------



@pytest.mark.slow
@pytest.mark.ci
def test_until_decided_end_to_end(tmp_path, ray_local, mlflow_http, monkeypatch):
    """Two looks on a tiny world (2 and 3 seeds can never reject: the mechanics, not a finding):
    look 1 runs seeds 2 and 0, look 2 adds seed 1, one MLflow parent run, the report says look 2."""
    from mlflow.tracking import MlflowClient

    from orchestrator.driver import run_sweep

    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    server = mlflow_http  # the session's Ray and MLflow server (conftest)
    path = tmp_path / "until.yaml"
    # seeds in the order a sequential design runs them: look 1 is seeds 2 and 0
    sweep_yaml(path, name="until-decided", storage=tmp_path / "runs", uri=server.uri, epochs=1, eval_every=None,
               base={"dataset": {"n": 300}}, grid={"seed": [2, 0, 1], "method.cost": ["none", "circumplex"]},
               analysis={"primary": [CIRCUMPLEX_VS_NONE], "exploratory": ["p_mtl"], "looks": [2, 3],
                         "spending": "pocock"})
    plan = load_sweep(path)
    sweep_dir = plan.spec.sweep_dir()
    said: list[str] = []
    outcome = run_until_decided(plan, sweep_dir, run_sweep, say=said.append)
    assert outcome.exit_code == 0 and outcome.looks_run == [1, 2], said
    assert outcome.trials_per_look == [4, 6]
    table = pd.read_parquet(sweep_dir / "results.parquet")
    assert sorted(table["seed"]) == [0, 0, 1, 1, 2, 2] and set(table["status"]) == {"done"}
    payload = json.loads((sweep_dir / "analysis.json").read_text())
    (h,) = payload["hypotheses"]
    assert h["sequential"]["status"] == "not_rejected" and h["decided_at_look"] == 2
    assert h["sequential"]["n"] == 3 and h["decision"].endswith("not supported at look 2 of 2 (3 seeds)")
    info = record.read_json(sweep_dir / "mlflow.json")
    runs = MlflowClient(server.uri).search_runs([info["experiment_id"]], "", max_results=100)
    kinds = sorted(r.data.tags.get("affsweep.kind") for r in runs)
    assert kinds.count("sweep") == 1 and kinds.count("trial") == 6, kinds
