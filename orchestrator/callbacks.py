"""Ray Tune's driver-side hooks for a sweep (imported only when a sweep actually runs)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ray import tune

from orchestrator import sweep_dir as record
from orchestrator import tracking


def trial_name(trial) -> str:
    """Trials appear in Tune's table and directories under their content-addressed id (a pack under
    its own id, ``pack-<hash of its members' ids>``)."""
    config = trial.config
    return config["pack"]["pack_id"] if "pack" in config else config["trial"]["trial_id"]


def members(config: dict) -> list[dict]:
    """The trial params a Ray trial trains: its one trial, or the members of a pack."""
    return config["pack"]["members"] if "pack" in config else [config["trial"]]


class SweepCallback(tune.Callback):
    """As each trial finishes, update the results table and its condition's MLflow summary; record a
    trial Ray gave up on as failed (in its directory and its MLflow run). Runs in the driver, the
    only writer of ``results.parquet`` and of the summary runs."""

    def __init__(self, plan, sweep_dir: Path, tracker, say):
        self.plan, self.sweep_dir, self.tracker, self.say = plan, sweep_dir, tracker, say
        self.by_id = {t.trial_id: t for t in plan.trials}

    def on_trial_complete(self, iteration, trials, trial, **info):
        done = [self.by_id[m["trial_id"]] for m in members(trial.config)]
        for t in done:
            result = record.read_result(record.trial_dir(self.sweep_dir, t.trial_id)) or {}
            shown = "  ".join(f"{k} {result[k]:.3f}" for k in ("p_mtl", "expr_f1", "error_severity")
                              if isinstance(result.get(k), float))
            self.say(f"trial {t.trial_id} done ({t.condition}, seed {t.seed}): {shown}")
        record.write_results(self.plan, self.sweep_dir)
        for condition in dict.fromkeys(t.condition for t in done):
            self._safely(lambda c=condition: tracking.refresh_summaries(self.plan, self.sweep_dir, self.tracker,
                                                                        only=c))
        _drop_ray_checkpoint(trial)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        _drop_ray_checkpoint(trial, keep=getattr(checkpoint, "path", None))

    def on_trial_recover(self, iteration, trials, trial, **info):
        for m in self._unfinished(trial):
            tid = m["trial_id"]
            error = record.read_state(record.trial_dir(self.sweep_dir, tid)).get("error") or "worker lost"
            self.say(f"trial {tid} failed ({error}); Ray retries it from its last checkpoint")

    def on_trial_error(self, iteration, trials, trial, **info):
        for m in self._unfinished(trial):  # a pack's finished members stay done
            tid, run_id = m["trial_id"], m["run_id"]
            error = trial_error(self.sweep_dir, tid, trial)
            record.update_state(record.trial_dir(self.sweep_dir, tid), status="failed", error=error)
            self._safely(lambda r=run_id, e=error: tracking.mark_trial_failed(self.tracker.client, r, e, final=True))
            self.say(f"trial {tid} FAILED after {trial.num_failures} attempt(s): {error}")
        record.write_results(self.plan, self.sweep_dir)

    def _unfinished(self, trial) -> list[dict]:
        return [m for m in members(trial.config)
                if record.read_result(record.trial_dir(self.sweep_dir, m["trial_id"])) is None]

    def _safely(self, fn) -> None:
        # MLflow being briefly unreachable must not abort the sweep; the driver reconciles at the end
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            self.say(f"warning: MLflow update failed ({type(e).__name__}: {e}); retried at the end")


def trial_error(sweep_dir: Path, tid: str, trial) -> str:
    """The trainable's own one-line error, else the last line of Ray's error file."""
    error = record.read_state(record.trial_dir(sweep_dir, tid)).get("error")
    if error:
        return error
    path = getattr(trial, "error_file", None)  # the worker died before the trainable could say why
    if path and Path(path).is_file():
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            return lines[-1][:2000]
    return "the trial's worker died"


def _drop_ray_checkpoint(trial, keep: str | None = None) -> None:
    """Free Ray's copies of a trial's checkpoints: all but ``keep`` (the one just reported, which a
    retry resumes from), or all of them once the trial finished -- it is never restored, and the
    trial directory keeps ``checkpoints/last.pt``. Only for local storage."""
    path = keep or getattr(getattr(trial, "checkpoint", None), "path", None)
    if not path or not Path(path).is_dir() or not Path(path).name.startswith("checkpoint_"):
        return
    for old in Path(path).parent.glob("checkpoint_*"):
        if old.is_dir() and (keep is None or old.name < Path(keep).name):
            shutil.rmtree(old, ignore_errors=True)
