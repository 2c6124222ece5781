"""RAF-DB (basic) loader: aligned faces with seven expression labels mapped into AffectNet order.

``ROOT/EmoLabel/list_patition_label.txt`` (sic, the official name) lists ``train_00001.jpg 5`` /
``test_0001.jpg 3``; the aligned image of ``train_00001.jpg`` is
``ROOT/Image/aligned/train_00001_aligned.jpg``. Labels 1-7 (Surprise, Fear, Disgust, Happiness,
Sadness, Anger, Neutral) are mapped with ``labels.RAFDB_TO_AFFECTNET`` (docs/methods.md §1).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from .errors import DataFormatError, find_missing, missing_images_error
from .labels import AFFECTNET_EXPR, AU_NAMES, RAFDB_EXPR, RAFDB_TO_AFFECTNET

LABEL_FILE = os.path.join("EmoLabel", "list_patition_label.txt")
IMAGE_DIR = os.path.join("Image", "aligned")
SPLITS = ("train", "test")
# RAF-DB has no validation split; the test split is what the literature evaluates on.
SPLIT_ALIASES = {"val": "test"}


def rafdb_partition(root: str | os.PathLike) -> pd.DataFrame:
    """The whole partition file as a DataFrame ``name, split, label (1-7), line``."""
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    path = os.path.join(root, LABEL_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: RAF-DB label file not found (expected ROOT/{LABEL_FILE})")
    names, splits, labels, lines = [], [], [], []
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise DataFormatError(f"expected 2 fields (image label), got {len(fields)}", path, line_no)
            name, text = fields
            split = name.split("_", 1)[0]
            if split not in SPLITS or "_" not in name:
                raise DataFormatError(f"image name {name!r} does not start with train_ or test_",
                                      path, line_no)
            try:
                label = int(text)
            except ValueError:
                raise DataFormatError(f"label {text!r} is not an integer (expected 1-{len(RAFDB_EXPR)})",
                                      path, line_no) from None
            if label not in RAFDB_TO_AFFECTNET:
                raise DataFormatError(f"unknown label {label} (expected 1-{len(RAFDB_EXPR)})", path, line_no)
            names.append(name)
            splits.append(split)
            labels.append(label)
            lines.append(line_no)
    part = pd.DataFrame({"name": names, "split": splits, "label": np.array(labels, dtype=np.int64),
                         "line": np.array(lines, dtype=np.int64)})
    dup = part["name"].duplicated()
    if dup.any():
        row = part[dup].iloc[0]
        first = int(part.loc[part["name"] == row["name"], "line"].iloc[0])
        raise DataFormatError(f"duplicate image {row['name']!r} (first at line {first})",
                              path, int(row["line"]))
    part.attrs["path"] = path
    return part


def load_rafdb(root: str | os.PathLike, split: str, check_images: bool = True) -> pd.DataFrame:
    """Index of the RAF-DB ``split`` ("train" or "test"; "val" means "test") under ``root``.

    One row per image: ``path`` (the aligned image, absolute), ``valence``/``arousal`` (NaN, RAF-DB
    has no VA), ``expr`` (AffectNet order via ``RAFDB_TO_AFFECTNET``; contempt never occurs),
    ``AU1 … AU26`` (NaN), ``group`` (the image stem, e.g. ``train_00001``) and ``frame`` (0).
    Malformed lines raise :class:`DataFormatError` naming ``file:line``; with ``check_images`` a
    missing image raises FileNotFoundError naming its path.
    """
    split = SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise ValueError(f"RAF-DB split must be one of {SPLITS}, got {split!r}")
    part = rafdb_partition(root)
    label_file = part.attrs["path"]
    root = os.path.dirname(os.path.dirname(label_file))
    part = part[part["split"] == split].reset_index(drop=True)
    stems = [os.path.splitext(n)[0] for n in part["name"]]
    paths = np.array([os.path.join(root, IMAGE_DIR, f"{s}_aligned.jpg") for s in stems], dtype=object)
    if check_images:
        missing = find_missing(paths)
        if missing:
            raise missing_images_error([(paths[i], f"{label_file}:{part['line'][i]}") for i in missing],
                                       label_file)
    n = len(part)
    df = pd.DataFrame({"path": paths, "valence": np.full(n, np.nan, dtype=np.float32),
                       "arousal": np.full(n, np.nan, dtype=np.float32),
                       "expr": part["label"].map(RAFDB_TO_AFFECTNET).to_numpy(dtype=np.int64)})
    for name in AU_NAMES:
        df[name] = np.full(n, np.nan, dtype=np.float32)
    df["group"] = np.array(stems, dtype=object)
    df["frame"] = np.zeros(n, dtype=np.int64)
    df.attrs["label_space"] = "rafdb"
    df.attrs["split"] = split
    df.attrs["root"] = root
    df.attrs["load_report"] = {"annotation_file": label_file, "rows": n,
                               "class_counts": {AFFECTNET_EXPR[k]: int(c) for k, c in
                                                enumerate(np.bincount(df["expr"], minlength=8))}}
    return df
