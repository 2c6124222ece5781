"""Load a sweep's results into one tidy DataFrame (one row per trial).

Sources, in the order :func:`load_sweep` tries them:

- a sweep directory ``<storage>/<sweep_name>/`` holding ``results.parquet`` (or ``results.csv``),
  ``sweep.yaml``, ``mlflow.json`` and ``trials/<trial_id>/{confusion,circumplex}.json``;
- a results file (``.parquet`` or ``.csv``);
- an MLflow tracking URI plus a sweep name: the trial runs are found by their tags
  (``affsweep.sweep``, ``affsweep.kind=trial``) with ``MlflowClient.search_runs``.

Columns follow the results contract (docs/design.md §2): bookkeeping (``trial_id, sweep, seed,
status, data_order_hash``), one column per grid axis named by its dotted key, and metrics.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.dotted import flatten_dotted
from analysis.plan import AnalysisPlan

__all__ = [
    "BOOKKEEPING_COLUMNS",
    "METRIC_COLUMNS",
    "DirectoryArtifacts",
    "MlflowArtifacts",
    "SweepResults",
    "axis_columns",
    "is_metric_column",
    "load_results",
    "load_sweep",
    "metric_columns",
]

BOOKKEEPING_COLUMNS: tuple[str, ...] = (
    "trial_id", "sweep", "seed", "status", "data_order_hash", "sample_order_hash", "sampling",
    # tolerated extras a writer may add; never axes
    "error", "message", "trial_dir", "run_id", "mlflow_run_id", "started_at", "finished_at",
    "host", "hostname", "node_id", "device", "config_hash",
)
METRIC_COLUMNS: tuple[str, ...] = (
    "p_mtl", "va_ccc", "va_ccc_v", "va_ccc_a", "expr_f1", "au_f1", "expr_acc",
    "error_severity", "quadrant_keep", "affect_weighted_acc", "rsa_rho",
    "epochs", "train_seconds", "images_per_second",
)
METRIC_PREFIXES: tuple[str, ...] = ("expr_f1/", "au_f1/")
# error structure under a cost's own source (trainers.costs.source_error_metrics): error_severity@source
SOURCE_SUFFIX = "@source"
RESULT_FILES: tuple[str, ...] = ("results.parquet", "results.csv")


def is_metric_column(name: str) -> bool:
    return (name in METRIC_COLUMNS or name.startswith(METRIC_PREFIXES)
            or (name.endswith(SOURCE_SUFFIX) and name.removesuffix(SOURCE_SUFFIX) in METRIC_COLUMNS))


def metric_columns(frame: pd.DataFrame) -> tuple[str, ...]:
    """Metric columns in the frame's order (known metrics and the per-class / per-AU families)."""
    return tuple(c for c in frame.columns if is_metric_column(c))


def axis_columns(frame: pd.DataFrame, grid_keys: Iterable[str] | None = None) -> tuple[str, ...]:
    """The grid axes of a results frame (``seed`` excluded: it is the pairing key).

    With the sweep's grid keys known, exactly those present in the frame. Otherwise every column
    that is neither bookkeeping nor a metric and is either a dotted config key or non-numeric (an
    unknown undotted numeric column is a metric, not an axis).
    """
    if grid_keys is not None:
        keys = [k for k in grid_keys if k != "seed" and k in frame.columns]
        return tuple(keys)
    axes = []
    for column in frame.columns:
        if column in BOOKKEEPING_COLUMNS or is_metric_column(column):
            continue
        if "." in column or not pd.api.types.is_numeric_dtype(frame[column]):
            axes.append(column)
    return tuple(axes)


