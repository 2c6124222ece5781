"""Sweeps through Ray Tune end to end: retries, failures, resume without waste, MLflow bookkeeping.

Tiny trials (test_resnet, 300 synthetic frames at 24 px, 2 epochs) on a 2-CPU local Ray. The
``ci`` test runs its steps on the session's Ray and ``LocalMlflowServer`` (the class
``tracking.uri: local`` uses; ``ray_local`` and ``mlflow_http`` in conftest); the slower CLI test
runs ``affsweep run`` as a user does, with ``tracking.uri: local``, and interrupts it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from orchestrator import sweep_dir as record
from orchestrator import tracking
from orchestrator.driver import run_sweep
from orchestrator.expand import load_sweep
from tests.support.services import listening_addresses
from tests.support.sweeps import CIRCUMPLEX_VS_NONE, sweep_yaml

REPO = Path(__file__).resolve().parents[1]

def write_sweep(path: Path, seeds: list[int], uri: str, storage: Path, **options) -> Path:
    """The tiny sweep of these tests on 300 frames: {none, circumplex} x ``seeds``, circumplex vs none declared."""
    return sweep_yaml(path, name="e2e" if "name" not in options else options.pop("name"), storage=storage, uri=uri,
                      grid={"seed": seeds, "method.cost": ["none", "circumplex"]}, base={"dataset": {"n": 300}},
                      analysis={"primary": [CIRCUMPLEX_VS_NONE], "exploratory": ["p_mtl", "va_ccc"]}, **options)


def trial_runs(client, experiment_id: str) -> list:
    return [r for r in client.search_runs([experiment_id], "", max_results=1000)]


@pytest.mark.slow
@pytest.mark.ci
def test_sweep_retries_fails_resumes_and_never_duplicates(tmp_path, ray_local, mlflow_http, monkeypatch):
    mlflow_server = mlflow_http  # the session's server, as `tracking.uri: local` starts it
    assert listening_addresses(mlflow_server.port) == {"127.0.0.1"}  # never beyond this machine
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "0")
    path = tmp_path / "e2e.yaml"

    def write(seeds):
        return load_sweep(write_sweep(path, seeds, mlflow_server.uri, tmp_path / "runs"))

    plan = write([0, 1])
    sweep_dir = plan.spec.sweep_dir()
    ids = [t.trial_id for t in plan.trials]
    flaky, broken = ids[0], ids[3]
    monkeypatch.setenv("AFFSWEEP_FAIL_TRIALS", f"{flaky}:1,{broken}:5")
    said: list[str] = []

    # --- 1. one trial fails once (retried from its checkpoint), one keeps failing ------------------
    out = run_sweep(plan, sweep_dir, analyze=False, say=said.append)
    assert out.exit_code == 1
    assert out.started == ids and out.failed == [broken] and sorted(out.done) == sorted(ids[:3])
    state = record.read_state(record.trial_dir(sweep_dir, flaky))
    assert state["status"] == "done" and state["attempt"] == 2
    assert state["first_epoch"] == 2  # the retry resumed from the epoch-1 checkpoint
    state = record.read_state(record.trial_dir(sweep_dir, broken))
    assert state["status"] == "failed" and state["attempt"] == 2  # max_retries 1: two attempts
    assert state["error"].startswith(f"InjectedFailure: injected failure of trial {broken} after epoch")
    # the console's non-TTY line is "[<progress>] <message>"
    assert any(re.search(rf"(^|\] )trial {broken} FAILED after 2 attempt\(s\)", line) for line in said)

    table = pd.read_parquet(sweep_dir / "results.parquet")
    assert list(table["trial_id"]) == ids
    assert list(table["status"]) == ["done", "done", "done", "failed"]
    assert table.loc[3, "error"] == state["error"] and table.loc[:2, "error"].isna().all()
    assert list(table["method.cost"]) == ["none", "circumplex"] * 2 and list(table["seed"]) == [0, 0, 1, 1]
    # matched seeds: both conditions of seed 0 saw the same data in the same order
    assert table.loc[0, "data_order_hash"] == table.loc[1, "data_order_hash"] != table.loc[2, "data_order_hash"]
    assert (sweep_dir / "results.csv").is_file() and (sweep_dir / "sweep.yaml").read_text() == path.read_text()
    assert not (sweep_dir / "driver.json").exists()

    info = record.read_json(sweep_dir / "mlflow.json")
    assert info["tracking_uri"] == mlflow_server.uri and set(info) == {"tracking_uri", "experiment_id",
                                                                         "parent_run_id", "ui_command", "ui_url"}
    assert info["ui_command"] is None  # a remote server: no local store to open
    assert f"#/experiments/{info['experiment_id']}/runs?workflowType=machine_learning" in info["ui_url"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    runs = trial_runs(client, info["experiment_id"])
    kinds = Counter(r.data.tags["affsweep.kind"] for r in runs)
    assert kinds == {"sweep": 1, "trial": 4, "summary": 2}
    by_trial = {r.data.tags["affsweep.trial_id"]: r for r in runs if r.data.tags["affsweep.kind"] == "trial"}
    assert sorted(by_trial) == sorted(ids)
    flaky_run = by_trial[flaky]
    assert flaky_run.info.status == "FINISHED" and flaky_run.data.tags["affsweep.status"] == "done"
    assert [m.step for m in client.get_metric_history(flaky_run.info.run_id, "epoch")] == [1, 2]
    assert [m.step for m in client.get_metric_history(flaky_run.info.run_id, "p_mtl")] == [1, 2]
    assert sorted(a.path for a in client.list_artifacts(flaky_run.info.run_id)) == sorted(tracking.TRIAL_ARTIFACTS)
    broken_run = by_trial[broken]
    assert broken_run.info.status == "FAILED" and broken_run.data.tags["affsweep.status"] == "failed"
    assert broken_run.data.tags["affsweep.error"] == state["error"]
    parent = client.get_run(info["parent_run_id"])
    assert parent.info.status == "FAILED" and parent.data.tags["affsweep.kind"] == "sweep"

    # --- 2. rerun without the fault: only the failed trial runs, in its existing MLflow run --------
    monkeypatch.delenv("AFFSWEEP_FAIL_TRIALS")
    out = run_sweep(load_sweep(path), sweep_dir, analyze=False, say=said.append)
    assert out.exit_code == 0 and out.started == [broken] and sorted(out.skipped) == sorted(ids[:3])
    assert len(trial_runs(client, info["experiment_id"])) == 7
    rerun = client.get_run(broken_run.info.run_id)
    assert rerun.info.status == "FINISHED" and rerun.data.tags["affsweep.status"] == "done"
    assert [m.step for m in client.get_metric_history(broken_run.info.run_id, "epoch")] == [1, 2]
    assert list(pd.read_parquet(sweep_dir / "results.parquet")["status"]) == ["done"] * 4

    # --- 3. rerun the finished sweep: nothing starts, nothing is added ----------------------------
    mtimes = {i: (record.trial_dir(sweep_dir, i) / "result.json").stat().st_mtime_ns for i in ids}
    out = run_sweep(load_sweep(path), sweep_dir, analyze=False, say=said.append)
    assert out.exit_code == 0 and out.started == [] and sorted(out.skipped) == sorted(ids)
    assert len(trial_runs(client, info["experiment_id"])) == 7
    assert {i: (record.trial_dir(sweep_dir, i) / "result.json").stat().st_mtime_ns for i in ids} == mtimes
    assert record.read_json(sweep_dir / "mlflow.json")["parent_run_id"] == info["parent_run_id"]

    # --- 4. add a seed: exactly its two trials run; the analysis runs when the sweep completes -----
    plan = write([0, 1, 2])
    new = [t.trial_id for t in plan.trials if t.seed == 2]
    out = run_sweep(plan, sweep_dir, analyze=True, say=said.append)
    assert out.exit_code == 0 and out.started == new and sorted(out.done) == sorted(ids + new)
    runs = trial_runs(client, info["experiment_id"])
    kinds = Counter(r.data.tags["affsweep.kind"] for r in runs)
    assert kinds == {"sweep": 1, "trial": 6, "summary": 2}
    trial_ids = [r.data.tags["affsweep.trial_id"] for r in runs if r.data.tags["affsweep.kind"] == "trial"]
    assert sorted(trial_ids) == sorted(ids + new)  # exactly one run per trial_id
    for s in (r for r in runs if r.data.tags["affsweep.kind"] == "summary"):
        assert s.data.metrics["p_mtl/n"] == 3 and s.info.status == "FINISHED"
        # top level (listed first in the UI), linked to the sweep's parent run by its own tag
        assert s.data.tags["affsweep.parent_run_id"] == info["parent_run_id"]
        assert "mlflow.parentRunId" not in s.data.tags
    assert len(pd.read_parquet(sweep_dir / "results.parquet")) == 6
    assert out.report is not None and out.report.is_file()
    parent = client.get_run(info["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags.get("affsweep.report") == "report/report.html"
    assert client.get_experiment(info["experiment_id"]).tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.slow
def test_cli_local_tracking_interrupt_and_resume(tmp_path):
    """`affsweep run` with tracking.uri: local; Ctrl-C mid-sweep keeps finished trials, stops the
    MLflow server; the rerun resumes and never re-runs a finished trial; `status` reports it."""
    path = tmp_path / "local.yaml"
    write_sweep(path, [0, 1, 2], "local", tmp_path / "runs", epochs=3, retries=0)
    plan = load_sweep(path)
    sweep_dir = plan.spec.sweep_dir()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "orchestrator", "run", str(path)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and not any(
                record.read_result(record.trial_dir(sweep_dir, t.trial_id)) for t in plan.trials):
            time.sleep(1)
        os.killpg(proc.pid, signal.SIGINT)  # a Ctrl-C at the terminal reaches the whole group
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done_first = [t.trial_id for t in plan.trials if record.read_result(record.trial_dir(sweep_dir, t.trial_id))]
    assert proc.returncode != 0 and done_first and len(done_first) < len(plan.trials), out[-3000:]
    assert not (sweep_dir / "driver.json").exists()
    info = record.read_json(sweep_dir / "mlflow.json")
    assert info["tracking_uri"] == f"sqlite:///{sweep_dir / 'mlflow' / 'mlflow.db'}"

    status = subprocess.run([sys.executable, "-m", "orchestrator", "status", str(path)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0
    total = next(line for line in status.stdout.splitlines() if line.startswith("all")).split()
    assert total[1:] == [str(len(done_first)), "0", "0", str(len(plan.trials) - len(done_first)),
                         str(len(plan.trials))]

    mtimes = {i: (record.trial_dir(sweep_dir, i) / "result.json").stat().st_mtime_ns for i in done_first}
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"{len(done_first)} already done, {len(plan.trials) - len(done_first)} to run" in rerun.stdout
    assert {i: (record.trial_dir(sweep_dir, i) / "result.json").stat().st_mtime_ns for i in done_first} == mtimes
    assert f"browse:   mlflow ui --backend-store-uri {info['tracking_uri']}" in rerun.stdout
    from mlflow.tracking import MlflowClient

    client = MlflowClient(info["tracking_uri"])  # the SQLite store, readable without the server
    runs = client.search_runs([info["experiment_id"]], "tags.`affsweep.kind` = 'trial'", max_results=100)
    assert sorted(r.data.tags["affsweep.trial_id"] for r in runs) == sorted(t.trial_id for t in plan.trials)
    assert all(r.info.status == "FINISHED" for r in runs)
    for r in runs:  # interrupted trials resumed: still exactly one value per epoch
        assert [m.step for m in client.get_metric_history(r.info.run_id, "epoch")] == [1, 2, 3]
    assert len(pd.read_parquet(sweep_dir / "results.parquet")) == len(plan.trials)
