"""The sweep directory's record of its trials, and the results table built from it.

```
<storage>/<name>/
  sweep.yaml              copy of the YAML of the latest `affsweep run`
  mlflow.json             {"tracking_uri", "experiment_id", "parent_run_id"}
  mlflow/                 the local MLflow store (tracking.uri: local): mlflow.db, artifacts/
  results.parquet|csv     one row per finished (done or failed) trial of the current plan
  driver.json             {"pid", "host", "started"} while an `affsweep run` drives the sweep
  ray/                    Ray Tune's own storage (experiment state, checkpoint copies)
  trials/<trial_id>/      written by trainers.engine.fit: checkpoints/last.pt, result.json,
                          confusion.json, circumplex.json, history.json; plus state.json (below)
```

``state.json`` = ``{"status": running|error|failed, "attempt": n, "error": ..., "updated": ...,
"node_id", "hostname", "pid", "first_epoch", "last_epoch"}`` (where the latest attempt runs and which
epochs it reported),
written by the trainable at each attempt's start (``running``) and failure (``error``: Ray may still
retry) and by the driver when Ray gives up on the trial (``failed``). ``result.json`` with
``status: done`` is the only proof that a trial finished; such a trial is never run again. It is the
trial's result row (``trainers.result_row``: trial_id, sweep, seed, status, axes, metrics), written
once and complete by ``fit``; the results table's rows are built by the same function (``plan_row``).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pandas as pd

from trainers.result_row import result_row

STATUSES = ("done", "running", "failed", "pending")
PLACEMENT = ("node_id", "hostname")  # results columns: where (which Ray node) a trial ran


def trial_dir(sweep_dir: Path, trial_id: str) -> Path:
    return Path(sweep_dir) / "trials" / trial_id


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, obj: Any) -> None:
    """Atomic: readers see the old or the new file, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def read_result(tdir: Path) -> dict | None:
    """The trial's result.json if the trial finished (status done), else None."""
    result = read_json(Path(tdir) / "result.json")
    return result if isinstance(result, dict) and result.get("status") == "done" else None


def read_state(tdir: Path) -> dict:
    state = read_json(Path(tdir) / "state.json")
    return state if isinstance(state, dict) else {}


def update_state(tdir: Path, **fields: Any) -> dict:
    state = {**read_state(tdir), **fields, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(Path(tdir) / "state.json", state)
    return state


# --- the driver lock --------------------------------------------------------------------------------

def driver_alive(sweep_dir: Path) -> dict | None:
    """The running driver's record, or None when no `affsweep run` drives this sweep right now."""
    info = read_json(Path(sweep_dir) / "driver.json")
    if not isinstance(info, dict):
        return None
    if info.get("host") != socket.gethostname():
        return info  # another machine's driver: trust the record
    try:
        os.kill(int(info["pid"]), 0)
    except (ProcessLookupError, ValueError, KeyError, TypeError):
        return None
    except PermissionError:
        return info
    return info


def trial_status(sweep_dir: Path, trial_id: str, driver_running: bool) -> str:
    """done / running / failed / pending, from the trial directory alone."""
    tdir = trial_dir(sweep_dir, trial_id)
    if read_result(tdir) is not None:
        return "done"
    state = read_state(tdir).get("status")
    if state == "failed":
        return "failed"
    if state in ("running", "error"):
        # an attempt started; without a live driver it was interrupted and will resume when rerun
        return "running" if driver_running else "pending"
    return "pending"


# --- the results table ------------------------------------------------------------------------------

def plan_row(trial, sweep: str, status: str, result: dict | None = None) -> dict:
    """The result row (``trainers.result_row``) of a planned trial: the plan's sweep, seed and axes
    with the metrics of its ``result.json`` (none for a failed trial)."""
    return result_row(trial.trial_id, trial.seed, status, result, sweep=sweep, axes=trial.axes)


def result_rows(plan, sweep_dir: Path) -> list[dict]:
    """One row per done or failed trial of ``plan``: the result row, then where it ran and its error."""
    rows = []
    for t in plan.trials:
        tdir = trial_dir(sweep_dir, t.trial_id)
        result, state = read_result(tdir), read_state(tdir)
        where = {k: state.get(k) for k in PLACEMENT}  # the Ray node of the trial's last attempt
        if result is not None:
            rows.append({**plan_row(t, plan.name, "done", result), **where, "error": None})
        elif state.get("status") == "failed":
            rows.append({**plan_row(t, plan.name, "failed"), **where, "error": state.get("error")})
    return rows


def write_results(plan, sweep_dir: Path) -> pd.DataFrame:
    """Write ``results.parquet`` and ``results.csv`` atomically; return the table."""
    rows = result_rows(plan, sweep_dir)
    fixed = ["trial_id", "sweep", "seed", "status", *plan.axes]
    tail = [*PLACEMENT, "error"]
    metric_cols = list(dict.fromkeys(k for r in rows for k in r if k not in fixed and k not in tail))
    df = pd.DataFrame(rows, columns=[*fixed, *metric_cols, *tail])
    for col in plan.axes:  # an axis of mappings or of mixed types: one readable string type
        values = df[col].dropna().tolist()
        if any(isinstance(v, dict | list) for v in values) or len({type(v) for v in values}) > 1:
            df[col] = df[col].map(lambda v: v if v is None else (json.dumps(v, sort_keys=True)
                                                                  if isinstance(v, dict | list) else str(v)))
    for col in tail:
        df[col] = df[col].astype("object")
    sweep_dir = Path(sweep_dir)
    for name, write in (("results.parquet", lambda p: df.to_parquet(p, index=False)),
                        ("results.csv", lambda p: df.to_csv(p, index=False))):
        tmp = sweep_dir / f".{name}.{os.getpid()}.tmp"
        write(tmp)
        os.replace(tmp, sweep_dir / name)
    return df


def condition_table(plan, sweep_dir: Path, metrics: list[str]) -> str:
    """Per-condition mean ± std (n) of ``metrics`` over the done trials: the fallback report."""
    from analysis.contrasts import describe

    rows = result_rows(plan, sweep_dir)
    done = [r for r in rows if r["status"] == "done"]
    header = ["condition", "n", *metrics]
    lines = []
    for label, trials in plan.conditions().items():
        ids = {t.trial_id for t in trials}
        got = [r for r in done if r["trial_id"] in ids]
        cells = [label, str(len(got))]
        for m in metrics:
            s = describe(pd.Series([r.get(m) for r in got], dtype="float64"))
            cells.append("—" if s.n == 0 else (f"{s.mean:.3f} ± {s.std:.3f}" if s.n > 1 else f"{s.mean:.3f}"))
        lines.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in lines)) if lines else len(h) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines)])
