"""MLflow tracking of a sweep (DESIGN "Tracking"), through ``MlflowClient`` with explicit run ids.

- one **parent** run per sweep (tags ``affsweep.sweep``, ``affsweep.kind=sweep``,
  ``affsweep.plan_hash``; the YAML as artifact ``sweep.yaml``);
- one **child** run per trial (tags ``mlflow.parentRunId``, ``affsweep.sweep``, ``affsweep.kind=trial``,
  ``affsweep.trial_id``, one tag per axis and ``seed``; params = the resolved TrialConfig with dotted
  keys; per-epoch metrics with ``step=epoch``; final metrics; artifacts result/confusion/circumplex);
- one **summary** run per condition (all axes but seed; ``affsweep.kind=summary``) carrying
  ``<metric>/mean``, ``<metric>/std`` and ``<metric>/n`` over the finished seeds (the MLflow UI has no
  mean ± std across runs of its own), refreshed as trials finish. Summary runs are *top-level* (tag
  ``affsweep.parent_run_id``, not ``mlflow.parentRunId``): the experiment page lists them first,
  beside the sweep's parent run, whose expander holds the trial runs.

The experiment is tagged ``mlflow.experimentKind=custom_model_development`` (MLflow 3's "Model
training" kind; the value the UI's own kind selector writes), so the UI opens it on its runs table
rather than on the GenAI traces view.

Runs are found by their tags before any is created, so rerunning a sweep never makes a second run for
the same trial. ``tracking.uri: local`` runs ``mlflow server`` on 127.0.0.1 with a SQLite store under
the sweep directory for the sweep's lifetime (``LocalMlflowServer``): concurrent trials in Ray workers
write over HTTP to that single writer. Environment variables are never logged.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any

__all__ = ["BufferedRunLog", "LocalMlflowServer", "SweepTracker", "TRIAL_ARTIFACTS", "flatten_params",
           "last_logged_epoch", "log_epoch", "logged_epochs", "log_trial_result", "mark_trial_failed", "redact",
           "refresh_summaries"]

TRIAL_ARTIFACTS = ("result.json", "confusion.json", "circumplex.json", "history.json")
KIND, SWEEP, TRIAL_ID, STATUS = "affsweep.kind", "affsweep.sweep", "affsweep.trial_id", "affsweep.status"
CONDITION_ID = "affsweep.condition_id"
# MLflow 3 keeps an experiment's kind in this tag; "Model training" opens the runs table
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
_TAG_LIMIT = 5000  # MLflow's limit on a tag value is larger; an error message needs no more


# --- the local server -------------------------------------------------------------------------------

class LocalMlflowServer:
    """``mlflow server`` on 127.0.0.1:<free port> with ``<root>/mlflow.db`` and ``<root>/artifacts``.

    A context manager: the server is stopped on exit, also on Ctrl-C and errors. It runs in its own
    process group (so a Ctrl-C at the terminal reaches the driver first, which then still logs the
    sweep's final state before stopping the server) and its log goes to ``<root>/server.log``.
    """

    def __init__(self, root: str | Path, startup_timeout: float = 240.0):
        self.root = Path(root).resolve()
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def store_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ui_command(self) -> str:
        return f"mlflow ui --backend-store-uri {self.store_uri} --artifacts-destination {self.artifacts}"

    def start(self) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a free port can be taken between probing and binding: try another
            self.port = _free_port()
            cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.store_uri,
                   "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", "1"]
            env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
            with open(self.root / "server.log", "ab") as log:
                self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
            if self._wait_until_up():
                return self.uri
            self.stop()
        tail = (self.root / "server.log").read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"the local MLflow server did not start (log {self.root / 'server.log'}: "
                           f"{' | '.join(tail)})")

    def _wait_until_up(self) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)  # the server's own group: the CLI and its uvicorn worker
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> LocalMlflowServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the driver's view ------------------------------------------------------------------------------

class SweepTracker:
    """Parent, child and summary runs of one sweep in one experiment (driver side)."""

    def __init__(self, uri: str, experiment: str, sweep: str, artifact_location: str | None = None):
        from mlflow.tracking import MlflowClient

        self.uri, self.sweep = uri, sweep
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
            experiment, artifact_location=artifact_location, tags={EXPERIMENT_KIND: MODEL_TRAINING})
        if exp is not None and EXPERIMENT_KIND not in exp.tags:
            self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
        self.parent_run_id: str | None = None

    def runs(self, kind: str | None = None) -> list:
        """Every (active) run of this sweep, optionally of one kind."""
        flt = f"tags.`{SWEEP}` = '{_quote(self.sweep)}'"
        if kind:
            flt += f" and tags.`{KIND}` = '{kind}'"
        out, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], flt, max_results=1000, page_token=token)
            out += list(page)
            token = page.token
            if not token:
                return out

    def ensure_parent(self, plan_hash: str, yaml_path: str | Path) -> str:
        found = self.runs("sweep")
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            run_id = self.client.create_run(self.experiment_id, run_name=self.sweep, tags={
                SWEEP: self.sweep, KIND: "sweep"}).info.run_id
        self.client.set_tag(run_id, "affsweep.plan_hash", plan_hash)
        self.client.log_artifact(run_id, str(yaml_path))
        self.parent_run_id = run_id
        return run_id

    def trial_runs(self) -> dict[str, Any]:
        """trial_id -> its run (the first if a foreign tool ever made two)."""
        out: dict[str, Any] = {}
        for run in sorted(self.runs("trial"), key=lambda r: r.info.start_time or 0):
            out.setdefault(run.data.tags.get(TRIAL_ID), run)
        return out

    def ensure_trial_run(self, trial, existing: dict[str, Any]) -> str:
        """The trial's run id: the existing one (looked up by tag) or a new SCHEDULED run with params."""
        if trial.trial_id in existing:
            return existing[trial.trial_id].info.run_id
        tags = {"mlflow.parentRunId": self.parent_run_id, SWEEP: self.sweep, KIND: "trial",
                TRIAL_ID: trial.trial_id, STATUS: "pending", "seed": str(trial.seed),
                **{k: _tag_value(v) for k, v in trial.axes.items()}}
        run = self.client.create_run(self.experiment_id, run_name=f"{trial.condition} seed={trial.seed}",
                                     tags=tags)
        run_id = run.info.run_id
        params = flatten_params(trial.config.model_dump(mode="json"))
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=items[i:i + 100])
        self.client.update_run(run_id, status="SCHEDULED")
        existing[trial.trial_id] = self.client.get_run(run_id)
        return run_id

    def refresh_summary(self, axes: dict[str, Any], label: str, cid: str, results: list[dict],
                        planned: int, existing: dict[str, Any] | None = None) -> str | None:
        """Create or update the condition's summary run from the ``results`` of its finished trials.

        Logged at ``step = n finished``; skipped when the set of finished trials has not changed
        since the last refresh, so reruns never duplicate a summary's history."""
        if existing is None:
            existing = {r.data.tags.get(CONDITION_ID): r for r in self.runs("summary")}
        digest = f"{planned}:" + ",".join(sorted(r["trial_id"] for r in results))
        run = existing.get(cid)
        if run is not None and run.data.tags.get("affsweep.summary_of") == digest:
            return run.info.run_id
        if run is None:
            if not results:
                return None
            tags = {"affsweep.parent_run_id": self.parent_run_id, SWEEP: self.sweep, KIND: "summary",
                    CONDITION_ID: cid, "affsweep.condition": label,
                    **{k: _tag_value(v) for k, v in axes.items()}}
            run = self.client.create_run(self.experiment_id, run_name=f"summary {label}", tags=tags)
            existing[cid] = run
        run_id = run.info.run_id
        from mlflow.entities import Metric, RunTag

        now, step = _now_ms(), len(results)
        metrics = []
        for key, values in summary_statistics(results).items():
            mean, std, n = values
            key = _metric_key(key)  # error_severity@source -> error_severity_source, as in the trial runs
            metrics += [Metric(f"{key}/mean", mean, now, step), Metric(f"{key}/n", n, now, step)]
            if n >= 2:
                metrics.append(Metric(f"{key}/std", std, now, step))
        tags = [RunTag("affsweep.summary_of", digest), RunTag("affsweep.n_planned", str(planned))]
        for i in range(0, max(len(metrics), 1), 1000):
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000], tags=tags if i == 0 else [])
        if len(results) >= planned:
            self.client.set_terminated(run_id, "FINISHED")
        else:
            self.client.update_run(run_id, status="RUNNING")
        return run_id

    def finish_parent(self, status: str) -> None:
        if self.parent_run_id:
            self.client.set_terminated(self.parent_run_id, status)


