"""The sweep's MLflow runs, and every write to them (docs/design.md §7), through ``MlflowClient``
with explicit run ids.

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

The driver's side is ``SweepTracker`` (find or create runs, summaries); the trial's side is the
write functions (``log_epoch``, ``log_trial_result``, ``mark_trial_failed``), which a Ray worker
sends through ``orchestrator.tracking.queue`` and the driver calls directly when it backfills.
Each write is idempotent (the package docstring, ``orchestrator.tracking``, says how).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

__all__ = ["CONDITION_ID", "EXPERIMENT_KIND", "KIND", "MODEL_TRAINING", "STATUS", "SWEEP", "SweepTracker",
           "TRIAL_ARTIFACTS", "TRIAL_ID", "flatten_params", "last_logged_epoch", "log_epoch", "log_trial_result",
           "logged_epochs", "mark_trial_failed", "redact", "refresh_summaries", "result_timestamp",
           "summary_statistics"]

TRIAL_ARTIFACTS = ("result.json", "confusion.json", "circumplex.json", "history.json")
KIND, SWEEP, TRIAL_ID, STATUS = "affsweep.kind", "affsweep.sweep", "affsweep.trial_id", "affsweep.status"
CONDITION_ID = "affsweep.condition_id"
# MLflow 3 keeps an experiment's kind in this tag; "Model training" opens the runs table
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
_TAG_LIMIT = 5000  # MLflow's limit on a tag value is larger; an error message needs no more


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

    def runs(self, kind: str | None = None, **tags: str) -> list:
        """Every (active) run of this sweep, optionally of one kind and with the given tag values."""
        flt = f"tags.`{SWEEP}` = '{_quote(self.sweep)}'"
        if kind:
            flt += f" and tags.`{KIND}` = '{kind}'"
        for key, value in tags.items():
            flt += f" and tags.`{key}` = '{_quote(value)}'"
        out, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], flt, max_results=1000, page_token=token)
            out += list(page)
            token = page.token
            if not token:
                return out

    def ensure_parent(self, plan_hash: str, yaml_path: str | Path) -> str:
        run_id = self._one_run("sweep", {}, run_name=self.sweep).info.run_id
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, "affsweep.plan_hash", plan_hash)
        self.client.log_artifact(run_id, str(yaml_path))  # the same path: a rerun replaces it
        self.parent_run_id = run_id
        return run_id

    def _one_run(self, kind: str, key: dict[str, str], run_name: str, tags: dict[str, str] | None = None,
                 searched: bool = False):
        """The one run of ``kind`` with the tag values ``key``: found, or created (exactly once).

        A ``create_run`` whose reply was lost may have created the run (and MLflow's client re-sends
        it by itself): after creating, or failing to, search again, keep the earliest and delete the
        others, so that there is never a second run for the same key. ``searched``: the caller's
        search just found none (skip the first search)."""
        found = [] if searched else self.runs(kind, **key)
        if not found:
            try:
                self.client.create_run(self.experiment_id, run_name=run_name,
                                       tags={SWEEP: self.sweep, KIND: kind, **key, **(tags or {})})
            except Exception:
                found = self.runs(kind, **key)
                if not found:
                    raise
            found = found or self.runs(kind, **key)
        return self._keep_earliest(found)

    def _keep_earliest(self, runs: list):
        """The earliest of ``runs`` (start time, then run id); the others are deleted."""
        first, *extra = sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))
        for run in extra:
            self.client.delete_run(run.info.run_id)
        return first

    def _by_tag(self, kind: str, tag: str) -> dict[str, Any]:
        """tag value -> the one run of ``kind`` with it (duplicates a lost reply left are deleted)."""
        groups: dict[str, list] = {}
        for run in self.runs(kind):
            if run.data.tags.get(tag) is not None:
                groups.setdefault(run.data.tags[tag], []).append(run)
        return {value: self._keep_earliest(runs) for value, runs in groups.items()}

    def trial_runs(self) -> dict[str, Any]:
        """trial_id -> its run."""
        return self._by_tag("trial", TRIAL_ID)

    def summary_runs(self) -> dict[str, Any]:
        """condition_id -> its summary run."""
        return self._by_tag("summary", CONDITION_ID)

    def ensure_trial_run(self, trial, existing: dict[str, Any]) -> str:
        """The trial's run id: the existing one (looked up by tag) or a new SCHEDULED run; either way
        with every param of the resolved config (a run whose param writes were cut off gets the rest)."""
        run = existing.get(trial.trial_id)
        if run is None:
            tags = {"mlflow.parentRunId": self.parent_run_id, STATUS: "pending", "seed": str(trial.seed),
                    **{k: _tag_value(v) for k, v in trial.axes.items()}}
            run = self._one_run("trial", {TRIAL_ID: trial.trial_id}, f"{trial.condition} seed={trial.seed}", tags,
                               searched=True)
        run_id = run.info.run_id
        params = flatten_params(trial.config.model_dump(mode="json"))
        from mlflow.entities import Param

        # a param once logged cannot change (a field outside the trial_id, e.g. a path, may have)
        items = [Param(k, v) for k, v in params.items() if k not in run.data.params]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=items[i:i + 100])
        if items:
            self.client.update_run(run_id, status="SCHEDULED")
            run = self.client.get_run(run_id)
        existing[trial.trial_id] = run
        return run_id

    def refresh_summary(self, axes: dict[str, Any], label: str, cid: str, results: list[dict],
                        planned: int, existing: dict[str, Any] | None = None,
                        timestamp: int | None = None) -> str | None:
        """Create or update the condition's summary run from the ``results`` of its finished trials.

        Logged at ``step = n finished`` and ``timestamp`` (the time of the newest result: a repeat of
        the same summary is then the same metric, which the store drops); skipped when the set of
        finished trials has not changed since the last refresh (the ``affsweep.summary_of`` tag,
        written after the metrics), so reruns never duplicate a summary's history."""
        if existing is None:
            existing = self.summary_runs()
        digest = f"{planned}:" + ",".join(sorted(r["trial_id"] for r in results))
        run = existing.get(cid)
        if run is not None and run.data.tags.get("affsweep.summary_of") == digest:
            return run.info.run_id
        if run is None:
            if not results:
                return None
            tags = {"affsweep.parent_run_id": self.parent_run_id, "affsweep.condition": label,
                    **{k: _tag_value(v) for k, v in axes.items()}}
            run = self._one_run("summary", {CONDITION_ID: cid}, f"summary {label}", tags, searched=True)
            existing[cid] = run
        run_id = run.info.run_id
        from mlflow.entities import Metric, RunTag

        now, step = timestamp if timestamp is not None else _now_ms(), len(results)
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
    from orchestrator import sweep_dir as record

    existing = tracker.summary_runs()
    for label, trials in plan.conditions().items():
        if only is not None and label != only:
            continue
        dirs = [record.trial_dir(sweep_dir, t.trial_id) for t in trials]
        done = [(r, d) for r, d in ((record.read_result(d), d) for d in dirs) if r]
        stamp = max((result_timestamp(d) for _, d in done), default=None)
        tracker.refresh_summary(trials[0].axes, label, trials[0].condition_id, [r for r, _ in done],
                                planned=len(trials), existing=existing, timestamp=stamp)


