"""``affsweep status SWEEP``: done / running / failed / pending per condition, from the sweep directory.

``SWEEP`` is the sweep YAML (its directory is ``<storage>/<name>/``) or the sweep directory itself
(whose ``sweep.yaml`` is the copy the last ``affsweep run`` made). Nothing is started or contacted:
the trial directories are the record (``orchestrator.sweep_dir``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from orchestrator import sweep_dir as record
from orchestrator.expand import SweepPlan, load_sweep
from orchestrator.spec import ConfigError


def main(args) -> int:
    try:
        plan, sweep_dir = resolve(args.sweep, args.storage)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_status(plan, sweep_dir))
    return 0


def resolve(sweep: str, storage: str | None = None) -> tuple[SweepPlan, Path]:
    path = Path(sweep)
    if path.is_dir():
        if not (path / "sweep.yaml").is_file():
            raise ConfigError(f"{path}: not a sweep directory (no sweep.yaml; give the sweep YAML instead)")
        return load_sweep(path / "sweep.yaml"), path.resolve()
    plan = load_sweep(path)
    return plan, plan.spec.sweep_dir(storage)


def status_counts(plan: SweepPlan, sweep_dir: Path) -> dict[str, dict[str, int]]:
    """condition label -> {done, running, failed, pending} counts."""
    running = record.driver_alive(sweep_dir) is not None
    out: dict[str, dict[str, int]] = {}
    for label, trials in plan.conditions().items():
        counts = dict.fromkeys(record.STATUSES, 0)
        for t in trials:
            counts[record.trial_status(sweep_dir, t.trial_id, running)] += 1
        out[label] = counts
    return out


def format_status(plan: SweepPlan, sweep_dir: Path) -> str:
    counts = status_counts(plan, sweep_dir)
    header = ["condition", *record.STATUSES, "total"]
    rows = [[label, *(str(c[s]) for s in record.STATUSES), str(sum(c.values()))] for label, c in counts.items()]
    totals = {s: sum(c[s] for c in counts.values()) for s in record.STATUSES}
    rows.append(["all", *(str(totals[s]) for s in record.STATUSES), str(len(plan.trials))])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    driver = record.driver_alive(sweep_dir)
    state = (f"running (pid {driver.get('pid')} on {driver.get('host')}, since {driver.get('started')})"
             if driver else ("not started" if not sweep_dir.exists() else "not running"))
    lines = [f"sweep {plan.name} at {sweep_dir}: {state}", "", fmt(header), fmt(["-" * w for w in widths]),
             *map(fmt, rows[:-1]), fmt(["-" * w for w in widths]), fmt(rows[-1])]
    failed = [t for t in plan.trials if record.trial_status(sweep_dir, t.trial_id, driver is not None) == "failed"]
    for t in failed:
        error = record.read_state(record.trial_dir(sweep_dir, t.trial_id)).get("error") or ""
        lines.append(f"failed: {t.trial_id} ({t.condition}, seed {t.seed}): {error}")
    ui = record.read_json(sweep_dir / "mlflow.json") or {}
    if ui.get("ui_command"):
        lines.append(f"browse:   {ui['ui_command']}")
    if ui.get("ui_url"):
        lines.append(f"open:     {ui['ui_url']}")
    if not driver and totals["pending"] + totals["failed"] and sweep_dir.exists():
        lines.append("rerun `affsweep run <the YAML>` to run the pending and failed trials (done ones are skipped)")
    return "\n".join(lines)
