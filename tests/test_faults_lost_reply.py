"""A write that lands but whose reply is lost lands exactly once (no Ray: the tracking functions directly).

A TCP proxy on 127.0.0.1 (``LosingProxy``, threads and sockets) sits between an ``MlflowClient`` and a
real ``mlflow server`` (``tracking.LocalMlflowServer``, SQLite). Armed with a predicate, it forwards
the first matching request, reads the server's whole response -- so the server has committed the
write -- and then closes the client's connection without forwarding a byte of it. The client sees a
dropped connection and the write is sent again: by ``BufferedRunLog`` / the driver's next pass
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``), or by MLflow's own client, whose urllib3 retry re-sends a
POST after a read error (``=1``). Each case asserts what lands: history steps, artifact listings and
the number of runs. Also checked here: the MLflow behaviour the idempotence relies on (the store drops
a metric repeated with the same key, value, step and timestamp, NaN included; a new timestamp is a
second value).
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from orchestrator import sweep_dir as record
from orchestrator import tracking
from tests.support.finished_trials import finish_trial, small_plan

pytestmark = [pytest.mark.slow, pytest.mark.ci]


# --- the proxy --------------------------------------------------------------------------------------

def _read_message(f, request_method: str | None = None) -> tuple[bytes, bytes] | None:
    """One HTTP/1.1 message from the binary file ``f``: (head, raw bytes), or None at EOF.

    ``request_method`` is None for a request, else the method of the request this responds to."""
    head = b""
    while True:
        line = f.readline(65537)
        if not line:
            return None
        head += line
        if line in (b"\r\n", b"\n"):
            break
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    raw = head
    status = head.split(b" ", 2)[1] if request_method else b""
    if request_method == "HEAD" or status in (b"204", b"304") or status.startswith(b"1"):
        return head, raw
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            size_line = f.readline()
            raw += size_line
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the blank line
                    trailer = f.readline()
                    raw += trailer
                    if trailer in (b"\r\n", b"\n", b""):
                        return head, raw
            raw += f.read(size + 2)
    if b"content-length" in headers:
        return head, raw + f.read(int(headers[b"content-length"]))
    if request_method is None:
        return head, raw  # a request without a body
    return head, raw + f.read()  # a response delimited by closing the connection


class LosingProxy:
    """127.0.0.1:<port> -> the server; ``lose(predicate)`` drops the reply of the next matching request.

    ``predicate(method, path, body)`` sees each request; ``lost`` lists the (method, path) of every
    request whose reply was dropped after the server had answered it in full."""

    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lost: list[tuple[str, str]] = []
        self.seen: list[tuple[str, str]] = []
        self._armed = None
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lose(self, predicate) -> None:
        with self._lock:
            self._armed = predicate

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream)
        cf, uf = client.makefile("rb"), upstream.makefile("rb")
        try:
            while True:
                request = _read_message(cf)
                if request is None:
                    return
                head, raw = request
                method, path = head.split(b" ", 2)[:2]
                method, path = method.decode(), path.decode()
                body = raw[len(head):]
                with self._lock:
                    self.seen.append((method, path))
                    drop = self._armed is not None and self._armed(method, path, body)
                    if drop:
                        self._armed = None
                upstream.sendall(raw)
                response = _read_message(uf, method)  # the whole reply: the server has done the write
                if response is None:
                    return
                if drop:
                    self.lost.append((method, path))
                    return  # close the client's connection; the reply never reaches it
                client.sendall(response[1])
        except OSError:
            return
        finally:
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


def request_to(endpoint: str, method: str = "POST", where=lambda body: True):
    """A predicate: ``method`` to a path ending with ``endpoint`` whose JSON body satisfies ``where``."""
    def match(m: str, path: str, body: bytes) -> bool:
        if m != method or not path.split("?")[0].endswith(endpoint):
            return False
        try:
            return bool(where(json.loads(body or b"{}")))
        except ValueError:  # not JSON (an artifact's bytes)
            return bool(where(body))
    return match


def has_metric(key: str, step: int | None = None):
    return lambda body: any(m["key"] == key and (step is None or int(m["step"]) == step)
                            for m in body.get("metrics", []))


def has_tag(key: str, value: str):
    return lambda body: any(t["key"] == key and t["value"] == value for t in body.get("tags", [])) or (
        body.get("key") == key and body.get("value") == value)


# --- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture
def server(mlflow_http):
    """The session's ``mlflow server`` (conftest); each test writes to experiments of its own."""
    return mlflow_http


@pytest.fixture
def proxy(server):
    p = LosingProxy(server.port)
    yield p
    p.close()


