"""``affsweep run SWEEP.yaml``: validate, expand, skip what is done, run the rest with Ray Tune.

Resume without waste — why the driver re-plans instead of calling ``Tuner.restore``
------------------------------------------------------------------------------------
A trial is identified by its content-addressed ``trial_id``, and its directory
``<sweep dir>/trials/<trial_id>/`` is the record of truth: ``result.json`` with ``status: done`` means
finished, ``checkpoints/last.pt`` is where an interrupted trial resumes (``fit`` does that itself).
Every ``affsweep run`` (``--resume`` included) therefore plans the remaining trials from that
record and hands only those to a fresh ``tune.Tuner``. ``Tuner.restore`` cannot do this: it restores
the param space it was first given, so it cannot add the seeds or conditions a user appends to the
YAML, it needs the same Ray storage (a rerun on another machine or after deleting ``ray/`` would
start over), and it would also re-run trials that finished after its last experiment snapshot.
Within one run, Ray Tune's own mechanism restores a failed trial: ``FailureConfig(max_failures)``
retries it and ``tune.get_checkpoint()`` hands the trainable its last reported checkpoint.

MLflow runs are looked up by tag (``affsweep.sweep`` + ``affsweep.trial_id``) before any is created,
so a rerun never makes a second run for a trial; a trial that finished on disk but whose worker
died before logging is backfilled from its directory instead of being trained again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import mlflow_ui, tracking
from orchestrator import sweep_dir as record
from orchestrator.dry_run import format_dry_run
from orchestrator.expand import SweepPlan, Trial, load_sweep
from orchestrator.preflight import check_sweep
from orchestrator.spec import ConfigError

__all__ = ["SweepOutcome", "main", "run_sweep"]


@dataclass
class SweepOutcome:
    sweep_dir: Path
    started: list[str] = field(default_factory=list)  # trial ids handed to Ray Tune in this run
    skipped: list[str] = field(default_factory=list)  # already done before this run
    done: list[str] = field(default_factory=list)     # done at the end (including skipped)
    failed: list[str] = field(default_factory=list)
    interrupted: bool = False
    tracking_uri: str | None = None   # where the MLflow data stays (sqlite:/// for tracking.uri: local)
    ui_command: str | None = None
    ui_url: str | None = None         # the MLflow UI's runs table with the summary means (orchestrator.mlflow_ui)
    report: Path | None = None
    analysis_error: str | None = None

    @property
    def exit_code(self) -> int:
        return 130 if self.interrupted else (1 if self.failed or self.analysis_error else 0)


def main(args) -> int:
    try:
        plan = load_sweep(args.sweep)
        check_sweep(plan)  # datasets, backbones, weights, costs: before anything is started or created
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sweep_dir = plan.spec.sweep_dir(args.storage)
    until_decided = getattr(args, "until_decided", False)
    if until_decided and plan.analysis.looks is None:
        print(f"error: {args.sweep}: --until-decided needs a sequential design: analysis.looks: [n1, n2, ...] "
              f"(README 'Sequential runs')", file=sys.stderr)
        return 2
    if args.dry_run:
        print(format_dry_run(plan, sweep_dir))
        return 0
    if args.resume and not (sweep_dir / "sweep.yaml").is_file():
        print(f"error: {args.sweep}: nothing to resume: {sweep_dir} holds no sweep (run it without --resume)",
              file=sys.stderr)
        return 2
    try:
        if until_decided:
            from orchestrator.until_decided import run_until_decided

            return run_until_decided(plan, sweep_dir, run_sweep, address=args.address,
                                     verbose=getattr(args, "verbose", False)).exit_code
        outcome = run_sweep(plan, sweep_dir, address=args.address, verbose=getattr(args, "verbose", False))
    except SweepBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return outcome.exit_code


class SweepBusy(RuntimeError):
    """Another `affsweep run` drives the same sweep directory."""


def run_sweep(plan: SweepPlan, sweep_dir: Path, address: str | None = None, analyze: bool = True,
              say: Callable[[str], None] = print, verbose: bool = False) -> SweepOutcome:
    """Run the trials of ``plan`` that are not done yet; write results, MLflow runs and the report.

    The console shows one live status line (``orchestrator.console``); ``verbose`` brings back Ray's
    own status table, its log lines and the trials' worker output. Either way Ray's logs of a Ray
    started here are copied to ``<sweep dir>/ray/logs``."""
    sweep_dir = Path(sweep_dir).resolve()
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a link per run: noise in a sweep
    busy = record.driver_alive(sweep_dir)
    if busy:
        raise SweepBusy(f"sweep {plan.name} is already being run (pid {busy.get('pid')} on {busy.get('host')}, "
                        f"since {busy.get('started')}); see `affsweep status {sweep_dir}`")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record.write_json(sweep_dir / "driver.json", {"pid": os.getpid(), "host": socket.gethostname(),
                                                  "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    shutil.copyfile(plan.source.path, sweep_dir / "sweep.yaml")
    outcome = SweepOutcome(sweep_dir)
    try:
        with contextlib.ExitStack() as stack:
            spec = plan.spec
            if spec.tracking.uri == "local":
                say(f"starting the local MLflow server (store {sweep_dir / 'mlflow'}) ...")
                server = stack.enter_context(tracking.LocalMlflowServer(sweep_dir / "mlflow"))
                uri, outcome.tracking_uri, outcome.ui_command = server.uri, server.store_uri, server.ui_command()
            else:
                uri = spec.tracking.uri
                outcome.tracking_uri = tracking.redact(uri)  # what is written to mlflow.json and printed
                outcome.ui_command = f"mlflow ui --backend-store-uri {uri}" if not uri.startswith("http") else None
            tracker = tracking.SweepTracker(uri, spec.tracking.experiment, plan.name)
            try:
                _drive(plan, sweep_dir, tracker, outcome, address, analyze, say, verbose)
            except KeyboardInterrupt:
                # still inside the server's lifetime: the parent run can be marked before it stops
                outcome.interrupted = True
                if tracker.parent_run_id:
                    with contextlib.suppress(Exception):
                        tracker.finish_parent("KILLED")
    except KeyboardInterrupt:  # during the server's start or stop
        outcome.interrupted = True
    finally:
        with contextlib.suppress(Exception):
            record.write_results(plan, sweep_dir)
        (sweep_dir / "driver.json").unlink(missing_ok=True)
    if outcome.interrupted:
        say("interrupted: finished trials are kept; rerun the same command to resume the others")
    _where(plan, outcome, say)
    return outcome


def _drive(plan: SweepPlan, sweep_dir: Path, tracker, outcome: SweepOutcome, address: str | None,
           analyze: bool, say, verbose: bool = False) -> None:
    parent = tracker.ensure_parent(plan.analysis.plan_hash(), sweep_dir / "sweep.yaml")
    key = mlflow_ui.save_view(tracker.client, tracker.experiment_id, plan.name, plan.axes)
    base = outcome.tracking_uri if outcome.tracking_uri.startswith("http") else mlflow_ui.UI_BASE
    outcome.ui_url = mlflow_ui.landing_url(base, tracker.experiment_id, key)
    record.write_json(sweep_dir / "mlflow.json", {"tracking_uri": outcome.tracking_uri,
                                                  "experiment_id": tracker.experiment_id,
                                                  "parent_run_id": parent, "ui_command": outcome.ui_command,
                                                  "ui_url": outcome.ui_url})
    runs = tracker.trial_runs()
    pending: list[Trial] = []
    for t in plan.trials:
        tdir = record.trial_dir(sweep_dir, t.trial_id)
        result = record.read_result(tdir)
        if result is None:
            pending.append(t)
            continue
        outcome.skipped.append(t.trial_id)
        run = runs.get(t.trial_id)
        if run is None or run.data.tags.get(tracking.STATUS) != "done":
            _backfill(tracker, t, tdir, result, runs)  # finished on disk, not (fully) in MLflow
    run_ids = {t.trial_id: tracker.ensure_trial_run(t, runs) for t in pending}
    say(f"sweep {plan.name}: {len(plan.trials)} trials, {len(outcome.skipped)} already done, "
        f"{len(pending)} to run -> {sweep_dir}")
    errors = {}
    if pending:
        outcome.started = [t.trial_id for t in pending]
        errors = _run_tune(plan, sweep_dir, pending, run_ids, tracker.uri, tracker, address, say, verbose,
                           skipped=len(outcome.skipped))
    _finish(plan, sweep_dir, tracker, outcome, errors)
    if outcome.interrupted:
        raise KeyboardInterrupt
    if analyze:
        _report(plan, sweep_dir, tracker, outcome, say)


def _backfill(tracker, t: Trial, tdir: Path, result: dict, runs: dict) -> None:
    run_id = tracker.ensure_trial_run(t, runs)
    history = record.read_json(tdir / "history.json") or []
    row = record.plan_row(t, tracker.sweep, "done", result)  # result.json itself is not rewritten
    tracking.log_trial_result(tracker.client, run_id, tdir, row, history=history,
                              timestamp=tracking.result_timestamp(tdir))


def _trial_param(t: Trial, sweep_dir: Path, run_id: str, failures: dict[str, int]) -> dict:
    param = {"trial_id": t.trial_id, "condition": t.condition, "seed": t.seed, "axes": t.axes,
             "config": t.config.model_dump(mode="json"),
             "trial_dir": str(record.trial_dir(sweep_dir, t.trial_id)), "run_id": run_id}
    if failures.get(t.trial_id):
        param["inject_failures"] = failures[t.trial_id]
    return param


def injected_failures() -> dict[str, int]:
    """``AFFSWEEP_FAIL_TRIALS=<trial_id>:<n>[,...]`` (tests only): trial -> attempts that raise."""
    out = {}
    for item in filter(None, os.environ.get("AFFSWEEP_FAIL_TRIALS", "").split(",")):
        trial_id, _, n = item.strip().partition(":")
        out[trial_id] = int(n or 1)
    return out


def _run_tune(plan: SweepPlan, sweep_dir: Path, pending: list[Trial], run_ids: dict[str, str], uri: str,
              tracker, address: str | None, say, verbose: bool = False, skipped: int = 0) -> dict[str, str]:
    """Hand ``pending`` to one ``tune.Tuner``; return trial_id -> error for the trials Ray gave up on."""
    import logging

    import ray
    from ray import tune

    from orchestrator.callbacks import SweepCallback, members, trial_name
    from orchestrator.console import LiveView
    from orchestrator.trainable import train_trial

    # Tune's classic status table, with the columns a reader of this study wants (CLIReporter below);
    # the newer AIR output would show each trial's whole config dict as its one parameter column
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    owns_ray = not ray.is_initialized()
    if owns_ray:
        # no address: a Ray of the sweep's own ("local"), never whatever /tmp/ray/ray_current_cluster
        # last pointed at (ray.init(address=None) would connect to it, or hang on a dead one)
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        # quiet unless verbose: Ray's INFO/WARNING lines (its token-auth notice included) and the
        # workers' output (per-checkpoint INFO lines) stay in Ray's logs, copied to <sweep dir>/ray/logs
        ray.init(address=address, include_dashboard=False if address == "local" else None,
                 logging_level=logging.INFO if verbose else logging.ERROR, log_to_driver=verbose)
    try:
        if plan.spec.tracking.uri == "local" and len([n for n in ray.nodes() if n.get("Alive")]) > 1:
            say("warning: tracking.uri is local (127.0.0.1 on this machine) but the Ray cluster has several "
                "nodes; trials on other nodes cannot reach it: set tracking.uri to a shared MLflow server")
        spec, failures = plan.spec, injected_failures()
        params = [_trial_param(t, sweep_dir, run_ids[t.trial_id], failures) for t in pending]
        fn, space, columns = train_trial, {"trial": tune.grid_search(params)}, ("trial/condition", "trial/seed")
        if spec.pack is not None:  # one Ray trial per pack, with one trial's resources (one process)
            from orchestrator.packed_trainable import train_pack
            from orchestrator.packing import pack_param, pack_trials

            by_id = dict(zip((t.trial_id for t in pending), params))
            packs = [pack_param(p, [by_id[t.trial_id] for t in p], spec.pack.by)
                     for p in pack_trials(pending, spec.pack, plan.axes)]
            fn, space, columns = train_pack, {"pack": tune.grid_search(packs)}, ("pack/condition", "pack/seeds")
            say(f"packed: {len(pending)} trials in {len(packs)} Ray trials of up to {spec.pack.size} "
                f"(differing in {', '.join(spec.pack.by)})")
        trainable = tune.with_resources(tune.with_parameters(fn, tracking_uri=uri),
                                        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
        view = None if verbose else LiveView(plan.name, len(plan.trials), skipped, say=say)
        callbacks = [SweepCallback(plan, sweep_dir, tracker, say if view is None else view.say)]
        reporter = tune.CLIReporter(
            parameter_columns=dict(zip(columns, ("condition", "seed"))),
            metric_columns={"epoch": "epoch", "p_mtl": "P_MTL", "expr_f1": "EXPR F1", "va_ccc": "VA CCC"},
            max_column_length=40, max_report_frequency=30)
        tuner = tune.Tuner(
            trainable,
            param_space={
                **space,
                "sweep": plan.name,
                "cwd": os.getcwd(),
                "parent_run_id": tracker.parent_run_id,
            },
            tune_config=tune.TuneConfig(max_concurrent_trials=spec.max_concurrent, reuse_actors=True,
                                        trial_name_creator=trial_name, trial_dirname_creator=trial_name),
            run_config=tune.RunConfig(
                name=f"{plan.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=str(sweep_dir / "ray"),
                failure_config=tune.FailureConfig(max_failures=spec.failure.max_retries),
                # num_to_keep unset: with it, every trial checkpoint forces a snapshot of the experiment
                # state (Ray's "snapshotting has been triggered multiple times" warning), which the
                # driver never restores from; SweepCallback drops each superseded Ray checkpoint itself
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
                callbacks=callbacks if view is None else [view, *callbacks],
                progress_reporter=reporter if verbose else None,
                verbose=1 if verbose else 0,  # 1: Tune's status table; 0: the live view only
            ),
        )
        grid = tuner.fit()
        return {m["trial_id"]: str(r.error) for r in grid if r.error is not None and r.config
                for m in members(r.config)}
    finally:
        if owns_ray:
            logs = _ray_logs_dir()
            ray.shutdown()
            if logs:
                with contextlib.suppress(OSError):
                    shutil.copytree(logs, sweep_dir / "ray" / "logs" / Path(logs).parent.name, dirs_exist_ok=True)


def _ray_logs_dir() -> str | None:
    """The log directory of the Ray session this driver started (Ray's temp dir, e.g. /tmp/ray)."""
    try:
        from ray._private import worker

        return worker._global_node.get_logs_dir_path()
    except Exception:  # noqa: BLE001 -- a private API: no copy of the logs is no failure
        return None


def _finish(plan: SweepPlan, sweep_dir: Path, tracker, outcome: SweepOutcome, errors: dict[str, str]) -> None:
    """Reconcile disk and MLflow once the Tuner returns, then record the sweep's final state.

    A started trial that is neither done nor errored was stopped by a Ctrl-C (Tune stops gracefully
    and returns): the sweep counts as interrupted and the trial resumes on the next run."""
    runs = tracker.trial_runs()
    for t in plan.trials:
        tdir = record.trial_dir(sweep_dir, t.trial_id)
        result = record.read_result(tdir)
        run = runs.get(t.trial_id)
        if result is not None:
            outcome.done.append(t.trial_id)
            if run is None or run.data.tags.get(tracking.STATUS) != "done":
                _backfill(tracker, t, tdir, result, runs)
        elif t.trial_id in errors:
            # Ray gave up on it (the callback normally recorded it already): failed, with the reason
            outcome.failed.append(t.trial_id)
            state = record.read_state(tdir)
            error = state.get("error") or errors[t.trial_id].strip().splitlines()[-1][:2000]
            if state.get("status") != "failed":
                record.update_state(tdir, status="failed", error=error)
            if run is not None and run.data.tags.get(tracking.STATUS) != "failed":
                tracking.mark_trial_failed(tracker.client, run.info.run_id, error, final=True)
        elif t.trial_id in outcome.started:
            outcome.interrupted = True
            if run is not None and run.info.status in ("RUNNING", "SCHEDULED"):
                tracker.client.set_tag(run.info.run_id, tracking.STATUS, "interrupted")
                tracker.client.set_terminated(run.info.run_id, "KILLED")
    tracking.refresh_summaries(plan, sweep_dir, tracker)
    record.write_results(plan, sweep_dir)
    if not outcome.interrupted:
        tracker.finish_parent("FINISHED" if not outcome.failed else "FAILED")


def _report(plan: SweepPlan, sweep_dir: Path, tracker, outcome: SweepOutcome, say) -> None:
    metrics = plan.analysis.metrics
    if outcome.failed:
        say(f"\n{len(outcome.failed)} trial(s) failed: {', '.join(outcome.failed)} -- the analysis needs every "
            f"trial; rerun the same command to retry them (finished trials are kept)")
        say(record.condition_table(plan, sweep_dir, metrics))
        return
    try:
        from analysis.report import log_report_to_mlflow, run_analysis
    except ImportError:
        say("\nper condition, mean ± std over seeds (the analysis package is not available):")
        say(record.condition_table(plan, sweep_dir, metrics))
        return
    try:
        report = run_analysis(sweep_dir, plan=plan.spec.analysis, sweep=plan.name)
    except Exception as e:  # noqa: BLE001 -- the sweep's results stand; say why there is no report
        outcome.analysis_error = f"{type(e).__name__}: {e}"
        say(f"\nthe analysis failed ({outcome.analysis_error}); per condition, mean ± std over seeds:")
        say(record.condition_table(plan, sweep_dir, metrics))
        return
    outcome.report = report.html
    try:
        log_report_to_mlflow(tracker.uri, tracker.parent_run_id, report.paths)
    except Exception as e:  # noqa: BLE001
        say(f"warning: logging the report to MLflow failed ({type(e).__name__}: {e})")
    say(f"\nreport: {report.markdown}")
    for warning in report.warnings:
        say(f"warning: {warning}")


def _where(plan: SweepPlan, outcome: SweepOutcome, say) -> None:
    d = outcome.sweep_dir
    n_done, n = len(outcome.done), len(plan.trials)
    say("")
    say(f"sweep {plan.name}: {n_done}/{n} trials done ({len(outcome.started)} scheduled in this run, "
        f"{len(outcome.skipped)} skipped as already done), {len(outcome.failed)} failed")
    say(f"results:  {d / 'results.parquet'}  ({d / 'results.csv'})")
    if outcome.report:
        say(f"report:   {outcome.report}")
    if outcome.tracking_uri:
        say(f"MLflow:   {outcome.tracking_uri}  (parent run in {d / 'mlflow.json'})")
    if outcome.ui_command:
        say(f"browse:   {outcome.ui_command}")
    if outcome.ui_url:
        say(f"open:     {outcome.ui_url}")