def refresh_summaries(plan, sweep_dir: Path, tracker: SweepTracker, only: str | None = None) -> None:
    """Refresh the summary run of every condition (or only the condition labelled ``only``)."""
    from orchestrator import results as record

    existing = {r.data.tags.get(CONDITION_ID): r for r in tracker.runs("summary")}
    for label, trials in plan.conditions().items():
        if only is not None and label != only:
            continue
        done = [r for r in (record.read_result(record.trial_dir(sweep_dir, t.trial_id)) for t in trials) if r]
        tracker.refresh_summary(trials[0].axes, label, trials[0].condition_id, done, planned=len(trials),
                                existing=existing)


def summary_statistics(results: list[dict]) -> dict[str, tuple[float, float, int]]:
    """metric -> (mean, sample std (ddof=1), n) over the finite numeric values of ``results``."""
    skip = {"seed", "epochs"}
    keys: dict[str, None] = {}
    for r in results:
        for k, v in r.items():
            if k not in skip and isinstance(v, int | float) and not isinstance(v, bool):
                keys.setdefault(k)
    out = {}
    for k in keys:
        vals = [float(r[k]) for r in results if isinstance(r.get(k), int | float) and math.isfinite(r[k])]
        if not vals:
            continue
        n = len(vals)
        mean = sum(vals) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else float("nan")
        out[k] = (mean, std, n)
    return out


