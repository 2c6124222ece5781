"""Packs: the grid points one Ray trial trains together (``pack:`` in the sweep YAML), planned on the
driver without Ray. ``pack_trials`` groups a plan's trials; ``pack_param`` is a pack's entry in Tune's
param space. The packed trainable (``orchestrator.packed_trainable``) runs what they describe."""

from __future__ import annotations

import hashlib
import json

from orchestrator.expand import condition_label

__all__ = ["pack_param", "pack_trials"]


def pack_trials(trials: list, pack, axes: list[str]) -> list[list]:
    """``trials`` (``expand.Trial``) in packs of up to ``pack.size``: trials whose axes agree outside
    ``pack.by`` (and whose dataset, backbone and device agree) share a pack, in plan order."""
    groups: dict[str, list] = {}
    for t in trials:
        shared = {k: t.axes[k] for k in axes if k not in pack.by}
        if "seed" not in pack.by:
            shared["seed"] = t.seed
        cfg = t.config.model_dump(mode="json", include={"dataset", "backbone", "device"})
        groups.setdefault(json.dumps([shared, cfg], sort_keys=True, default=str), []).append(t)
    packs = [g[i:i + pack.size] for g in groups.values() for i in range(0, len(g), pack.size)]
    order = {t.trial_id: i for i, t in enumerate(trials)}
    return sorted(packs, key=lambda p: order[p[0].trial_id])


def pack_param(members: list, params: list[dict], by: list[str]) -> dict:
    """The pack's entry in Tune's param space: an id, what its members share, and their trial params."""
    ids = [t.trial_id for t in members]
    shared = {k: v for k, v in members[0].axes.items() if k not in by}
    return {"pack_id": "pack-" + hashlib.sha256(",".join(ids).encode()).hexdigest()[:10],
            "condition": condition_label(shared), "seeds": sorted({t.seed for t in members}),
            "trial_ids": ids, "members": params}
