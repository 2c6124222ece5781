"""The trial ids of every shipped sweep, as a committed table (``tests/golden/trial_ids.json``).

A trial id is a promise to users: a finished study is found again by it. ``tests/test_trial_ids.py``
fails when any shipped sweep expands to other ids than the table holds. Changing them is then a
deliberate act: regenerate the table with ``python -m tests.support.trial_ids --write`` and say why in
the commit message.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TABLE = REPO / "tests" / "golden" / "trial_ids.json"


def shipped_sweeps() -> list[str]:
    """Every YAML under sweeps/, relative to the repository (the keys of the table)."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "sweeps").rglob("*.yaml"))


def expand_ids(key: str) -> list[str]:
    """The trial ids a shipped YAML expands to, in plan order (a trial YAML: its one id). Run from the
    repository root: file cost sources are relative to it, as for a user."""
    import yaml

    from orchestrator.expand import load_sweep
    from trainers.config import load_trial_config

    path = REPO / key
    data = yaml.safe_load(path.read_text()) or {}
    if "grid" in data or "name" in data:
        return [t.trial_id for t in load_sweep(path).trials]
    return [load_trial_config(path).trial_id]


def current_table() -> dict[str, list[str]]:
    return {key: expand_ids(key) for key in shipped_sweeps()}


def main(argv: list[str]) -> int:
    import os

    os.chdir(REPO)
    table = current_table()
    if "--write" in argv:
        TABLE.parent.mkdir(parents=True, exist_ok=True)
        TABLE.write_text(json.dumps(table, indent=1) + "\n")
        print(f"wrote {TABLE.relative_to(REPO)}: {sum(map(len, table.values()))} trial ids of {len(table)} files")
    else:
        print(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
