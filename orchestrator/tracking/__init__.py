"""MLflow tracking of a sweep (docs/design.md §7), through ``MlflowClient`` with explicit run ids.

Three rooms, one job each (``from orchestrator import tracking`` gives every public name of them):

- ``runs``   -- the sweep's runs and every write to them: ``SweepTracker`` (the driver finds or
  creates the parent, trial and summary runs and refreshes the summaries), the trial's writes
  (``log_epoch``, ``log_trial_result``, ``mark_trial_failed``) and the tag names they share;
- ``queue``  -- the trial's write queue in the Ray worker (``BufferedRunLog``, ``EpochLog``):
  training never waits for the tracking server;
- ``server`` -- ``tracking.uri: local``: ``LocalMlflowServer``, an ``mlflow server`` on 127.0.0.1
  with a SQLite store under the sweep directory for the sweep's lifetime (concurrent trials in Ray
  workers write over HTTP to that single writer).

The experiment is tagged ``mlflow.experimentKind=custom_model_development`` (MLflow 3's "Model
training" kind; the value the UI's own kind selector writes), so the UI opens it on its runs table
rather than on the GenAI traces view. Runs are found by their tags before any is created, so
rerunning a sweep never makes a second run for the same trial. Environment variables are never logged.

Exactly once under retry. A write whose reply is lost (server killed mid-request, connection dropped)
may have landed, and it is sent again -- by ``BufferedRunLog``, by the driver's next pass, and by
MLflow's own client, whose urllib3 ``Retry`` re-sends any method (POST included) after a read error.
So every write is idempotent: metrics carry a timestamp fixed before the first attempt (the
epoch's report time; the mtime of ``result.json`` for final and summary metrics), and MLflow's SQL
stores drop a metric whose (key, value, step, timestamp) the run already holds (its primary key;
checked for SQLite behind ``mlflow server``, NaN included, in ``tests/test_faults_lost_reply.py``);
tags, artifacts (same path) and status are overwrites; a run is created only after a search for its
tags found none, and a second run that a re-sent ``create_run`` made is deleted right away (the
earliest is kept: the one every reader picks). Before a retry, per-epoch writes ask the server which
epochs it already holds, and the final result is skipped when the run already says ``done``.
"""

from orchestrator.tracking.queue import BufferedRunLog, EpochLog
from orchestrator.tracking.runs import (
    CONDITION_ID,
    EXPERIMENT_KIND,
    KIND,
    MODEL_TRAINING,
    STATUS,
    SWEEP,
    TRIAL_ARTIFACTS,
    TRIAL_ID,
    SweepTracker,
    _is_number,  # noqa: F401 -- the trainable's `tracking._is_number`, `tracking._now_ms`
    _now_ms,  # noqa: F401
    flatten_params,
    last_logged_epoch,
    log_epoch,
    log_trial_result,
    logged_epochs,
    mark_trial_failed,
    redact,
    refresh_summaries,
    result_timestamp,
    summary_statistics,
)
from orchestrator.tracking.server import LocalMlflowServer

__all__ = ["BufferedRunLog", "CONDITION_ID", "EXPERIMENT_KIND", "EpochLog", "KIND", "LocalMlflowServer",
           "MODEL_TRAINING", "STATUS", "SWEEP", "SweepTracker", "TRIAL_ARTIFACTS", "TRIAL_ID", "flatten_params",
           "last_logged_epoch", "log_epoch", "log_trial_result", "logged_epochs", "mark_trial_failed", "redact",
           "refresh_summaries", "result_timestamp", "summary_statistics"]