class DirectoryArtifacts:
    """Per-trial JSON artifacts under ``<sweep_dir>/trials/<trial_id>/``."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def read_json(self, trial_id: str, name: str) -> dict | None:
        path = self.directory / "trials" / str(trial_id) / name
        if not path.is_file():
            return None
        with open(path) as fh:
            return json.load(fh)


class MlflowArtifacts:
    """Per-trial JSON artifacts of the trial runs, downloaded on demand by run id."""

    def __init__(self, client, run_ids: Mapping[str, str]):
        self.client = client
        self.run_ids = dict(run_ids)

    def read_json(self, trial_id: str, name: str) -> dict | None:
        run_id = self.run_ids.get(str(trial_id))
        if run_id is None:
            return None
        for candidate in (name, f"trial/{name}", f"artifacts/{name}"):
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    local = self.client.download_artifacts(run_id, candidate, tmp)
                    with open(local) as fh:
                        return json.load(fh)
            except Exception:  # missing artifact: MLflow raises store-specific errors
                continue
        return None


class _NoArtifacts:
    def read_json(self, trial_id: str, name: str) -> dict | None:
        return None


@dataclass(frozen=True, eq=False)
class SweepResults:
    """A loaded sweep: the tidy results frame plus what the analysis needs to know about it."""

    results: pd.DataFrame
    name: str
    axes: tuple[str, ...]
    metrics: tuple[str, ...]
    directory: Path | None = None
    spec: dict | None = None
    plan: AnalysisPlan | None = None
    mlflow: dict | None = None
    artifacts: Any = field(default_factory=_NoArtifacts)

    def confusion(self, trial_id: str) -> tuple[list[str], np.ndarray] | None:
        payload = self.artifacts.read_json(trial_id, "confusion.json")
        if payload is None:
            return None
        return list(payload["class_names"]), np.asarray(payload["matrix"], dtype=float)

    def circumplex(self, trial_id: str) -> dict | None:
        return self.artifacts.read_json(trial_id, "circumplex.json")


def load_results(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``results.parquet``/``results.csv`` (or a sweep directory holding one) into a DataFrame."""
    path = Path(path)
    if path.is_dir():
        for name in RESULT_FILES:
            if (path / name).is_file():
                return load_results(path / name)
        raise FileNotFoundError(f"{path}: no results.parquet or results.csv in this sweep directory")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such results file or sweep directory")
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix == ".csv":
        frame = pd.read_csv(path)
    else:
        raise ValueError(f"{path}: expected a .parquet or .csv results file")
    return _normalise(frame)


def _normalise(frame: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("trial_id", "seed") if c not in frame.columns]
    if missing:
        raise ValueError(f"results lack the required column(s) {missing}; columns are {list(frame.columns)}")
    frame = frame.copy()
    frame["trial_id"] = frame["trial_id"].astype(str)
    if "status" not in frame.columns:
        frame["status"] = "done"
    for column in metric_columns(frame):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame = _canonical_mapping_axes(frame)
    if "data_order_hash" in frame.columns:
        frame["data_order_hash"] = frame["data_order_hash"].map(
            lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
        )
    return frame.reset_index(drop=True)


def _canonical_mapping_axes(frame: pd.DataFrame) -> pd.DataFrame:
    """A cost axis in one form, whatever wrote it: results.parquet's JSON strings, the shorthands, and
    MLflow's ``method.cost.source`` / ``method.cost.control`` params become ``method.cost`` labels
    (``uniform``, ``permuted(file:x.json)``: ``analysis.pairing.canonical_value``)."""
    from analysis.pairing import canonical_value
    from analysis.plan import MAPPING_VALUED_AXES

    for axis in MAPPING_VALUED_AXES:
        parts = [f"{axis}.{p}" for p in ("source", "control") if f"{axis}.{p}" in frame.columns]
        if parts:
            n = len(frame)
            values = frame[axis].tolist() if axis in frame.columns else [None] * n
            sources = frame.get(f"{axis}.source", pd.Series([None] * n)).tolist()
            controls = frame.get(f"{axis}.control", pd.Series([None] * n)).tolist()
            merged = [{"source": s, "control": c if isinstance(c, str) else "none"}
                      if isinstance(s, str) and (v is None or (isinstance(v, float) and math.isnan(v))) else v
                      for v, s, c in zip(values, sources, controls)]
            frame = frame.drop(columns=parts)
            frame[axis] = pd.Series(merged, index=frame.index, dtype=object)
        if axis in frame.columns:
            frame[axis] = frame[axis].map(lambda v, axis=axis: canonical_value(axis, v)).astype(object)
    return frame


def _read_yaml(path: Path) -> dict | None:
    if not path.is_file():
        return None
    import yaml

    with open(path) as fh:
        return yaml.safe_load(fh) or {}


