"""A fake sweep directory in the results contract, for the analysis tests and ``benchmarks/analysis_speed.py``.

:func:`write_demo_sweep` writes ``results.parquet``, ``results.csv``, ``sweep.yaml`` (with an
``analysis:`` block), ``mlflow.json`` and ``trials/<trial_id>/{result,confusion,circumplex}.json``
exactly as the orchestrator does, with numbers drawn to mimic the study's qualitative pattern: a
seed effect shared by every condition of a seed (what pairing removes), a small gain for every
non-trivial cost, errors that land nearer under the circumplex cost, and a degenerate pair whose
F1 does not move. Nothing here is evidence of anything; it exercises the analysis end to end.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.errors import affect_weighted_accuracy, error_severity, quadrant_preservation

__all__ = ["DATASETS", "demo_results", "write_demo_sweep"]

AU_NAMES = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26")
# class names, approximate circumplex centroids (valence, arousal), class frequencies, degenerate pair
DATASETS = {
    "affwild2_like": (
        ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other"),
        ((0.02, 0.05), (-0.45, 0.55), (-0.55, 0.25), (-0.42, 0.60), (0.70, 0.35), (-0.55, -0.30),
         (0.20, 0.70), (-0.10, 0.20)),
        (0.30, 0.02, 0.03, 0.02, 0.20, 0.12, 0.06, 0.25),
        (1, 3),
    ),
    "affectnet_like": (
        ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"),
        ((0.0, 0.0), (0.75, 0.30), (-0.60, -0.35), (0.20, 0.75), (-0.40, 0.65), (-0.60, 0.30),
         (-0.50, 0.55), (-0.48, 0.50)),
        (0.25, 0.30, 0.10, 0.08, 0.05, 0.05, 0.10, 0.07),
        (6, 7),
    ),
}
COST_GAIN = {"none": 0.0, "circumplex": 0.010, "permuted": 0.008, "uniform": 0.011}
# errors land nearer in affect space when the cost prices distance (lower temperature = nearer)
ERROR_TEMPERATURE = {"none": 0.9, "circumplex": 0.45, "permuted": 0.9, "uniform": 0.85}


def _cost(centroids: np.ndarray) -> np.ndarray:
    return np.linalg.norm(centroids[:, None, :] - centroids[None, :, :], axis=-1)


def _derangement(k: int, rng) -> list[int]:
    while True:
        perm = rng.permutation(k)
        if not (perm == np.arange(k)).any():
            return perm.tolist()


def _trial(dataset: str, cost: str, lam: float, seed: int, rng_seed: int, seed_effect: dict) -> tuple[dict, dict]:
    names, centroids, freq, pair = DATASETS[dataset]
    mu, freq = np.asarray(centroids), np.asarray(freq)
    k = len(names)
    true_cost = _cost(mu)
    key = f"{dataset}|{cost}|{lam}|{seed}|{rng_seed}"
    rng = np.random.default_rng(int(hashlib.sha256(key.encode()).hexdigest()[:8], 16))
    gain = COST_GAIN.get(cost, 0.005) * (min(lam, 2.0) if cost != "none" else 0.0)
    base_f1 = np.where(np.isin(np.arange(k), pair), 0.10, 0.45) + seed_effect["class"]
    class_f1 = np.clip(base_f1 + np.where(np.isin(np.arange(k), pair), 0.0, 2.5 * gain) + rng.normal(0, 0.003, k),
                       0.01, 0.99)
    va = 0.44 + seed_effect["va"] + rng.normal(0, 0.001)
    has_au = dataset == "affwild2_like"
    au = np.clip(0.49 + seed_effect["au"] + rng.normal(0, 0.001, len(AU_NAMES)), 0, 1) if has_au else None

    n_val = 2000
    counts = np.maximum(1, np.round(freq * n_val)).astype(int)
    temperature = ERROR_TEMPERATURE.get(cost, 0.9) if cost == "none" or lam > 0 else ERROR_TEMPERATURE["none"]
    confusion = np.zeros((k, k))
    for i in range(k):
        weights = np.exp(-true_cost[i] / temperature)
        weights[i] = 0
        weights = weights / weights.sum()
        p = (1 - class_f1[i]) * weights
        p[i] = class_f1[i]
        confusion[i] = rng.multinomial(counts[i], p / p.sum())
    expr_f1 = float(class_f1.mean())
    p_mtl = va + expr_f1 + (float(au.mean()) if has_au else 0.0)
    order = hashlib.sha256(f"{dataset}|{seed}".encode()).hexdigest()[:16]
    row = {
        "seed": seed, "status": "done", "method.cost": cost, "method.lam": lam, "dataset.preset": dataset,
        "p_mtl": p_mtl, "va_ccc": va, "va_ccc_v": va + 0.02, "va_ccc_a": va - 0.02, "expr_f1": expr_f1,
        "au_f1": float(au.mean()) if has_au else np.nan, "expr_acc": float(np.trace(confusion) / confusion.sum()),
        **{f"expr_f1/{n}": float(f) for n, f in zip(names, class_f1)},
        **{f"au_f1/{n}": (float(a) if has_au else np.nan) for n, a in zip(AU_NAMES, au if has_au else [0] * 12)},
        "error_severity": error_severity(confusion, true_cost),
        "quadrant_keep": quadrant_preservation(confusion, mu),
        "affect_weighted_acc": affect_weighted_accuracy(confusion, true_cost),
        "rsa_rho": 0.16 + (0.013 if cost == "circumplex" else 0.0) + seed_effect["rsa"] + rng.normal(0, 0.004),
        "epochs": 6, "train_seconds": 60 + rng.normal(0, 2), "images_per_second": 500 + rng.normal(0, 10),
        "data_order_hash": order,
    }
    derangement = _derangement(k, np.random.default_rng(seed)) if cost == "permuted" else None
    cost_used = {"none": None, "circumplex": true_cost, "uniform": np.where(np.eye(k, dtype=bool), 0.0,
                                                                            true_cost[~np.eye(k, dtype=bool)].mean())}
    used = cost_used.get(cost, true_cost[np.ix_(derangement, derangement)] if derangement else None)
    artifacts = {
        "confusion": {"class_names": list(names), "matrix": confusion.astype(int).tolist()},
        "circumplex": {"class_names": list(names), "centroids": mu.tolist(),
                       "radial_se": (0.008 + 0.02 * (1 - freq / freq.max())).tolist(),
                       "true_cost": true_cost.tolist(),
                       "cost_used": None if used is None else np.asarray(used).tolist(),
                       "cost_variant": cost, "derangement": derangement, "degenerate_pair": list(pair)},
    }
    return row, artifacts


def demo_results(seeds: Sequence[int] = range(6), costs: Sequence[str] = ("none", "circumplex", "permuted", "uniform"),
                 datasets: Sequence[str] = ("affwild2_like",), lams: Sequence[float] = (1.0,), name: str = "demo",
                 rng_seed: int = 0) -> tuple[pd.DataFrame, dict[str, dict]]:
    """The results frame and per-trial artifacts of a synthetic sweep over the given grid."""
    rows, artifacts = [], {}
    for dataset in datasets:
        k = len(DATASETS[dataset][0])
        for seed in seeds:
            rng = np.random.default_rng([rng_seed, seed, len(dataset)])
            seed_effect = {"class": rng.normal(0, 0.02, k), "va": rng.normal(0, 0.008), "au": rng.normal(0, 0.003),
                           "rsa": rng.normal(0, 0.008)}
            for cost in costs:
                for lam in lams:
                    row, art = _trial(dataset, cost, float(lam), int(seed), rng_seed, seed_effect)
                    trial_id = hashlib.sha256(f"{name}|{dataset}|{cost}|{lam}|{seed}".encode()).hexdigest()[:10]
                    rows.append({"trial_id": trial_id, "sweep": name, **row})
                    artifacts[trial_id] = art
    return pd.DataFrame(rows), artifacts


def write_demo_sweep(path, *, name: str = "demo", seeds: Sequence[int] = range(6),
                     costs: Sequence[str] = ("none", "circumplex", "permuted", "uniform"),
                     datasets: Sequence[str] = ("affwild2_like",), lams: Sequence[float] = (1.0,),
                     analysis: dict | None = None, write_trials: bool = True, rng_seed: int = 0) -> Path:
    """Write a synthetic sweep directory ``path`` (created) and return it."""
    import yaml

    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    frame, artifacts = demo_results(seeds, costs, datasets, lams, name, rng_seed)
    grid: dict = {"seed": [int(s) for s in seeds], "method.cost": list(costs)}
    if len(lams) > 1:
        grid["method.lam"] = [float(x) for x in lams]
    if len(datasets) > 1:
        grid["dataset.preset"] = list(datasets)
    spec = {
        "name": name,
        "base": {"dataset": {"name": "synthetic", "preset": datasets[0]}, "backbone": {"name": "resnet18"},
                 "method": {"name": "ot", "lam": float(lams[0])}, "epochs": 6},
        "grid": grid,
        "analysis": analysis if analysis is not None else {
            "baseline": {"method.cost": "none"},
            "primary": [[{"method.cost": "uniform"}, {"method.cost": "circumplex"}]],
            "secondary": [[{"method.cost": "circumplex"}, {"method.cost": "uniform"}]],
            "metrics": ["p_mtl", "expr_f1", "error_severity", "quadrant_keep"],
        },
    }
    # the axis columns are exactly the grid's keys (seed is its own column)
    axes = [k for k in grid if k != "seed"]
    keep = ["trial_id", "sweep", "seed", "status", *axes,
            *[c for c in frame.columns if c not in ("trial_id", "sweep", "seed", "status", "method.cost", "method.lam",
                                                    "dataset.preset")]]
    frame = frame[keep]
    frame.to_parquet(directory / "results.parquet", index=False)
    frame.to_csv(directory / "results.csv", index=False)
    (directory / "sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (directory / "mlflow.json").write_text(json.dumps({"tracking_uri": None, "experiment_id": None,
                                                       "parent_run_id": None}))
    if write_trials:
        for record in frame.to_dict(orient="records"):
            trial = directory / "trials" / record["trial_id"]
            trial.mkdir(parents=True, exist_ok=True)
            clean = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in record.items()}
            (trial / "result.json").write_text(json.dumps(clean))
            for kind, payload in artifacts[record["trial_id"]].items():
                (trial / f"{kind}.json").write_text(json.dumps(payload))
    return directory