def summary_statistics(results: list[dict]) -> dict[str, tuple[float, float, int]]:
    """metric -> (mean, sample std (ddof=1), n) over the finite numeric values of ``results``."""
    from analysis.contrasts import describe

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
        stats = describe(vals)  # the analysis' mean ± std over seeds
        out[k] = (stats.mean, stats.std, stats.n)
    return out


# --- the trial's writes (sent from the Ray worker through tracking.queue) ----------------------------

def last_logged_epoch(client, run_id: str) -> int:
    """The last epoch already in the run's history (0 if none)."""
    return max(logged_epochs(client, run_id), default=0)


def logged_epochs(client, run_id: str) -> set[int]:
    """The epochs already in the run's history: a restarted trial logs only the others."""
    return {int(m.step) for m in client.get_metric_history(run_id, "epoch")}


def log_epoch(client, run_id: str, epoch: int, metrics: dict, timestamp: int | None = None) -> None:
    """One epoch's metrics at ``step=epoch``; ``epoch`` goes last, so that an epoch in the history of
    ``epoch`` (what ``logged_epochs`` reads) has all its metrics, also when split over batches."""
    from mlflow.entities import Metric

    now = _now_ms() if timestamp is None else int(timestamp)
    batch = [Metric(_metric_key(k), float(v), now, int(epoch)) for k, v in metrics.items()
             if _is_number(v) and k != "epoch"]
    batch.append(Metric("epoch", float(epoch), now, int(epoch)))
    for i in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[i:i + 1000])


def result_timestamp(trial_dir: Path) -> int:
    """When the trial wrote ``result.json`` (ms): the timestamp of its final metrics, the same for every
    writer and every retry (the trial, the driver's backfill, a later ``affsweep run``)."""
    return (Path(trial_dir) / "result.json").stat().st_mtime_ns // 1_000_000


def log_trial_result(client, run_id: str, trial_dir: Path, result: dict, history: list[dict] | None = None,
                     timestamp: int | None = None) -> None:
    """Final metrics (at ``step = epochs``), the trial's artifacts, then ``affsweep.status=done``.

    ``history`` (the per-epoch metrics) is logged for epochs the run does not have yet: this is how the
    driver backfills a trial that finished on disk but whose worker died before it logged. Every
    metric is logged at ``timestamp`` (default: ``result_timestamp``), so a repeat after a lost reply
    -- whoever sends it -- is dropped by the store; a run that already says ``done`` is left alone."""
    from mlflow.entities import Metric, RunTag

    if client.get_run(run_id).data.tags.get(STATUS) == "done":
        return  # the whole result landed (the reply to the last write was lost)
    now = result_timestamp(trial_dir) if timestamp is None else int(timestamp)
    if history:
        done = logged_epochs(client, run_id)
        for row in history:
            if int(row.get("epoch", 0)) not in done:
                log_epoch(client, run_id, int(row["epoch"]), row, now)
    last = history[-1] if history else {}
    step = int(result.get("epochs") or 0)
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
    """An attempt failed (``final=False``: Ray may retry it) or the trial gave up (``final=True``).
    Tags and status only: a repeat writes the same values."""
    client.set_tag(run_id, "affsweep.error", error[:_TAG_LIMIT])
    if final:
        client.set_tag(run_id, STATUS, "failed")
    client.set_terminated(run_id, "FAILED")


# --- helpers ---------------------------------------------------------------------------------------

def flatten_params(config: dict, prefix: str = "") -> dict[str, str]:
    """The resolved TrialConfig as dotted-key params (values as MLflow stores them: strings)."""
    from analysis.dotted import flatten_dotted

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