# --- the trial's view (runs inside the Ray worker) --------------------------------------------------

def last_logged_epoch(client, run_id: str) -> int:
    """The last epoch already in the run's history (0 if none)."""
    return max(logged_epochs(client, run_id), default=0)


def logged_epochs(client, run_id: str) -> set[int]:
    """The epochs already in the run's history: a restarted trial logs only the others."""
    return {int(m.step) for m in client.get_metric_history(run_id, "epoch")}


class BufferedRunLog:
    """A trial's MLflow writes, delivered in order by one background thread (runs in the Ray worker).

    Training never waits for the tracking server: ``submit(fn, *args)`` queues ``fn(client, run_id,
    *args)`` and returns. A write that fails (server down, restarting, unreachable) stays at the head
    of the queue and is retried every ``retry_every`` seconds, so nothing is lost or reordered while the
    server is away. ``close(timeout)`` waits until the queue is delivered; what is still queued then
    is dropped (and reported): the driver backfills a finished trial's history and result from its
    directory when the run does not say ``done``. Each write must be idempotent (``log_epoch`` is
    guarded by ``logged_epochs``), since a write whose reply was lost is retried.
    """

    def __init__(self, client, run_id: str, retry_every: float = 1.0, say=None):
        self.client, self.run_id, self.retry_every = client, run_id, retry_every
        self.say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.failed_writes = 0          # attempts that failed and were retried
        self.last_error: str | None = None
        self._queue: deque = deque()
        self._cv = threading.Condition()
        self._closing = self._cancelled = False
        self._thread = threading.Thread(target=self._deliver, name=f"mlflow-{run_id[:8]}", daemon=True)
        self._thread.start()

    def submit(self, fn, *args) -> None:
        with self._cv:
            self._queue.append((fn, args))
            self._cv.notify_all()

    @property
    def pending(self) -> int:
        with self._cv:
            return len(self._queue)

    def _deliver(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._cv.wait()
                if self._cancelled or not self._queue:
                    return
                fn, args = self._queue[0]
            try:
                fn(self.client, self.run_id, *args)
            except Exception as e:  # noqa: BLE001 -- any failure: keep the write and retry it
                if self.failed_writes == 0 or self.last_error != f"{type(e).__name__}: {e}"[:300]:
                    self.say(f"MLflow write failed ({type(e).__name__}: {str(e)[:200]}); buffering and retrying")
                self.failed_writes += 1
                self.last_error = f"{type(e).__name__}: {e}"[:300]
                with self._cv:
                    self._cv.wait_for(lambda: self._cancelled, timeout=self.retry_every)
                continue
            with self._cv:
                self._queue.popleft()
                self._cv.notify_all()

    def close(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for every queued write; True when all were delivered."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
            delivered = self._cv.wait_for(lambda: not self._queue, timeout=timeout)
            if not delivered:
                self._cancelled = True
                self._cv.notify_all()
                self.say(f"MLflow unreachable for {timeout:.0f}s: {len(self._queue)} write(s) of run {self.run_id} "
                         f"dropped here; the driver backfills them from the trial directory")
        self._thread.join(timeout=5)
        return delivered


def log_epoch(client, run_id: str, epoch: int, metrics: dict) -> None:
    from mlflow.entities import Metric

    now = _now_ms()
    batch = [Metric(_metric_key(k), float(v), now, int(epoch)) for k, v in metrics.items() if _is_number(v)]
    for i in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[i:i + 1000])


def log_trial_result(client, run_id: str, trial_dir: Path, result: dict, history: list[dict] | None = None) -> None:
    """Final metrics (at ``step = epochs``), the trial's artifacts, then ``affsweep.status=done``.

    ``history`` (the per-epoch metrics) is logged for epochs the run does not have yet: this is how the
    driver backfills a trial that finished on disk but whose worker died before it logged."""
    from mlflow.entities import Metric, RunTag

    if history:
        done = logged_epochs(client, run_id)
        for row in history:
            if int(row.get("epoch", 0)) not in done:
                log_epoch(client, run_id, int(row["epoch"]), row)
    last = history[-1] if history else {}
    step, now = int(result.get("epochs") or 0), _now_ms()
    metrics = [Metric(_metric_key(k), float(v), now, step) for k, v in result.items()
               if _is_number(v) and k != "seed" and not (k in last and _same(last[k], v))]
    tags = []
    if "data_order_hash" in result:
        tags.append(RunTag("affsweep.data_order_hash", str(result["data_order_hash"])))
    for name in TRIAL_ARTIFACTS:
        if (trial_dir / name).exists():
            client.log_artifact(run_id, str(trial_dir / name))
    for i in range(0, max(len(metrics), 1), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000], tags=tags if i == 0 else [])
    client.set_terminated(run_id, "FINISHED")
    # last: the tag the driver trusts ("done" = nothing to backfill), so a write cut off before it
    # (worker killed, server gone) leaves the run to be backfilled
    client.set_tag(run_id, STATUS, "done")


