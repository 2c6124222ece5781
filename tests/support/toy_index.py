"""A small training index in the loaders' contract whose classes sit at known centroids, and the
MethodContext a method builds its terms from."""

import numpy as np
import pandas as pd

from trainers.data.labels import AFFWILD2, AU_NAMES
from trainers.geometry import estimate_geometry
from trainers.methods import MethodContext

CENTROIDS = np.array([[0.0, 0.0], [-0.5, 0.6], [-0.6, 0.3], [-0.45, 0.65],
                      [0.7, 0.3], [-0.6, -0.4], [0.3, 0.7], [0.0, -0.3]])


def toy_index(n=800, seed=0):
    """An index DataFrame (INDEX CONTRACT) whose classes sit at CENTROIDS, with AU patterns and gaps."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 8, n)
    va = CENTROIDS[y] + 0.1 * rng.standard_normal((n, 2))
    va[rng.random(n) < 0.3] = np.nan
    au_p = rng.uniform(0.05, 0.95, (8, len(AU_NAMES)))
    au = (rng.random((n, len(AU_NAMES))) < au_p[y]).astype(float)
    au[rng.random(n) < 0.2] = np.nan
    expr = np.where(rng.random(n) < 0.1, -1, y)
    df = pd.DataFrame({"valence": va[:, 0], "arousal": va[:, 1], "expr": expr})
    for j, name in enumerate(AU_NAMES):
        df[name] = au[:, j]
    df["group"] = "v0"
    df["frame"] = np.arange(n)
    df["image"] = [None] * n
    return df, y


def make_ctx(df, label_space=AFFWILD2, seed=0, geometry="estimate"):
    counts = np.bincount(df["expr"][df["expr"] >= 0], minlength=label_space.num_classes)
    geo = estimate_geometry(df, label_space, n_boot=100) if geometry == "estimate" else geometry
    return MethodContext(label_space=label_space, train_index=df, class_counts=counts,
                         au_pos_weight=None, geometry=geo, seed=seed)
