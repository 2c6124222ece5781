"""The Ray Tune function trainable of a packed sweep (``pack:`` in the sweep YAML).

One Ray trial is one *pack*: up to ``pack.size`` grid points that differ only in the ``pack.by``
axes (seeds, by default), so they share dataset, backbone and everything else. The pack trains its
members interleaved step by step in one process (``trainers.packed.fit_packed``: one decoded copy of
the data, one CUDA context), and gives every member exactly what an unpacked trial gets from
``orchestrator.trainable.train_trial``: its own ``state.json`` (attempts, node, failure), its own
MLflow run written through a ``tracking.BufferedRunLog`` (each epoch once via ``tracking.EpochLog``,
its timestamp fixed at report time; the final result at ``tracking.result_timestamp``), its own
``result.json`` with the axes, ``timing.json`` and ``checkpoints/last.pt``. Packing is placement
only: trial_ids, metrics and pairing are those of the unpacked sweep.

Members already done are skipped. A member that fails does not stop the others; the pack then
raises (``PackFailed``) once the others have ended, so that Ray retries it under the sweep's
``FailureConfig`` like an unpacked trial -- its finished members are skipped and the failed ones
resume from their own ``checkpoints/last.pt`` (``fit_steps`` does that itself). Retries are counted
per pack. A ``NonFiniteLossError`` is deterministic, so a retry refuses that member at once, as the
unpacked trainable does.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from pathlib import Path

from orchestrator import sweep_dir as record
from orchestrator import tracking

# orchestrator.trainable (train_trial's helpers, and Ray) is imported where a pack runs; the driver's
# planning of packs is orchestrator.packing (no Ray)
__all__ = ["PackFailed", "train_pack"]


class PackFailed(RuntimeError):
    """Some members of a pack failed (the others finished); Ray may retry the pack."""


# --- the trainable (Ray worker side) ------------------------------------------------------------------

def train_pack(config: dict, tracking_uri: str) -> None:
    """One pack. ``tracking_uri`` comes through ``tune.with_parameters``, as for ``train_trial``."""
    entered = time.perf_counter()
    from ray import tune

    from orchestrator.trainable import FLUSH_TIMEOUT
    from trainers.packed import fit_packed

    if Path(config.get("cwd", "")).is_dir():
        os.chdir(config["cwd"])
    ray_trial = tune.get_context().get_trial_id()
    members = [_Member(t, config["sweep"], ray_trial) for t in config["pack"]["members"]]
    todo = [m for m in members if record.read_result(m.tdir) is None]  # finished members are skipped
    done = [len(members) - len(todo)]  # members with result.json: reported to Tune as pack/done
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    runnable = []
    for m in todo:
        if m.previous.get("nonfinite_in") == ray_trial:  # Ray retries the pack: that NaN would come back
            m.ended, m.error = True, f"{m.previous.get('error')} (deterministic: not retried)"
        else:
            m.start(tracking_uri, time.perf_counter() - entered, len(members))
            runnable.append(m)

    def report(m: _Member):
        def hook(epoch: int, metrics: dict, checkpoint_dir: Path) -> None:
            m.report(epoch, metrics, tune.report, pack_done=done[0])
        return hook

    def on_end(i: int, outcome) -> None:
        runnable[i].end(outcome)
        done[0] += not isinstance(outcome, BaseException)

    try:
        if runnable:
            fit_packed([m.cfg for m in runnable], [m.tdir for m in runnable], [report(m) for m in runnable],
                       sweep=config["sweep"], axes=[m.t["axes"] for m in runnable], on_end=on_end)
    except BaseException as e:  # the whole pack stopped (interrupt, worker lost): every unfinished member
        for m in runnable:
            if not m.ended:
                m.end(e)
        raise
    finally:
        deadline = time.perf_counter() + FLUSH_TIMEOUT
        for m in todo:  # the members' writes were delivered in parallel; wait for what is left
            m.close(max(deadline - time.perf_counter(), 1.0))
    failed = [m for m in todo if m.error]
    if failed:
        raise PackFailed(f"{len(failed)} of {len(members)} packed trials failed: "
                         + "; ".join(f"{m.cfg.trial_id}: {m.error}" for m in failed))


class _Member:
    """One trial of a pack: what ``train_trial`` does around ``fit``, per member."""

    def __init__(self, t: dict, sweep: str, ray_trial: str):
        from trainers.config import TrialConfig

        self.t, self.sweep, self.ray_trial = t, sweep, ray_trial
        self.cfg = TrialConfig.model_validate(t["config"])
        self.tdir = Path(t["trial_dir"])
        self.previous = record.read_state(self.tdir)
        self.error: str | None = None
        self.ended = False
        self.reported: list[int] = []
        self.log = None

    def start(self, tracking_uri: str, setup_s: float, pack_size: int) -> None:
        import ray
        from mlflow.tracking import MlflowClient

        from orchestrator.trainable import _io_written, _start_attempt

        state = record.update_state(self.tdir, status="running", error=None,
                                    attempt=int(self.previous.get("attempt", 0)) + 1,
                                    node_id=ray.get_runtime_context().get_node_id(),
                                    hostname=socket.gethostname(), pid=os.getpid())
        self.attempt, self.fail_times = state["attempt"], int(self.t.get("inject_failures", 0))
        self.log = tracking.BufferedRunLog(MlflowClient(tracking_uri=tracking_uri), self.t["run_id"])
        self.log.submit(_start_attempt, self.attempt, state["node_id"], state["hostname"])
        self.log_epoch = tracking.EpochLog()
        self.started = time.perf_counter()
        self.timing = {"t_start": time.time(), "io_start": _io_written(), "timing/ray_report_s": 0.0,
                       "ray_checkpoint_bytes": 0, "timing/trial_start_s": setup_s, "pack/size": pack_size}

    def report(self, epoch: int, metrics: dict, tune_report, pack_done: int) -> None:
        from orchestrator.trainable import InjectedFailure

        record.update_state(self.tdir, **({} if self.reported else {"first_epoch": epoch}), last_epoch=epoch)
        self.reported.append(epoch)
        self.log.submit(self.log_epoch, epoch, dict(metrics), tracking._now_ms())  # timestamp fixed now
        first = ("epoch", "p_mtl", "expr_f1", "va_ccc", "au_f1")
        numeric = {k: float(metrics[k]) for k in first if tracking._is_number(metrics.get(k))}
        numeric.update({k: float(v) for k, v in metrics.items() if k not in numeric and tracking._is_number(v)})
        numeric["pack/done"] = pack_done  # the live view counts a pack's finished members
        t0 = time.perf_counter()
        tune_report(numeric)
        self.timing["timing/ray_report_s"] += time.perf_counter() - t0
        if self.attempt <= self.fail_times:
            raise InjectedFailure(f"injected failure of trial {self.cfg.trial_id} after epoch {epoch} "
                                  f"(attempt {self.attempt} of the {self.fail_times} that fail)")

    def end(self, outcome) -> None:
        """The member ended: a ``TrialResult`` (write result.json, log it) or the exception that ended it."""
        from trainers.engine import NonFiniteLossError

        self.ended = True
        if isinstance(outcome, BaseException):
            self.error = f"{type(outcome).__name__}: {outcome}"
            extra = {"nonfinite_in": self.ray_trial} if isinstance(outcome, NonFiniteLossError) else {}
            tb = "".join(traceback.format_exception(type(outcome), outcome, outcome.__traceback__))
            record.update_state(self.tdir, status="error", error=self.error, traceback=tb[-4000:], **extra)
            message = self.error
            self.log.submit(lambda client, run_id: tracking.mark_trial_failed(client, run_id, message, final=False))
            return
        self.result = outcome
        # fit wrote result.json once, complete (trainers/result_row.py): log that row as it stands
        self.fit_seconds = time.perf_counter() - self.started
        self.log.submit(tracking.log_trial_result, self.tdir, dict(outcome.metrics), outcome.history,
                        tracking.result_timestamp(self.tdir))

    def close(self, timeout: float) -> None:
        """Wait for the member's MLflow writes; then its timing and final state (as ``train_trial``)."""
        from orchestrator.trainable import write_timing

        if self.log is None:
            return
        t0 = time.perf_counter()
        delivered = self.log.close(timeout=timeout if not self.error else min(timeout, 30))
        if self.error or not self.ended:
            return
        write_timing(self.tdir, self.result.timing, self.timing, mlflow_wait=time.perf_counter() - t0,
                     trial=time.perf_counter() - self.started + self.timing["timing/trial_start_s"])
        record.update_state(self.tdir, status="done", error=None, fit_seconds=self.fit_seconds,
                            mlflow_retries=self.log.failed_writes, mlflow_delivered=delivered)