@pytest.fixture(params=[0, 1], ids=["our-retry", "mlflow-client-retry"])
def retries(request, monkeypatch):
    """0: the failed write raises and our code sends it again; 1: MLflow's client re-sends it itself."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(request.param))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
    return request.param


@pytest.fixture
def plan(tmp_path):
    return small_plan(tmp_path)


_experiments = iter(range(10**6))


def tracker_via(proxy: LosingProxy, plan) -> tracking.SweepTracker:
    t = tracking.SweepTracker(proxy.uri, f"lost-reply-{next(_experiments)}", plan.name)
    t.ensure_parent("h", plan.source.path)
    return t


def steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def deliver(log: tracking.BufferedRunLog) -> None:
    assert log.close(timeout=120), log.last_error


# --- MLflow's own behaviour, which the idempotence relies on ----------------------------------------

def test_the_store_drops_a_repeated_metric_but_keeps_a_new_timestamp(server):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.uri)
    run_id = client.create_run(client.create_experiment(f"dedup-{next(_experiments)}")).info.run_id
    batch = [Metric("a", 0.5, 1000, 1), Metric("nan", float("nan"), 1000, 1)]
    client.log_batch(run_id, metrics=batch)
    client.log_batch(run_id, metrics=batch)  # the same write again: dropped by the store
    assert [(m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, "a")] == [(1, 0.5, 1000)]
    assert len(client.get_metric_history(run_id, "nan")) == 1
    client.log_batch(run_id, metrics=[Metric("a", 0.5, 1001, 1)])  # same step and value, later: a 2nd value
    assert [m.timestamp for m in client.get_metric_history(run_id, "a")] == [1000, 1001]


# --- the trial's writes -----------------------------------------------------------------------------

def test_lost_reply_to_an_epoch_write_logs_the_epoch_once(proxy, plan, retries):
    tracker = tracker_via(proxy, plan)
    run_id = tracker.ensure_trial_run(plan.trials[0], {})
    proxy.lose(request_to("runs/log-batch", where=has_metric("epoch", 2)))
    log = tracking.BufferedRunLog(tracker.client, run_id, retry_every=0.05, say=lambda msg: None)
    epochs = tracking.EpochLog()
    for epoch in (1, 2, 3):
        log.submit(epochs, epoch, {"epoch": epoch, "p_mtl": epoch / 10, "error_severity": float("nan")},
                   tracking._now_ms())
    deliver(log)
    assert len(proxy.lost) == 1 and log.failed_writes == (1 if retries == 0 else 0)
    for key in ("epoch", "p_mtl", "error_severity"):
        assert steps(tracker.client, run_id, key) == [1, 2, 3], key


@pytest.mark.parametrize("lost", ["final metrics", "artifact", "status done"])
def test_lost_reply_to_the_final_result_lands_it_once(proxy, plan, tmp_path, retries, lost):
    tracker = tracker_via(proxy, plan)
    t = plan.trials[0]
    run_id = tracker.ensure_trial_run(t, {})
    sweep_dir = tmp_path / "runs" / "t"
    result = finish_trial(sweep_dir, t, 0.4)
    tdir = record.trial_dir(sweep_dir, t.trial_id)
    history = record.read_json(tdir / "history.json")
    proxy.lose({"final metrics": request_to("runs/log-batch", where=has_metric("train_seconds")),
                "artifact": request_to("/result.json", method="PUT"),
                "status done": request_to("runs/set-tag", where=has_tag(tracking.STATUS, "done"))}[lost])
    log = tracking.BufferedRunLog(tracker.client, run_id, retry_every=0.05, say=lambda msg: None)
    log.submit(tracking.log_trial_result, tdir, result, history, tracking.result_timestamp(tdir))
    deliver(log)
    assert len(proxy.lost) == 1
    c = tracker.client
    assert steps(c, run_id, "p_mtl") == [1, 2] and steps(c, run_id, "epoch") == [1, 2]
    for key in ("train_seconds", "expr_f1", "expr_f1/Anger"):
        assert steps(c, run_id, key) == [2], key
    assert sorted(a.path for a in c.list_artifacts(run_id)) == sorted(tracking.TRIAL_ARTIFACTS)
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[tracking.STATUS] == "done"
    # the driver's backfill of the same trial (its worker died before it heard back) adds nothing
    tracking.log_trial_result(c, run_id, tdir, result, history=history)
    assert steps(c, run_id, "train_seconds") == [2] and steps(c, run_id, "p_mtl") == [1, 2]


def test_lost_reply_to_a_failure_mark_and_to_a_run_creation(proxy, plan, retries):
    tracker = tracker_via(proxy, plan)
    t = plan.trials[1]
    proxy.lose(request_to("runs/create", where=has_tag(tracking.TRIAL_ID, t.trial_id)))
    try:
        tracker.ensure_trial_run(t, {})
    except Exception:  # noqa: BLE001 -- our retry: the driver's next pass looks the run up again
        assert retries == 0
    run_id = tracker.ensure_trial_run(t, tracker.trial_runs())
    assert len(proxy.lost) == 1
    assert len(tracker.runs("trial", **{tracking.TRIAL_ID: t.trial_id})) == 1
    run = tracker.client.get_run(run_id)
    assert run.data.params == tracking.flatten_params(t.config.model_dump(mode="json"))

    proxy.lose(request_to("runs/set-tag", where=lambda body: body.get("key") == "affsweep.error"))
    log = tracking.BufferedRunLog(tracker.client, run_id, retry_every=0.05, say=lambda msg: None)
    log.submit(tracking.mark_trial_failed, "InjectedFailure: boom", True)
    deliver(log)
    assert len(proxy.lost) == 2
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags[tracking.STATUS] == "failed"
    assert run.data.tags["affsweep.error"] == "InjectedFailure: boom"


# --- the driver's writes ----------------------------------------------------------------------------

def test_lost_reply_to_the_parent_run_creation_and_resume(proxy, plan, retries):
    experiment = f"lost-reply-parent-{retries}"
    proxy.lose(request_to("runs/create", where=has_tag(tracking.KIND, "sweep")))
    tracker = tracking.SweepTracker(proxy.uri, experiment, plan.name)
    try:
        tracker.ensure_parent("h", plan.source.path)
    except Exception:  # noqa: BLE001 -- our retry: the next `affsweep run`
        assert retries == 0
    parent = tracking.SweepTracker(proxy.uri, experiment, plan.name).ensure_parent("h2", plan.source.path)
    again = tracking.SweepTracker(proxy.uri, experiment, plan.name).ensure_parent("h3", plan.source.path)
    assert len(proxy.lost) == 1 and parent == again
    assert [r.info.run_id for r in tracker.runs("sweep")] == [parent]
    assert [a.path for a in tracker.client.list_artifacts(parent)] == [Path(plan.source.path).name]
    assert tracker.client.get_run(parent).data.tags["affsweep.plan_hash"] == "h3"


@pytest.mark.parametrize("lost", ["summary creation", "summary metrics"])
def test_lost_reply_to_a_summary_write_keeps_one_summary_per_condition(proxy, plan, tmp_path, retries, lost):
    tracker = tracker_via(proxy, plan)
    sweep_dir = tmp_path / "runs" / "t"
    for i, t in enumerate(plan.trials[:4]):  # 2 of 3 seeds of each condition
        finish_trial(sweep_dir, t, 0.1 * (i + 1))
    proxy.lose({"summary creation": request_to("runs/create", where=has_tag(tracking.KIND, "summary")),
                "summary metrics": request_to("runs/log-batch", where=has_metric("p_mtl/mean"))}[lost])
    try:
        tracking.refresh_summaries(plan, sweep_dir, tracker)
    except Exception:  # noqa: BLE001 -- our retry: the driver refreshes every summary at the end
        assert retries == 0
    tracking.refresh_summaries(plan, sweep_dir, tracker)
    assert len(proxy.lost) == 1
    finish_trial(sweep_dir, plan.trials[4], 0.9)  # a seed finishes later (or in a resumed sweep)
    tracking.refresh_summaries(plan, sweep_dir, tracker)
    tracking.refresh_summaries(plan, sweep_dir, tracker)  # the resumed sweep's final refresh: no news
    summaries = tracker.runs("summary")
    assert sorted(r.data.tags["affsweep.condition"] for r in summaries) == sorted(plan.conditions())
    for run in summaries:
        n = int(run.data.metrics["p_mtl/n"])
        history = tracker.client.get_metric_history(run.info.run_id, "p_mtl/n")
        assert sorted((m.step, m.value) for m in history) == [(2, 2.0)] + ([(3, 3.0)] if n == 3 else [])
        assert steps(tracker.client, run.info.run_id, "p_mtl/mean") == [2] + ([3] if n == 3 else [])


def test_proxy_forwards_everything_it_does_not_drop(proxy, plan):
    tracker = tracker_via(proxy, plan)
    assert not proxy.lost and ("POST", "/api/2.0/mlflow/runs/create") in proxy.seen
    assert tracker.client.get_run(tracker.parent_run_id).data.tags[tracking.KIND] == "sweep"