def mark_trial_failed(client, run_id: str, error: str, final: bool) -> None:
    """An attempt failed (``final=False``: Ray may retry it) or the trial gave up (``final=True``)."""
    client.set_tag(run_id, "affsweep.error", error[:_TAG_LIMIT])
    if final:
        client.set_tag(run_id, STATUS, "failed")
    client.set_terminated(run_id, "FAILED")


# --- helpers ---------------------------------------------------------------------------------------

def flatten_params(config: dict, prefix: str = "") -> dict[str, str]:
    """The resolved TrialConfig as dotted-key params (values as MLflow stores them: strings)."""
    from orchestrator.spec import flatten_dotted

    return {key: _tag_value(value) for key, value in flatten_dotted(config, prefix).items()}


def redact(uri: str) -> str:
    """The URI without user:password (credentials belong in MLFLOW_TRACKING_USERNAME/PASSWORD)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _tag_value(v: Any) -> str:
    if isinstance(v, dict | list):
        return json.dumps(v, sort_keys=True)
    return "null" if v is None else str(v)


def _same(a: Any, b: Any) -> bool:
    """Equal, NaN included: the last epoch's NaN is already logged at this step."""
    return a == b or (_is_number(a) and _is_number(b) and math.isnan(a) and math.isnan(b))


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _metric_key(key: str) -> str:
    """MLflow allows letters, digits, ``_ - . / :`` and spaces in metric names."""
    return "".join(c if c.isalnum() or c in "_-./: " else "_" for c in key)


def _quote(s: str) -> str:
    return s.replace("\\", "\\\\").replace("'", "\\'")


def _now_ms() -> int:
    return int(time.time() * 1000)