def grid_keys_of(spec: Mapping | None) -> list[str] | None:
    """Dotted axis keys of a sweep spec: its grid keys plus keys set by include/exclude entries."""
    if not spec or not isinstance(spec.get("grid"), Mapping):
        return None
    keys = [str(k) for k in flatten_dotted(spec["grid"])]  # nested grid mappings become dotted keys
    for extra in ("include", "exclude"):
        entries = spec.get(extra) or spec["grid"].get(extra) or []
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, Mapping):
                for key in flatten_dotted(entry):
                    if key not in keys:
                        keys.append(key)
    if spec.get("controls") not in (None, False, "none") and "method.cost" not in keys:
        keys.append("method.cost")  # controls: auto makes the cost an axis (analysis.controls)
    return [k for k in keys if k not in ("include", "exclude")]


def plan_of(spec: Mapping | None, where: str = "sweep.yaml") -> AnalysisPlan | None:
    """The validated ``analysis:`` block of a sweep spec (with the hypotheses its ``controls:`` add,
    ``analysis.controls``), or None when it has neither."""
    if not spec or (spec.get("analysis") is None and spec.get("controls") in (None, False, "none")):
        return None
    from pydantic import ValidationError

    from analysis.controls import with_control_hypotheses

    try:
        block = with_control_hypotheses(dict(spec))
    except ValueError as exc:
        raise ValueError(f"{where}: controls: {exc}") from exc
    try:
        return AnalysisPlan.model_validate(block)
    except ValidationError as exc:
        first = exc.errors()[0]
        parts, msg = ["analysis", *map(str, first["loc"])], first["msg"].removeprefix("Value error, ")
        if msg.startswith("@"):  # a validator that knows the offending sub-key
            sub, msg = msg[1:].split(":", 1)
            parts.append(sub)
        head, sep, rest = msg.partition(": ")  # "primary.0: ..." from the plan's own validators
        if sep and head.split(".")[0] == parts[-1] and " " not in head:
            parts, msg = [*parts[:-1], *head.split(".")], rest
        raise ValueError(f"{where}: {'.'.join(parts)}: {msg}") from exc


def load_sweep(
    source: str | os.PathLike | None = None,
    *,
    tracking_uri: str | None = None,
    sweep: str | None = None,
    storage: str | os.PathLike | None = None,
) -> SweepResults:
    """Load a sweep from a directory, a results file, or MLflow (``tracking_uri`` + sweep name).

    ``source`` may also be a bare sweep name, resolved as ``<storage>/<name>`` (``storage``
    defaults to ``$AFFSWEEP_STORAGE``) or, with a tracking URI, looked up in MLflow.
    """
    if source is not None and Path(source).exists():
        return _load_path(Path(source))
    name = sweep or (str(source) if source is not None else None)
    if name is None:
        raise ValueError("give a sweep directory, a results file, or a tracking URI with a sweep name")
    storage = storage or os.environ.get("AFFSWEEP_STORAGE")
    if storage is not None and (Path(storage) / name).is_dir():
        return _load_path(Path(storage) / name)
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if tracking_uri:
        return load_sweep_from_mlflow(tracking_uri, name)
    raise FileNotFoundError(
        f"{name}: not a sweep directory or results file, and no tracking URI to look it up in "
        f"(pass --tracking-uri or set AFFSWEEP_STORAGE)"
    )


def _load_path(path: Path) -> SweepResults:
    frame = load_results(path)
    directory = path if path.is_dir() else path.parent
    spec = _read_yaml(directory / "sweep.yaml")
    mlflow_info = None
    if (directory / "mlflow.json").is_file():
        with open(directory / "mlflow.json") as fh:
            mlflow_info = json.load(fh)
    name = (spec or {}).get("name") or _first(frame, "sweep") or directory.name
    return SweepResults(
        results=frame,
        name=str(name),
        axes=axis_columns(frame, grid_keys_of(spec)),
        metrics=metric_columns(frame),
        directory=directory,
        spec=spec,
        plan=plan_of(spec, str(directory / "sweep.yaml")),
        mlflow=mlflow_info,
        artifacts=DirectoryArtifacts(directory),
    )


def _first(frame: pd.DataFrame, column: str):
    if column in frame.columns and len(frame):
        value = frame[column].iloc[0]
        return None if pd.isna(value) else value
    return None


def _parse_param(text: str) -> Any:
    """MLflow stores params as strings; recover numbers, booleans and None."""
    if text in ("None", "null"):
        return None
    if text in ("True", "False"):
        return text == "True"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


_STATUS = {"FINISHED": "done", "FAILED": "failed", "KILLED": "failed", "RUNNING": "running", "SCHEDULED": "running"}


