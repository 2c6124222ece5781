"""The Ray Tune function trainable: one trial = one call of ``trainers.engine.fit``.

``fit`` checkpoints atomically after each epoch; its ``report`` hook hands that directory to
``tune.report(metrics, checkpoint=Checkpoint.from_directory(...))`` and logs the epoch to the trial's
MLflow run. When Ray retries a failed trial (``FailureConfig``), ``tune.get_checkpoint()`` is the last
reported checkpoint and ``fit`` resumes from it; when a later ``affsweep run`` re-plans an interrupted
trial, ``fit`` resumes from ``trials/<id>/checkpoints/last.pt`` in the trial directory by itself.

Test-only fault injection: the driver copies ``AFFSWEEP_FAIL_TRIALS=<trial_id>:<n>[,...]`` into the
trial's config as ``inject_failures``; the trial then raises after its first epoch's report in its
first ``n`` attempts (counted in ``state.json`` across retries and reruns).
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

from ray import tune

from orchestrator import results as record
from orchestrator import tracking


class InjectedFailure(RuntimeError):
    """Raised by the test-only fault injection (AFFSWEEP_FAIL_TRIALS)."""


def train_trial(config: dict, tracking_uri: str) -> None:
    """One trial. ``tracking_uri`` comes through ``tune.with_parameters`` (Ray's object store), not the
    config, so a URI with credentials never lands in Ray's params.json."""
    from mlflow.tracking import MlflowClient

    from trainers.config import TrialConfig
    from trainers.engine import fit

    t = config["trial"]
    if Path(config.get("cwd", "")).is_dir():
        os.chdir(config["cwd"])  # relative paths in the config (dataset.root, ...) mean what they meant to the driver
    cfg = TrialConfig.model_validate(t["config"])
    tdir = Path(t["trial_dir"])
    state = record.update_state(tdir, status="running", error=None,
                                attempt=int(record.read_state(tdir).get("attempt", 0)) + 1)
    attempt, fail_times = state["attempt"], int(t.get("inject_failures", 0))
    client = MlflowClient(tracking_uri=tracking_uri)
    run_id = t["run_id"]
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, tracking.STATUS, "running")
    client.set_tag(run_id, "affsweep.attempt", str(attempt))
    logged = tracking.last_logged_epoch(client, run_id)  # a restarted trial never logs an epoch twice

    reported: list[int] = []

    def report(epoch: int, metrics: dict, checkpoint_dir: Path) -> None:
        if not reported:  # > 1 when this attempt resumed from a checkpoint
            record.update_state(tdir, first_epoch=epoch)
        reported.append(epoch)
        if epoch > logged:
            tracking.log_epoch(client, run_id, epoch, metrics)
        first = ("epoch", "p_mtl", "expr_f1", "va_ccc", "au_f1")  # the order Tune's table shows them in
        numeric = {k: float(metrics[k]) for k in first if tracking._is_number(metrics.get(k))}
        numeric.update({k: float(v) for k, v in metrics.items() if k not in numeric and tracking._is_number(v)})
        tune.report(numeric, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))
        if attempt <= fail_times:
            raise InjectedFailure(f"injected failure of trial {cfg.trial_id} after epoch {epoch} "
                                  f"(attempt {attempt} of the {fail_times} that fail)")

    started = time.perf_counter()
    try:
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as resume_from:
                result = fit(cfg, tdir, report=report, progress=False, resume_from=resume_from)
        else:
            result = fit(cfg, tdir, report=report, progress=False)
    except BaseException as e:
        message = f"{type(e).__name__}: {e}"
        record.update_state(tdir, status="error", error=message, traceback=traceback.format_exc()[-4000:])
        try:
            tracking.mark_trial_failed(client, run_id, message, final=False)
        except Exception:  # noqa: BLE001 -- never hide the trial's own error behind a logging one
            pass
        raise

    # result.json as DESIGN has it: trial_id, sweep, seed, status + every axis value + final metrics
    metrics = {k: v for k, v in result.metrics.items() if k not in ("trial_id", "seed", "status")}
    full = {"trial_id": cfg.trial_id, "sweep": config["sweep"], "seed": cfg.seed, "status": "done",
            **t["axes"], **metrics}
    record.write_json(tdir / "result.json", full)
    tracking.log_trial_result(client, run_id, tdir, full, history=result.history)
    record.update_state(tdir, status="done", error=None, fit_seconds=time.perf_counter() - started)
