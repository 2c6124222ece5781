"""MLflow bookkeeping, the results table and `affsweep status`, without Ray (a SQLite MLflow store)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from orchestrator import sweep_dir as record
from orchestrator import tracking
from orchestrator.cli import main as cli_main
from tests.support.finished_trials import finish_trial, small_plan


@pytest.fixture
def plan(tmp_path):
    return small_plan(tmp_path)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating its tables takes seconds); one experiment per test."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def tracker(store, tmp_path, request):
    # without a server, artifacts go to a plain directory (MLflow's default would be ./mlruns)
    return tracking.SweepTracker(store, request.node.name, "t", artifact_location=(tmp_path / "artifacts").as_uri())


def test_runs_are_found_by_tag_never_duplicated(plan, tmp_path, tracker):
    yaml_copy = tmp_path / "sweep.yaml"
    yaml_copy.write_text(plan.source.text)
    parent = tracker.ensure_parent(plan.analysis.plan_hash(), yaml_copy)
    exp = tracker.client.get_experiment(tracker.experiment_id).name
    assert tracking.SweepTracker(tracker.uri, exp, "t").ensure_parent("x", yaml_copy) == parent
    runs = tracker.trial_runs()
    ids = [tracker.ensure_trial_run(t, runs) for t in plan.trials]
    again = tracking.SweepTracker(tracker.uri, exp, "t")
    again.parent_run_id = parent
    assert [again.ensure_trial_run(t, again.trial_runs()) for t in plan.trials] == ids
    kinds = [r.data.tags[tracking.KIND] for r in tracker.runs()]
    assert sorted(kinds) == ["sweep"] + ["trial"] * 6
    # another sweep in the same experiment has its own runs
    assert tracking.SweepTracker(tracker.uri, exp, "other").runs() == []

    run = tracker.client.get_run(ids[1])
    t = plan.trials[1]
    tags = run.data.tags
    assert tags["mlflow.parentRunId"] == parent and tags[tracking.TRIAL_ID] == t.trial_id
    assert tags["affsweep.sweep"] == "t" and tags[tracking.KIND] == "trial"
    assert tags["seed"] == "0" and tags["method.cost"] == "circumplex"
    params = run.data.params
    assert params["method.cost"] == "circumplex" and params["dataset.n"] == "300" and params["seed"] == "0"
    assert params["backbone.kwargs"] == "{}" and len(params) == len(tracking.flatten_params(
        t.config.model_dump(mode="json")))
    assert run.info.status == "SCHEDULED"
    # the parent carries the plan hash of the latest `affsweep run` (the plan may have been edited)
    assert tracker.client.get_run(parent).data.tags["affsweep.plan_hash"] == "x"
    assert [a.path for a in tracker.client.list_artifacts(parent)] == ["sweep.yaml"]


def test_trial_logging_never_repeats_an_epoch(plan, tmp_path, tracker):
    tracker.ensure_parent("h", plan.source.path)
    t = plan.trials[0]
    run_id = tracker.ensure_trial_run(t, {})
    c = tracker.client
    tracking.log_epoch(c, run_id, 1, {"epoch": 1, "p_mtl": 0.1, "train/loss": 2.0, "note": "x"})
    assert tracking.last_logged_epoch(c, run_id) == 1
    sweep_dir = tmp_path / "runs" / "t"
    result = finish_trial(sweep_dir, t, 0.4)
    history = record.read_json(record.trial_dir(sweep_dir, t.trial_id) / "history.json")
    # a trial restarted from scratch re-reports epoch 1: only epoch 2 and the final metrics are new
    tracking.log_trial_result(c, run_id, record.trial_dir(sweep_dir, t.trial_id), result, history=history)
    assert [(m.step, m.value) for m in c.get_metric_history(run_id, "p_mtl")] == [(1, 0.1), (2, 0.4)]
    assert [(m.step, m.value) for m in c.get_metric_history(run_id, "train_seconds")] == [(2, 1.5)]
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[tracking.STATUS] == "done"
    assert run.data.tags["affsweep.data_order_hash"] == "h0"
    assert sorted(a.path for a in c.list_artifacts(run_id)) == sorted(tracking.TRIAL_ARTIFACTS)

    tracking.mark_trial_failed(c, run_id, "boom", final=True)
    run = c.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["affsweep.error"] == "boom"


def test_summary_per_condition_mean_std_n(plan, tmp_path, tracker):
    sweep_dir = tmp_path / "runs" / "t"
    tracker.ensure_parent("h", plan.source.path)
    values = {}
    for i, t in enumerate(plan.trials[:5]):  # the last circumplex seed has not finished
        values[t.trial_id] = 0.1 * (i + 1)
        finish_trial(sweep_dir, t, values[t.trial_id])
    tracking.refresh_summaries(plan, sweep_dir, tracker)
    summaries = tracker.runs("summary")
    assert len(summaries) == 2
    for label, trials in plan.conditions().items():
        run = next(r for r in summaries if r.data.tags["affsweep.condition"] == label)
        got = [values[t.trial_id] for t in trials if t.trial_id in values]
        m = run.data.metrics
        assert m["p_mtl/mean"] == pytest.approx(np.mean(got))
        assert m["p_mtl/std"] == pytest.approx(np.std(got, ddof=1))
        assert m["p_mtl/n"] == len(got)
        assert m["expr_f1/Anger/mean"] == pytest.approx(0.1)
        assert "error_severity/mean" not in m  # no finite value: nothing to summarise
        assert run.data.tags["method.cost"] == trials[0].axes["method.cost"]
        # top level (the UI lists them first), linked to the sweep's parent run by affsweep's own tag
        assert run.data.tags["affsweep.parent_run_id"] == tracker.parent_run_id
        assert "mlflow.parentRunId" not in run.data.tags
        assert run.info.status == ("FINISHED" if len(got) == 3 else "RUNNING")
    # refreshing without news logs nothing; a new finished seed updates the same run
    circ = next(r for r in summaries if r.data.tags["affsweep.condition"] == "method.cost=circumplex")
    tracking.refresh_summaries(plan, sweep_dir, tracker)
    assert len(tracker.client.get_metric_history(circ.info.run_id, "p_mtl/mean")) == 1
    finish_trial(sweep_dir, plan.trials[5], 0.9)
    tracking.refresh_summaries(plan, sweep_dir, tracker)
    assert len(tracker.runs("summary")) == 2
    history = tracker.client.get_metric_history(circ.info.run_id, "p_mtl/n")
    assert [(m.step, m.value) for m in history] == [(2, 2.0), (3, 3.0)]
    assert tracker.client.get_run(circ.info.run_id).info.status == "FINISHED"


def test_results_table_rows_columns_and_failures(plan, tmp_path):
    sweep_dir = tmp_path / "runs" / "t"
    sweep_dir.mkdir(parents=True)
    finish_trial(sweep_dir, plan.trials[0], 0.3)
    finish_trial(sweep_dir, plan.trials[3], 0.5)
    record.update_state(record.trial_dir(sweep_dir, plan.trials[1].trial_id), status="failed",
                        error="NonFiniteLossError: non-finite loss at epoch 1")
    record.update_state(record.trial_dir(sweep_dir, plan.trials[2].trial_id), status="running", attempt=1)
    df = record.write_results(plan, sweep_dir)
    for saved in (pd.read_parquet(sweep_dir / "results.parquet"), pd.read_csv(sweep_dir / "results.csv")):
        assert list(saved.columns[:5]) == ["trial_id", "sweep", "seed", "status", "method.cost"]
        assert list(saved["trial_id"]) == [plan.trials[i].trial_id for i in (0, 1, 3)]  # plan order
        assert list(saved["status"]) == ["done", "failed", "done"]
        assert list(saved["method.cost"]) == ["none", "circumplex", "circumplex"]
        assert saved["p_mtl"].iloc[0] == 0.3 and math.isnan(saved["p_mtl"].iloc[1])
        assert saved["error"].iloc[1] == "NonFiniteLossError: non-finite loss at epoch 1"
        assert "expr_f1/Anger" in saved.columns and saved["data_order_hash"].iloc[2] == "h1"
    assert len(df) == 3
    assert not [p for p in sweep_dir.iterdir() if p.name.endswith(".tmp")]


def test_the_result_row_is_the_plans_sweep_seed_and_axes_then_the_stored_metrics(plan):
    from trainers.result_row import result_row

    t = plan.trials[1]  # method.cost = circumplex
    stored = {"p_mtl": 0.4, "trial_id": t.trial_id, "method.cost": "stale", "sweep": "old", "status": "done"}
    row = record.plan_row(t, "t", "done", stored)
    assert row == {"trial_id": t.trial_id, "sweep": "t", "seed": t.seed, "status": "done",
                   "method.cost": "circumplex", "p_mtl": 0.4}
    assert list(row) == ["trial_id", "sweep", "seed", "status", "method.cost", "p_mtl"]
    # a trial alone (`affsweep train`): no sweep, no axes
    assert result_row("abc", 3, "done", {"p_mtl": 0.1}) == {"trial_id": "abc", "sweep": None, "seed": 3,
                                                            "status": "done", "p_mtl": 0.1}


def test_status_counts_per_condition(plan, tmp_path, capsys):
    sweep_dir = tmp_path / "runs" / "t"
    finish_trial(sweep_dir, plan.trials[0], 0.3)
    record.update_state(record.trial_dir(sweep_dir, plan.trials[1].trial_id), status="failed", error="boom")
    record.update_state(record.trial_dir(sweep_dir, plan.trials[2].trial_id), status="running", attempt=1)
    (sweep_dir / "sweep.yaml").write_text(plan.source.text)
    # no driver alive: the started trial was interrupted and is pending again
    assert cli_main(["status", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[3:] if line and line[0] != "-"}
    assert rows["method.cost=none"] == ["1", "0", "0", "2", "3"]
    assert rows["method.cost=circumplex"] == ["0", "0", "1", "2", "3"]
    assert rows["all"] == ["1", "0", "1", "4", "6"]
    assert f"failed: {plan.trials[1].trial_id} (method.cost=circumplex, seed 0): boom" in out
    # with a live driver, it is running
    record.write_json(sweep_dir / "driver.json", {"pid": __import__("os").getpid(),
                                                  "host": __import__("socket").gethostname(), "started": "now"})
    assert cli_main(["status", str(plan.source.path)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[3:] if line and line[0] != "-"}
    assert rows["method.cost=none"] == ["1", "1", "0", "1", "3"]
    assert "running (pid" in out.splitlines()[0]


def test_status_of_an_unknown_directory_is_an_error(tmp_path, capsys):
    assert cli_main(["status", str(tmp_path)]) == 2
    assert "not a sweep directory" in capsys.readouterr().err


def test_summary_statistics_ignore_non_finite():
    rows = [{"trial_id": "a", "x": 1.0, "y": float("nan"), "seed": 0},
            {"trial_id": "b", "x": 3.0, "y": 2.0, "seed": 1, "flag": True}]
    stats = tracking.summary_statistics(rows)
    assert stats["x"] == (2.0, pytest.approx(math.sqrt(2)), 2)
    assert stats["y"][0] == 2.0 and stats["y"][2] == 1 and math.isnan(stats["y"][1])
    assert "seed" not in stats and "flag" not in stats


def test_flatten_params_dotted():
    flat = tracking.flatten_params({"a": {"b": 1, "c": {"d": None}}, "e": [1, 2], "f": {}})
    assert flat == {"a.b": "1", "a.c.d": "null", "e": "[1, 2]", "f": "{}"}
    assert json.loads(flat["e"]) == [1, 2]


class LostReplies:
    """An MlflowClient whose chosen calls land and then raise (the reply was lost), or are sent twice
    (MLflow's client re-sends a POST after a read error): the fault of ``test_faults_lost_reply.py``
    without a server."""

    def __init__(self, client, lose: dict[str, int] | None = None, twice: set[str] = frozenset()):
        self.client, self.lose, self.twice = client, dict(lose or {}), set(twice)

    def __getattr__(self, name):
        fn = getattr(self.client, name)

        def call(*args, **kwargs):
            if name in self.twice:
                self.twice.discard(name)
                fn(*args, **kwargs)
            out = fn(*args, **kwargs)
            if self.lose.get(name):
                self.lose[name] -= 1
                raise ConnectionError(f"reply to {name} lost")
            return out
        return call


def test_a_lost_or_resent_run_creation_leaves_one_run(plan, tracker):
    raw = tracker.client
    tracker.client = LostReplies(raw, twice={"create_run"})
    parent = tracker.ensure_parent("h", plan.source.path)  # created twice: the later one is deleted
    assert [r.info.run_id for r in tracker.runs("sweep")] == [parent]
    tracker.client = LostReplies(raw, lose={"create_run": 1})
    run_id = tracker.ensure_trial_run(plan.trials[0], tracker.trial_runs())  # created, then "failed"
    tracker.client = LostReplies(raw, twice={"create_run"})
    other = tracker.ensure_trial_run(plan.trials[1], tracker.trial_runs())
    tracker.client = raw
    runs = tracker.trial_runs()
    assert {t: r.info.run_id for t, r in runs.items()} == {plan.trials[0].trial_id: run_id,
                                                          plan.trials[1].trial_id: other}
    assert len(tracker.runs("trial")) == 2
    assert tracker.client.get_run(run_id).data.params["seed"] == "0"


def test_a_lost_reply_to_an_epoch_write_is_not_written_again(plan, tracker):
    tracker.ensure_parent("h", plan.source.path)
    run_id = tracker.ensure_trial_run(plan.trials[0], {})
    client = LostReplies(tracker.client, lose={"log_batch": 1})
    log = tracking.BufferedRunLog(client, run_id, retry_every=0.01, say=lambda msg: None)
    epochs = tracking.EpochLog()
    for epoch in (1, 2):
        log.submit(epochs, epoch, {"epoch": epoch, "p_mtl": epoch / 10}, 1000 + epoch)
    assert log.close(timeout=60) and log.failed_writes == 1
    assert [(m.step, m.timestamp) for m in tracker.client.get_metric_history(run_id, "p_mtl")] == [(1, 1001),
                                                                                                   (2, 1002)]
    # a new timestamp would have been a second value: the store keeps both (why EpochLog asks first)
    tracking.log_epoch(tracker.client, run_id, 2, {"p_mtl": 0.2}, timestamp=2000)
    assert len(tracker.client.get_metric_history(run_id, "p_mtl")) == 3


def test_lost_replies_to_the_final_result_land_it_once(plan, tmp_path, tracker):
    tracker.ensure_parent("h", plan.source.path)
    t = plan.trials[0]
    run_id = tracker.ensure_trial_run(t, {})
    sweep_dir = tmp_path / "runs" / "t"
    result = finish_trial(sweep_dir, t, 0.4)
    tdir = record.trial_dir(sweep_dir, t.trial_id)
    history = record.read_json(tdir / "history.json")
    # every kind of write loses its reply once: each time the whole result is sent again
    client = LostReplies(tracker.client, lose={"log_batch": 3, "log_artifact": 1, "set_terminated": 1, "set_tag": 1})
    log = tracking.BufferedRunLog(client, run_id, retry_every=0.01, say=lambda msg: None)
    log.submit(tracking.log_trial_result, tdir, result, history, tracking.result_timestamp(tdir))
    assert log.close(timeout=60) and log.failed_writes == 6
    c = tracker.client
    assert [(m.step, m.value) for m in c.get_metric_history(run_id, "p_mtl")] == [(1, 0.2), (2, 0.4)]
    assert [m.step for m in c.get_metric_history(run_id, "epoch")] == [1, 2]
    assert [m.step for m in c.get_metric_history(run_id, "train_seconds")] == [2]
    assert sorted(a.path for a in c.list_artifacts(run_id)) == sorted(tracking.TRIAL_ARTIFACTS)
    assert c.get_run(run_id).data.tags[tracking.STATUS] == "done"
    tracking.log_trial_result(c, run_id, tdir, result, history=history)  # the driver's backfill: nothing new
    assert [m.step for m in c.get_metric_history(run_id, "train_seconds")] == [2]
