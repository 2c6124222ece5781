"""The Ray Tune function trainable: one trial = one call of ``trainers.engine.fit``.

``fit`` checkpoints atomically after each epoch into ``trials/<id>/checkpoints/last.pt``; its
``report`` hook sends the epoch's metrics to ``tune.report`` WITHOUT a checkpoint and logs the epoch to
the trial's MLflow run. The trial directory is the one checkpoint: Ray 2.x copies every reported
``Checkpoint`` into its storage (``StorageContext.persist_current_checkpoint``), which would write each
checkpoint twice, and the trial directory must be on storage every node reaches anyway (the driver
reads ``result.json`` there). When Ray retries a failed trial (``FailureConfig``), or a later
``affsweep run`` re-plans an interrupted one, ``fit`` resumes from ``last.pt`` by itself.

Test-only fault injection: the driver copies ``AFFSWEEP_FAIL_TRIALS=<trial_id>:<n>[,...]`` into the
trial's config as ``inject_failures``; the trial then raises after its first epoch's report in its
first ``n`` attempts (counted in ``state.json`` across retries and reruns).

Every MLflow write of the trial goes through a ``tracking.BufferedRunLog``: training never waits for
the tracking server, and a server that is down or restarting gets the writes, in order, when it is
back; each write is idempotent (``tracking`` says how), since one whose reply was lost is sent again.
A ``NonFiniteLossError`` is deterministic (same config, seed and checkpoint: same NaN), so Ray's
retry of such a trial fails at once with the original reason instead of training again.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from pathlib import Path

from ray import tune

from orchestrator import sweep_dir as record
from orchestrator import tracking


class InjectedFailure(RuntimeError):
    """Raised by the test-only fault injection (AFFSWEEP_FAIL_TRIALS)."""


FLUSH_TIMEOUT = float(os.environ.get("AFFSWEEP_MLFLOW_FLUSH_TIMEOUT", "600"))  # s a finished trial waits for MLflow


def train_trial(config: dict, tracking_uri: str) -> None:
    """One trial. ``tracking_uri`` comes through ``tune.with_parameters`` (Ray's object store), not the
    config, so a URI with credentials never lands in Ray's params.json."""
    entered = time.perf_counter()  # timing.json: the trial's imports and set-up count as its time
    import ray
    from mlflow.tracking import MlflowClient

    from trainers.config import TrialConfig
    from trainers.engine import NonFiniteLossError, fit

    t = config["trial"]
    if Path(config.get("cwd", "")).is_dir():
        os.chdir(config["cwd"])  # relative paths in the config (dataset.root, ...) mean what they meant to the driver
    cfg = TrialConfig.model_validate(t["config"])
    tdir = Path(t["trial_dir"])
    ray_trial = tune.get_context().get_trial_id()
    previous = record.read_state(tdir)
    if previous.get("nonfinite_in") == ray_trial:  # Ray retries it: the NaN would come back, don't train again
        raise NonFiniteLossError(f"{previous.get('error')} (deterministic: not retried)")
    state = record.update_state(tdir, status="running", error=None, attempt=int(previous.get("attempt", 0)) + 1,
                                node_id=ray.get_runtime_context().get_node_id(), hostname=socket.gethostname(),
                                pid=os.getpid())
    attempt, fail_times = state["attempt"], int(t.get("inject_failures", 0))
    # the buffer retries on its own: MLflow's client-side retries (minutes of backoff) would only delay it
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    mlflow_log = tracking.BufferedRunLog(MlflowClient(tracking_uri=tracking_uri), t["run_id"])
    mlflow_log.submit(_start_attempt, attempt, state["node_id"], state["hostname"])
    log_epoch = tracking.EpochLog()  # each epoch once in the run, also when a write's reply is lost

    reported: list[int] = []
    timing = {"t_start": time.time(), "io_start": _io_written(), "timing/ray_report_s": 0.0,
              "ray_checkpoint_bytes": 0, "timing/trial_start_s": time.perf_counter() - entered}

    def report(epoch: int, metrics: dict, checkpoint_dir: Path) -> None:
        if not reported:  # > 1 when this attempt resumed from a checkpoint
            record.update_state(tdir, first_epoch=epoch, last_epoch=epoch)
        else:
            record.update_state(tdir, last_epoch=epoch)
        reported.append(epoch)
        mlflow_log.submit(log_epoch, epoch, dict(metrics), tracking._now_ms())  # timestamp fixed now
        first = ("epoch", "p_mtl", "expr_f1", "va_ccc", "au_f1")  # the order Tune's table shows them in
        numeric = {k: float(metrics[k]) for k in first if tracking._is_number(metrics.get(k))}
        numeric.update({k: float(v) for k, v in metrics.items() if k not in numeric and tracking._is_number(v)})
        t0 = time.perf_counter()
        tune.report(numeric)  # no checkpoint: Ray would copy it (see the module docstring)
        timing["timing/ray_report_s"] += time.perf_counter() - t0
        if attempt <= fail_times:
            raise InjectedFailure(f"injected failure of trial {cfg.trial_id} after epoch {epoch} "
                                  f"(attempt {attempt} of the {fail_times} that fail)")

    started = time.perf_counter()
    try:
        checkpoint = tune.get_checkpoint()
        row = {"sweep": config["sweep"], "axes": t["axes"]}  # fit writes result.json once, with these
        if checkpoint is not None:
            with checkpoint.as_directory() as resume_from:
                result = fit(cfg, tdir, report=report, progress=False, resume_from=resume_from, **row)
        else:
            result = fit(cfg, tdir, report=report, progress=False, **row)
    except BaseException as e:
        message = f"{type(e).__name__}: {e}"
        extra = {"nonfinite_in": ray_trial} if isinstance(e, NonFiniteLossError) else {}
        record.update_state(tdir, status="error", error=message, traceback=traceback.format_exc()[-4000:], **extra)
        mlflow_log.submit(lambda client, run_id: tracking.mark_trial_failed(client, run_id, message, final=False))
        mlflow_log.close(timeout=30)  # the driver records the final failure itself if MLflow is away
        raise

    # result.metrics is the result row fit wrote (its one write: the mtime is the final metrics' timestamp)
    mlflow_log.submit(tracking.log_trial_result, tdir, result.metrics, result.history, tracking.result_timestamp(tdir))
    t0 = time.perf_counter()
    delivered = mlflow_log.close(timeout=FLUSH_TIMEOUT)
    write_timing(tdir, result.timing, timing, mlflow_wait=time.perf_counter() - t0, trial=time.perf_counter() - entered)
    record.update_state(tdir, status="done", error=None, fit_seconds=time.perf_counter() - started,
                        mlflow_retries=mlflow_log.failed_writes, mlflow_delivered=delivered)


def _io_written() -> int | None:
    """Bytes this process has caused to be written to storage so far (Linux /proc), or None."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def write_timing(tdir: Path, fit_timing: dict, timing: dict, mlflow_wait: float, trial: float) -> None:
    """timing.json: fit's phases plus what the trainable spent around them (Ray's report, MLflow)."""
    io_start, io_end = timing.pop("io_start"), _io_written()
    out = {**fit_timing, **timing, "t_end": time.time(), "timing/mlflow_wait_s": mlflow_wait,
           "timing/trial_s": trial,
           "process_write_bytes": None if io_start is None or io_end is None else io_end - io_start}
    record.write_json(tdir / "timing.json", out)


def _start_attempt(client, run_id: str, attempt: int, node_id: str, hostname: str) -> None:
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, tracking.STATUS, "running")
    client.set_tag(run_id, "affsweep.attempt", str(attempt))
    client.set_tag(run_id, "affsweep.node_id", node_id)
    client.set_tag(run_id, "affsweep.hostname", hostname)
