"""What finished trials leave in a sweep directory, written without training (tracking and status tests)."""

from __future__ import annotations

from pathlib import Path

from orchestrator import sweep_dir as record
from orchestrator.expand import load_sweep
from tests.support.sweeps import sweep_yaml


def small_plan(tmp_path: Path):
    """A 3-seed x {none, circumplex} sweep named ``t`` on 300 frames, expanded (nothing runs)."""
    path = sweep_yaml(tmp_path / "s.yaml", name="t", storage=tmp_path / "runs", uri="local", experiment="t",
                      base={"dataset": {"n": 300}}, grid={"seed": [0, 1, 2], "method.cost": ["none", "circumplex"]})
    return load_sweep(path)


def fake_result(t, p_mtl: float, sweep: str = "t") -> dict:
    return {"trial_id": t.trial_id, "sweep": sweep, "seed": t.seed, "status": "done", **t.axes,
            "p_mtl": p_mtl, "expr_f1": p_mtl / 2, "expr_f1/Anger": 0.1, "error_severity": float("nan"),
            "epochs": 2, "train_seconds": 1.5, "data_order_hash": f"h{t.seed}"}


def finish_trial(sweep_dir: Path, t, p_mtl: float) -> dict:
    """What a finished trial leaves in its directory."""
    tdir = record.trial_dir(sweep_dir, t.trial_id)
    result = fake_result(t, p_mtl)
    record.write_json(tdir / "result.json", result)
    record.write_json(tdir / "history.json", [{"epoch": 1, "p_mtl": p_mtl / 2}, {"epoch": 2, "p_mtl": p_mtl}])
    for name in ("confusion.json", "circumplex.json"):
        record.write_json(tdir / name, {})
    return result
