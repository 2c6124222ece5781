"""A sweep directory built by hand in the results contract (6 seeds x 3 costs), for the report tests."""

import json

import numpy as np
import pandas as pd
import yaml

CLASSES = ["Neutral", "Anger", "Fear", "Happy"]
CENTROIDS = np.array([[0.0, 0.0], [-0.5, 0.6], [-0.45, 0.62], [0.7, 0.3]])
COSTS = ("none", "circumplex", "uniform")
SEEDS = range(6)
# mean per-class F1 change of the circumplex over the base in every seed
DELTA_F1 = {"Neutral": 0.02, "Anger": -0.01, "Fear": 0.0, "Happy": 0.03}
ANALYSIS = {"baseline": {"method.cost": "none"},
            "primary": [{"contrast": [{"method.cost": "uniform"}, {"method.cost": "circumplex"}], "metric": "p_mtl"}],
            "families": {"f": [{"contrast": [{"method.cost": "circumplex"}, {"method.cost": "none"}],
                                "metrics": ["p_mtl", "error_severity"]},
                               {"contrast": [{"method.cost": "circumplex"}, {"method.cost": "uniform"}],
                                "metric": "error_severity"}]},
            "exploratory": ["p_mtl", "expr_f1", "error_severity"], "n_resamples": 2000}


def build_sweep(directory, drop=(), tamper=()):
    """A 6-seed x 3-cost sweep; ``drop`` trial ids are missing, ``tamper`` ones get a wrong data order."""
    cost = np.linalg.norm(CENTROIDS[:, None] - CENTROIDS[None], axis=-1)
    rows = []
    for seed in SEEDS:
        class_f1 = {c: 0.4 + 0.01 * seed + 0.05 * i for i, c in enumerate(CLASSES)}
        for kind in COSTS:
            trial_id = f"{kind}-{seed}"
            if trial_id in drop:
                continue
            f1 = {c: v + (DELTA_F1[c] if kind != "none" else 0.0) for c, v in class_f1.items()}
            confusion = np.array([[50, 5, 3, 2], [6, 10, 8, 6], [4, 9, 12, 5], [3, 2, 1, 60]]) + seed
            if kind == "circumplex":  # anger's far confusion with happy moves to fear
                confusion[1, 3], confusion[1, 2] = confusion[1, 3] - 4, confusion[1, 2] + 4
            rows.append({"trial_id": trial_id, "sweep": "hand", "seed": seed, "status": "done", "method.cost": kind,
                         "p_mtl": 1.2 + 0.002 * seed + 0.01 * (kind != "none"), "va_ccc": 0.44,
                         "expr_f1": float(np.mean(list(f1.values()))), "au_f1": 0.49,
                         **{f"expr_f1/{c}": v for c, v in f1.items()},
                         "error_severity": 0.5 - 0.02 * (kind == "circumplex") + 0.001 * seed, "quadrant_keep": 0.4,
                         "rsa_rho": 0.16 + 0.01 * (kind == "circumplex") + 0.001 * seed,
                         "data_order_hash": "tampered" if trial_id in tamper else f"order-{seed}"})
            trial = directory / "trials" / trial_id
            trial.mkdir(parents=True)
            (trial / "confusion.json").write_text(json.dumps({"class_names": CLASSES, "matrix": confusion.tolist()}))
            (trial / "circumplex.json").write_text(json.dumps({
                "class_names": CLASSES, "centroids": CENTROIDS.tolist(), "radial_se": [0.01, 0.02, 0.03, 0.01],
                "true_cost": cost.tolist(), "cost_used": None if kind == "none" else cost.tolist(),
                "cost_variant": kind, "derangement": None, "degenerate_pair": [1, 2]}))
    frame = pd.DataFrame(rows)
    frame.to_parquet(directory / "results.parquet", index=False)
    frame.to_csv(directory / "results.csv", index=False)
    (directory / "sweep.yaml").write_text(yaml.safe_dump({"name": "hand", "grid": {"seed": list(SEEDS),
                                                                                   "method.cost": list(COSTS)},
                                                         "analysis": ANALYSIS}))
    (directory / "mlflow.json").write_text(json.dumps({"tracking_uri": "http://127.0.0.1:9", "experiment_id": "0",
                                                       "parent_run_id": "0" * 32}))
    return directory
