"""The result row of one trial: what ``result.json`` holds, and one row of ``results.parquet``.

docs/design.md §2: ``trial_id, sweep, seed, status`` + every axis value as its own column + the
final metrics. ``trainers.engine.fit`` writes it once, complete, as the trial's ``result.json`` (the
sweep's name and the trial's axes come from its caller; a trial run alone, ``affsweep train``, has
neither). The sweep directory's results table (``orchestrator.sweep_dir.result_rows``) and the
driver's MLflow backfill build their rows from that file with this same function, so the three
never disagree on the columns or on which value wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

HEAD = ("trial_id", "sweep", "seed", "status")  # the leading columns, in this order


def result_row(trial_id: str, seed: int, status: str, metrics: Mapping[str, Any] | None = None, *,
               sweep: str | None = None, axes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``trial_id, sweep, seed, status``, then ``axes`` (column order kept), then ``metrics``.

    ``metrics`` may be a stored row (a ``result.json``): its own head and axis keys are replaced by
    the arguments, so the caller's sweep, seed and axes are the ones a row shows."""
    axes = dict(axes or {})
    head = {"trial_id": trial_id, "sweep": sweep, "seed": seed, "status": status}
    rest = {k: v for k, v in (metrics or {}).items() if k not in head and k not in axes}
    return {**head, **axes, **rest}
