"""Fault injection against a real Ray cluster and a real MLflow server, both started (and stopped) here.

One Ray head (2 CPUs, 127.0.0.1, its own temp dir) and one ``mlflow server`` (SQLite, 127.0.0.1, a
fixed port so it can be restarted) serve the four tests; each drives its own sweep with
``affsweep run --address`` in its own process, and injects one fault:

1. ``kill -9`` of a trial's worker process mid-training: Ray retries the trial from its last checkpoint;
2. ``kill -9`` of the driver mid-sweep: ``affsweep run --resume`` completes it, finished trials untouched;
3. the MLflow server stopped mid-sweep: trials keep training, their buffered writes arrive once it is back;
4. a NaN loss (``lr: 1e30``): the trial fails once, with the reason in MLflow and the results.

Every trial_id must appear exactly once in the results and in MLflow, with each epoch logged once.
The tests wait on conditions (polled, with deadlines generous enough for a loaded 2-core machine),
never on fixed sleeps. ``tests/test_faults_lost_reply.py`` drops single replies deterministically.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from orchestrator import sweep_dir as record
from orchestrator.expand import load_sweep
from tests.support.services import MlflowServer, RayCluster, affsweep_run, finish, processes_of
from tests.support.sweeps import sweep_yaml

pytestmark = [pytest.mark.slow, pytest.mark.ci]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = RayCluster(tmp_path_factory.mktemp("cluster"), cpus=[2])
    try:
        yield c.start()
    finally:
        c.stop()
    assert not processes_of(str(c.temp_dir))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    try:
        yield s.start()
    finally:
        s.stop()


def wait_for(condition, timeout: float, what: str, proc=None, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the driver exited ({proc.returncode}) before {what}: {proc.stdout.read()[-3000:]}")
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def states(sweep_dir: Path, plan) -> dict[str, dict]:
    return {t.trial_id: record.read_state(record.trial_dir(sweep_dir, t.trial_id)) for t in plan.trials}


def check_exactly_once(server: MlflowServer, plan, sweep_dir: Path, epochs: int, done: list[str]) -> dict:
    """Results and MLflow hold every trial exactly once; every finished trial has each epoch once."""
    table = pd.read_parquet(sweep_dir / "results.parquet")
    assert sorted(table["trial_id"]) == sorted(t.trial_id for t in plan.trials)  # no trial lost or duplicated
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.uri)
    exp = client.get_experiment_by_name(plan.name)
    runs = client.search_runs([exp.experiment_id], "tags.`affsweep.kind` = 'trial'", max_results=100)
    by_trial = {r.data.tags["affsweep.trial_id"]: r for r in runs}
    assert len(runs) == len(by_trial) == len(plan.trials)
    for tid in done:
        run = by_trial[tid]
        assert run.info.status == "FINISHED" and run.data.tags["affsweep.status"] == "done"
        for key in ("epoch", "p_mtl"):
            # every epoch exactly once (MLflow returns the history in delivery order, not step order)
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == list(range(1, epochs + 1))
    return by_trial


@pytest.mark.timeout(600)
def test_worker_killed_mid_training_is_retried_from_its_checkpoint(tmp_path, cluster, server):
    yaml = sweep_yaml(tmp_path / "kill_worker.yaml", name="kill_worker", uri=server.uri, storage=tmp_path / "runs",
                      grid={"seed": [0], "method.cost": ["none", "circumplex"]}, epochs=3, retries=1)
    plan = load_sweep(yaml)
    sweep_dir = plan.spec.sweep_dir()
    proc = affsweep_run(yaml, cluster.address, cluster.env, wait=False)
    try:
        def trained_one_epoch():
            for tid, st in states(sweep_dir, plan).items():
                if st.get("status") == "running" and st.get("last_epoch", 0) >= 1 and st.get("pid"):
                    return tid, st
        victim, st = wait_for(trained_one_epoch, 300, "a trial to finish its first epoch", proc)
        assert st["last_epoch"] < 3, "the trial finished before it could be killed"
        os.kill(st["pid"], signal.SIGKILL)  # the Ray worker process running the trial
        killed_after = st["last_epoch"]
        out = finish(proc, timeout=480)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-4000:]
    after = record.read_state(record.trial_dir(sweep_dir, victim))
    assert after["status"] == "done" and after["attempt"] == 2 and after["pid"] != st["pid"]
    # the retry resumed from the checkpoint of the last epoch it reported: no finished epoch recomputed
    recomputed = killed_after - (after["first_epoch"] - 1)
    assert recomputed == 0, after
    assert f"trial {victim} failed" in out  # SweepCallback said Ray retries it
    check_exactly_once(server, plan, sweep_dir, epochs=3, done=[t.trial_id for t in plan.trials])
    assert list(pd.read_parquet(sweep_dir / "results.parquet")["status"]) == ["done", "done"]
    print(f"\nworker kill: killed after epoch {killed_after}, resumed at epoch {after['first_epoch']}, "
          f"epochs recomputed {recomputed}, trials lost 0, duplicated 0")


@pytest.mark.timeout(720)
def test_driver_killed_mid_sweep_resumes_without_rerunning_finished_trials(tmp_path, cluster, server):
    yaml = sweep_yaml(tmp_path / "kill_driver.yaml", name="kill_driver", uri=server.uri, storage=tmp_path / "runs",
                      grid={"seed": [0, 1], "method.cost": ["none", "circumplex"]}, epochs=2, retries=0)
    plan = load_sweep(yaml)
    sweep_dir = plan.spec.sweep_dir()
    proc = affsweep_run(yaml, cluster.address, cluster.env, wait=False)
    try:
        def some_done():
            done = [t.trial_id for t in plan.trials if record.read_result(record.trial_dir(sweep_dir, t.trial_id))]
            return done if 0 < len(done) < len(plan.trials) else None
        wait_for(some_done, 400, "a finished trial", proc)
        os.kill(proc.pid, signal.SIGKILL)  # the driver only; Ray ends its job's trials
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # Ray ends the dead driver's job: wait until its trials' worker processes are gone (one may
    # still finish its trial in that time -- that trial then counts as done, as it should)
    def workers_gone():
        return not [st for st in states(sweep_dir, plan).values() if st.get("pid") and alive(st["pid"])]
    wait_for(workers_gone, 180, "Ray to end the killed driver's trials")
    done_first = [t.trial_id for t in plan.trials if record.read_result(record.trial_dir(sweep_dir, t.trial_id))]
    assert 0 < len(done_first) < len(plan.trials)
    mtimes = {i: (record.trial_dir(sweep_dir, i) / "result.json").stat().st_mtime_ns for i in done_first}
    attempts = {i: states(sweep_dir, plan)[i]["attempt"] for i in done_first}

    rc, out = affsweep_run(yaml, cluster.address, cluster.env, resume=True, timeout=480)
    assert rc == 0, out[-4000:]
    n = len(plan.trials)
    assert f"{len(done_first)} already done, {n - len(done_first)} to run" in out
    assert {i: (record.trial_dir(sweep_dir, i) / "result.json").stat().st_mtime_ns for i in done_first} == mtimes
    assert {i: states(sweep_dir, plan)[i]["attempt"] for i in done_first} == attempts  # never started again
    check_exactly_once(server, plan, sweep_dir, epochs=2, done=[t.trial_id for t in plan.trials])
    assert list(pd.read_parquet(sweep_dir / "results.parquet")["status"]) == ["done"] * n


@pytest.mark.timeout(720)
def test_mlflow_outage_mid_sweep_loses_nothing(tmp_path, cluster, server):
    epochs = 6
    yaml = sweep_yaml(tmp_path / "outage.yaml", name="outage", uri=server.uri, storage=tmp_path / "runs",
                      grid={"seed": [0], "method.cost": ["none", "circumplex"]}, epochs=epochs, retries=0)
    plan = load_sweep(yaml)
    sweep_dir = plan.spec.sweep_dir()
    proc = affsweep_run(yaml, cluster.address, cluster.env, wait=False)
    try:
        def progress():
            return {tid: st.get("last_epoch", 0) for tid, st in states(sweep_dir, plan).items()}
        wait_for(lambda: all(st.get("status") == "running" and st.get("last_epoch", 0) >= 1
                             for st in states(sweep_dir, plan).values()), 300, "both trials to train an epoch", proc)
        down_at = progress()
        server.stop(kill=True)  # the tracking server crashes mid-sweep
        assert max(down_at.values()) < epochs, "the trials finished before the outage"
        # trials keep training while it is down
        wait_for(lambda: any(progress()[t] > down_at[t] for t in down_at), 300, "an epoch during the outage", proc)
        trained_while_down = {t: progress()[t] - down_at[t] for t in down_at}
        server.start()  # same port, same store
        out = finish(proc, timeout=480)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if server.proc is None:
            server.start()
    assert proc.returncode == 0, out[-4000:]
    assert sum(trained_while_down.values()) >= 1
    print(f"\nMLflow outage: epochs trained while the server was down {trained_while_down}")
    final = states(sweep_dir, plan)
    assert sum(st["mlflow_retries"] for st in final.values()) >= 1  # writes were buffered and retried...
    assert all(st["mlflow_delivered"] for st in final.values())   # ...and delivered by the trial itself
    by_trial = check_exactly_once(server, plan, sweep_dir, epochs=epochs, done=[t.trial_id for t in plan.trials])
    for t in plan.trials:
        result = json.loads((record.trial_dir(sweep_dir, t.trial_id) / "result.json").read_text())
        assert by_trial[t.trial_id].data.metrics["p_mtl"] == pytest.approx(result["p_mtl"])


@pytest.mark.timeout(480)
def test_nan_loss_fails_the_trial_once_with_its_reason(tmp_path, cluster, server):
    yaml = sweep_yaml(tmp_path / "nan.yaml", name="nan", uri=server.uri, storage=tmp_path / "runs",
                      grid={"seed": [0], "method.cost": ["none"], "lr": [0.003, 1.0e+30]}, epochs=2,
                      retries=2, primary=False)
    plan = load_sweep(yaml)
    sweep_dir = plan.spec.sweep_dir()
    rc, out = affsweep_run(yaml, cluster.address, cluster.env, timeout=400)
    assert rc == 1, out[-4000:]  # failed trials: exit code 1
    table = pd.read_parquet(sweep_dir / "results.parquet").set_index("trial_id")
    bad = [t.trial_id for t in plan.trials if t.config.lr > 1]
    good = [t.trial_id for t in plan.trials if t.config.lr < 1]
    assert (table.loc[good, "status"] == "done").all() and (table.loc[bad, "status"] == "failed").all()
    by_trial = check_exactly_once(server, plan, sweep_dir, epochs=2, done=good)
    for tid in bad:
        error = table.loc[tid, "error"]
        assert error.startswith("NonFiniteLossError: non-finite loss at epoch 1, step"), error
        st = record.read_state(record.trial_dir(sweep_dir, tid))
        assert st["attempt"] == 1  # deterministic: Ray's retries did not train it again
        run = by_trial[tid]
        assert run.info.status == "FAILED" and run.data.tags["affsweep.status"] == "failed"
        assert run.data.tags["affsweep.error"] == error