def _search_all_runs(client, experiment_ids: list[str], filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def load_sweep_from_mlflow(tracking_uri: str, sweep: str) -> SweepResults:
    """Rebuild the results frame of sweep ``sweep`` from its trial runs in MLflow.

    Trial runs carry the tags ``affsweep.sweep=<sweep>``, ``affsweep.kind=trial`` and
    ``affsweep.trial_id``; params are the flattened resolved config, metrics the final metrics.
    The parent run (``affsweep.kind=sweep``) supplies the sweep YAML when it logged it.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_ids, token = [], None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        experiment_ids.extend(e.experiment_id for e in page)
        token = page.token
        if not token:
            break
    quoted = sweep.replace("'", "\\'")
    base = f"tags.`affsweep.sweep` = '{quoted}'"
    trial_runs = _search_all_runs(client, experiment_ids, f"{base} and tags.`affsweep.kind` = 'trial'")
    if not trial_runs:
        raise LookupError(f"{tracking_uri}: no trial runs tagged affsweep.sweep={sweep!r}")
    rows, run_ids, axis_tags = [], {}, {}
    for run in trial_runs:
        tags, params = run.data.tags, run.data.params
        trial_id = tags.get("affsweep.trial_id") or params.get("trial_id") or run.info.run_id
        row: dict[str, Any] = {"trial_id": str(trial_id), "sweep": sweep}
        row.update({k: _parse_param(v) for k, v in params.items()})
        # the orchestrator tags each trial run with its axis values (dotted keys) and its seed
        for key, value in tags.items():
            if not key.startswith(("mlflow.", "affsweep.")) and key != "seed":
                row[key] = _parse_param(value)
                axis_tags[key] = None
        row["seed"] = _parse_param(params.get("seed", tags.get("seed", tags.get("affsweep.seed", "nan"))))
        row["status"] = tags.get("affsweep.status") or _STATUS.get(run.info.status, str(run.info.status).lower())
        row["data_order_hash"] = (
            tags.get("affsweep.data_order_hash") or params.get("data_order_hash") or row.get("data_order_hash")
        )
        # MLflow names cannot hold "@": the tracker logs error_severity@source as error_severity_source
        row.update({_source_metric(k): v for k, v in run.data.metrics.items()})
        rows.append(row)
        run_ids[str(trial_id)] = run.info.run_id
    frame = _normalise(pd.DataFrame(rows))

    spec, parent_run_id, experiment_id = None, None, None
    parents = _search_all_runs(client, experiment_ids, f"{base} and tags.`affsweep.kind` = 'sweep'")
    if parents:
        parent = parents[0]
        parent_run_id, experiment_id = parent.info.run_id, parent.info.experiment_id
        spec = _download_spec(client, parent_run_id)
    if parent_run_id is None:
        parent_run_id = trial_runs[0].data.tags.get("mlflow.parentRunId")
    grid = grid_keys_of(spec)
    if grid is None and axis_tags:
        grid = list(axis_tags)
    elif grid is None:
        # neither the YAML nor axis tags: the axes are the params that vary across the trial runs
        param_keys = sorted({k for run in trial_runs for k in run.data.params})
        grid = [k for k in param_keys if k in frame.columns and frame[k].astype(str).nunique(dropna=False) > 1]
    return SweepResults(
        results=frame,
        name=sweep,
        axes=axis_columns(frame, grid),
        metrics=metric_columns(frame),
        directory=None,
        spec=spec,
        plan=plan_of(spec, f"{tracking_uri} run {parent_run_id}: sweep.yaml"),
        mlflow={"tracking_uri": tracking_uri, "experiment_id": experiment_id, "parent_run_id": parent_run_id},
        artifacts=MlflowArtifacts(client, run_ids),
    )


def _source_metric(key: str) -> str:
    stem = key.removesuffix("_source")
    return f"{stem}{SOURCE_SUFFIX}" if key != stem and stem in METRIC_COLUMNS else key


def _download_spec(client, run_id: str) -> dict | None:
    import yaml

    for candidate in ("sweep.yaml", "sweep/sweep.yaml", "config/sweep.yaml"):
        try:
            with tempfile.TemporaryDirectory() as tmp:
                local = client.download_artifacts(run_id, candidate, tmp)
                with open(local) as fh:
                    return yaml.safe_load(fh) or {}
        except Exception:  # absent artifact
            continue
    return None
