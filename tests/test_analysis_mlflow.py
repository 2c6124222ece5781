"""MLflow round trip on a local tracking store: trial runs written with MlflowClient (as the
orchestrator writes them) are loaded back into the same tidy frame, analysed, and the report is
attached to the sweep's parent run."""

import json

import numpy as np
import pytest
import yaml

mlflow_tracking = pytest.importorskip("mlflow.tracking")

from analysis.report import log_report_to_mlflow, run_analysis  # noqa: E402
from analysis.results import load_sweep  # noqa: E402

SWEEP = "mlflow-roundtrip"
SPEC = {"name": SWEEP, "grid": {"seed": [0, 1, 2, 3, 4, 5], "method.cost": ["none", "circumplex"]},
        "analysis": {"baseline": {"method.cost": "none"},
                     "primary": [{"contrast": [{"method.cost": "circumplex"}, {"method.cost": "none"}],
                                  "metric": "p_mtl"}],
                     "exploratory": ["p_mtl", "expr_f1"]}}


def metrics_of(cost, seed):
    return {"p_mtl": 1.2 + 0.001 * seed + (0.01 if cost == "circumplex" else 0.0), "expr_f1": 0.3 + 0.002 * seed,
            "va_ccc": 0.44, "expr_f1/Anger": 0.1, "error_severity": 0.5}


def log_trial(client, experiment, parent_id, sweep, trial_id, seed, cost, metrics, root, status="done"):
    """A trial run as the orchestrator writes it: tags (kind, trial id, one tag per axis, seed), params =
    the flattened config (None as "null"), final metrics, artifacts, then the status."""
    from mlflow.entities import Metric, Param, RunTag

    tags = {"affsweep.sweep": sweep, "affsweep.kind": "trial", "affsweep.trial_id": trial_id,
            "mlflow.parentRunId": parent_id, "affsweep.status": "pending", "seed": str(seed), "method.cost": cost}
    rid = client.create_run(experiment, tags=tags).info.run_id
    params = {"seed": seed, "method.name": "ot", "method.cost": cost, "method.lam": 1.0, "dataset.name": "synthetic",
              "dataset.root": "null", "epochs": 6}
    final = [RunTag("affsweep.status", status), RunTag("affsweep.data_order_hash", f"order{seed}")]
    client.log_batch(rid, metrics=[Metric(k, v, 0, 6) for k, v in metrics.items()],
                     params=[Param(k, str(v)) for k, v in params.items()], tags=final)
    (root / trial_id).mkdir()
    confusion = root / trial_id / "confusion.json"
    confusion.write_text(json.dumps({"class_names": ["a", "b"], "matrix": [[5, seed], [1, 7]]}))
    client.log_artifact(rid, str(confusion))
    client.set_terminated(rid, "FAILED" if status == "failed" else "FINISHED")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A local SQLite store (what `tracking.uri: local` serves). Not file://: MLflow's file store cannot
    hold both the metric `expr_f1` and `expr_f1/<class>` (one would be a file, the other a folder)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow_tracking.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("affsweep", artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(experiment, tags={"affsweep.sweep": SWEEP, "affsweep.kind": "sweep"})
    spec_path = root / "sweep.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    client.log_artifact(parent.info.run_id, str(spec_path))
    expected = {}
    for seed in range(6):
        for cost in ("none", "circumplex"):
            trial_id = f"{cost[:4]}{seed}"
            status = "failed" if (cost, seed) == ("none", 5) else "done"
            log_trial(client, experiment, parent.info.run_id, SWEEP, trial_id, seed, cost, metrics_of(cost, seed),
                      root, status)
            expected[trial_id] = (seed, cost, metrics_of(cost, seed))
    # a second sweep whose parent run has no sweep.yaml: the axes come from the trial runs' tags
    bare = client.create_run(experiment, tags={"affsweep.sweep": "bare", "affsweep.kind": "sweep"})
    for seed in range(2):
        for cost in ("none", "circumplex"):
            log_trial(client, experiment, bare.info.run_id, "bare", f"bare-{cost[:4]}{seed}", seed, cost,
                      metrics_of(cost, seed), root)
    # noise that must not be picked up: a summary run of this sweep
    summary = client.create_run(experiment, tags={"affsweep.sweep": SWEEP, "affsweep.kind": "summary"})
    client.set_terminated(summary.info.run_id)
    return uri, client, parent.info.run_id, expected


def test_trial_runs_load_into_the_results_frame(store):
    uri, _, parent_id, expected = store
    sweep = load_sweep(SWEEP, tracking_uri=uri)
    frame = sweep.results.set_index("trial_id")
    assert sorted(frame.index) == sorted(expected)
    for trial_id, (seed, cost, metrics) in expected.items():
        row = frame.loc[trial_id]
        assert row["seed"] == seed and row["method.cost"] == cost and row["method.lam"] == 1.0
        assert row["data_order_hash"] == f"order{seed}"
        for key, value in metrics.items():
            assert row[key] == pytest.approx(value)
    assert frame.loc["none5", "status"] == "failed" and frame.loc["circ0", "status"] == "done"
    assert sweep.axes == ("method.cost",)  # from the sweep.yaml logged on the parent run
    (h,) = sweep.plan.hypotheses()
    assert (h.a, h.b, h.metric) == ({"method.cost": "circumplex"}, {"method.cost": "none"}, "p_mtl")
    assert sweep.mlflow["parent_run_id"] == parent_id
    names, matrix = sweep.confusion("circ3")
    assert names == ["a", "b"] and np.array_equal(matrix, [[5, 3], [1, 7]])
    assert frame["dataset.root"].isna().all()  # MLflow's "null" param is a missing value again


def test_without_the_yaml_the_axes_come_from_the_trial_tags(store):
    uri = store[0]
    sweep = load_sweep("bare", tracking_uri=uri)
    assert sorted(sweep.results["trial_id"]) == ["bare-circ0", "bare-circ1", "bare-none0", "bare-none1"]
    assert sweep.axes == ("method.cost",) and sweep.plan is None


def test_analysis_from_mlflow_and_report_logged_to_the_parent_run(store, tmp_path):
    uri, client, parent_id, _ = store
    report = run_analysis(tracking_uri=uri, sweep=SWEEP, out=tmp_path)
    (score,) = report.analysis.hypotheses
    # seed 5 of the base failed: it is listed, and 5 pairs remain (min p = 2/32 > 0.05)
    assert score.n == 5 and score.pvalue == 0.0625
    assert score.decision == "cannot be decided by this design"
    assert sorted(u.trial_id for u in score.pairing.unmatched) == ["circ5", "none5"]
    assert any("this design cannot decide H" in w for w in report.warnings)

    logged = log_report_to_mlflow(uri, parent_id, report.paths)
    assert {"report/report.html", "report/report.md", "report/analysis.json"} <= set(logged)
    local = client.download_artifacts(parent_id, "report/analysis.json", str(tmp_path / "dl"))
    assert json.loads(open(local).read())["hypotheses"][0]["pvalue"] == 0.0625
    top = {a.path for a in client.list_artifacts(parent_id, "report")}
    assert {"report/report.html", "report/report.md", "report/figures", "report/tables"} <= top
    figures = {a.path for a in client.list_artifacts(parent_id, "report/figures")}
    assert "report/figures/paired_p_mtl.png" in figures
    assert client.get_run(parent_id).data.tags["affsweep.report"] == "report/report.html"
