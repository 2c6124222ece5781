"""The tiny sweep YAML the end-to-end tests run, written once.

``sweep_yaml`` writes a sweep on the embedded synthetic world with timm's ``test_resnet`` that trains in
seconds a trial on one core; each test passes only what its property needs (its grid, epochs, retries,
tracking URI, analysis block, packing). The YAML is built as a mapping and dumped, so no test retypes
the template and a test that needs other keys names them (``base=``, ``extra=``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

# the recipe of a scratch encoder on a few hundred frames: no head-only warm-up, the whole encoder at the
# head LR (as sweeps/demo.yaml)
TINY_BASE: dict[str, Any] = {
    "dataset": {"name": "synthetic", "preset": "affwild2_like", "n": 600, "image_size": 24},
    "backbone": {"name": "test_resnet"},
    "epochs": 2,
    "batch_size": 32,
    "warmup_epochs": 0,
    "unfreeze_fraction": 1.0,
    "encoder_lr_factor": 1.0,
    "eval_batch_size": 128,
}

# the one declared hypothesis most end-to-end tests carry: circumplex vs none on the score
CIRCUMPLEX_VS_NONE = {"contrast": [{"method.cost": "circumplex"}, {"method.cost": "none"}], "metric": "p_mtl"}


def merged(base: dict, delta: dict) -> dict:
    """``base`` with ``delta`` merged in key by key (nested mappings too)."""
    out = copy.deepcopy(base)
    for key, value in delta.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def sweep_yaml(path: Path, *, name: str, storage: Path, grid: dict[str, list], uri: str = "local",
               experiment: str | None = None, epochs: int = 2, retries: int = 1, base: dict | None = None,
               analysis: dict | None = None, stratum: dict | None = None, primary: bool = True,
               eval_every: int | None = 1, extra: dict | None = None) -> Path:
    """Write the tiny sweep to ``path``.

    ``analysis``: the whole ``analysis:`` block; by default the primary ``circumplex vs none`` on
    ``p_mtl`` (in ``stratum`` when the grid has an axis besides seed and cost; ``primary=False`` for a
    grid without both costs, then every result is exploratory) and ``exploratory: [p_mtl]``.
    ``eval_every=1`` evaluates every epoch (the exactly-once checks follow p_mtl through every epoch).
    ``extra``: further top-level keys (``pack``, ``max_concurrent``, ``controls``, ...).
    """
    body = merged(TINY_BASE, {"epochs": epochs, **({"eval_every": eval_every} if eval_every else {})})
    body = merged(body, base or {})
    if analysis is None:
        hypothesis = {**CIRCUMPLEX_VS_NONE, **({"stratum": stratum} if stratum else {})}
        analysis = {**({"primary": [hypothesis]} if primary else {}), "exploratory": ["p_mtl"]}
    doc: dict[str, Any] = {
        "name": name,
        "base": body,
        "grid": grid,
        "resources": {"cpu": 1},
        "failure": {"max_retries": retries},
        "tracking": {"uri": uri, "experiment": experiment or name},
        **({"analysis": analysis} if analysis else {}),  # {}: no analysis block
        "storage": str(storage),
        **(extra or {}),
    }
    path = Path(path)
    path.write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=120))
    return path
