"""AffectNet loader: the manually annotated images with expression and valence-arousal (docs/methods.md §1).

``ROOT/training.csv`` and ``ROOT/validation.csv`` (official split), images under
``ROOT/Manually_Annotated_Images/<subDirectory_filePath>``. Classes 0-7 are kept in AffectNet
order; 8 None, 9 Uncertain and 10 No-Face are dropped (counted in ``df.attrs["load_report"]``).
"""

from __future__ import annotations

import csv
import os

import numpy as np
import pandas as pd

from .errors import DataFormatError, find_missing, missing_images_error
from .labels import AFFECTNET_DROPPED, AFFECTNET_EXPR, AFFECTNET_VA_MISSING, AU_NAMES

SPLIT_FILES = {"train": "training.csv", "val": "validation.csv"}
IMAGE_DIR = "Manually_Annotated_Images"
CSV_HEADER = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
              "facial_landmarks", "expression", "valence", "arousal")
BOX_COLUMNS = ("face_x", "face_y", "face_width", "face_height")
DROPPED_NAMES = {8: "None", 9: "Uncertain", 10: "No-Face"}
_MAX_LABEL = max(AFFECTNET_DROPPED)


def load_affectnet(root: str | os.PathLike, split: str, crop_faces: bool = False,
                   check_images: bool = True) -> pd.DataFrame:
    """Index of the AffectNet ``split`` ("train" or "val") under ``root``.

    One row per kept image: ``path`` (absolute), ``valence``, ``arousal`` (NaN where -2),
    ``expr`` (AffectNet order 0-7), ``AU1 … AU26`` (all NaN: AffectNet has no AU labels),
    ``group`` (the image stem) and ``frame`` (0). With ``crop_faces`` the face box columns
    ``face_x, face_y, face_width, face_height`` are added so the decoder crops the face.
    Malformed lines raise :class:`DataFormatError` naming ``file:line``; with ``check_images`` a
    missing image raises FileNotFoundError naming its path.
    """
    if split not in SPLIT_FILES:
        raise ValueError(f"AffectNet split must be one of {tuple(SPLIT_FILES)}, got {split!r}")
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    csv_path = os.path.join(root, SPLIT_FILES[split])
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"{csv_path}: AffectNet annotation file not found "
                                f"(expected ROOT/{SPLIT_FILES[split]})")
    image_root = os.path.join(root, IMAGE_DIR)

    rel, boxes, expr, va, lines = [], [], [], [], []
    dropped = dict.fromkeys(DROPPED_NAMES.values(), 0)
    with open(csv_path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if line == 1 and _is_header(row, csv_path):
                continue
            if len(row) != len(CSV_HEADER):
                raise DataFormatError(f"expected {len(CSV_HEADER)} columns, got {len(row)}", csv_path, line)
            label = _int(row[6], "expression", csv_path, line)
            if not 0 <= label <= _MAX_LABEL:
                raise DataFormatError(f"unknown expression label {label} (expected 0-{_MAX_LABEL})",
                                      csv_path, line)
            v, a = (_float(row[k], name, csv_path, line) for k, name in ((7, "valence"), (8, "arousal")))
            for name, x in (("valence", v), ("arousal", a)):
                if not (-1.0 <= x <= 1.0 or x == AFFECTNET_VA_MISSING):
                    raise DataFormatError(f"{name} {row[7 if name == 'valence' else 8].strip()} out of range "
                                          f"(expected -1..1, or {AFFECTNET_VA_MISSING:g} for missing)",
                                          csv_path, line)
            box = [_float(row[k], CSV_HEADER[k], csv_path, line) for k in range(1, 5)]
            if label in DROPPED_NAMES:
                dropped[DROPPED_NAMES[label]] += 1
                continue
            if crop_faces and (box[2] <= 0 or box[3] <= 0):
                raise DataFormatError(f"face box {box[2]:g}x{box[3]:g} is empty", csv_path, line)
            rel.append(row[0].strip())
            boxes.append(box)
            expr.append(label)
            va.append((v, a))
            lines.append(line)

    paths = np.array([os.path.join(image_root, p) for p in rel], dtype=object)
    if check_images:
        missing = find_missing(paths)
        if missing:
            raise missing_images_error([(paths[i], f"{csv_path}:{lines[i]}") for i in missing], csv_path)
    va_arr = np.array(va, dtype=np.float32).reshape(-1, 2)
    va_arr[va_arr == AFFECTNET_VA_MISSING] = np.nan
    df = pd.DataFrame({"path": paths, "valence": va_arr[:, 0], "arousal": va_arr[:, 1],
                       "expr": np.array(expr, dtype=np.int64)})
    for name in AU_NAMES:
        df[name] = np.full(len(df), np.nan, dtype=np.float32)
    df["group"] = np.array([os.path.splitext(os.path.basename(p))[0] for p in rel], dtype=object)
    df["frame"] = np.zeros(len(df), dtype=np.int64)
    if crop_faces:
        box_arr = np.array(boxes, dtype=np.float32).reshape(-1, 4)
        for j, name in enumerate(BOX_COLUMNS):
            df[name] = box_arr[:, j]
    df.attrs["label_space"] = "affectnet"
    df.attrs["split"] = split
    df.attrs["root"] = root
    df.attrs["load_report"] = {"annotation_file": csv_path, "rows": len(df) + sum(dropped.values()),
                               "kept": len(df), "dropped_classes": dropped,
                               "class_counts": {AFFECTNET_EXPR[k]: int(c) for k, c in
                                                enumerate(np.bincount(df["expr"], minlength=8))}}
    return df


def _is_header(row: list[str], path: str) -> bool:
    """AffectNet's csv files start with a header; accept a file without one as well."""
    first = row[0].strip().lower()
    if first == CSV_HEADER[0].lower():
        if [c.strip().lower() for c in row] != [c.lower() for c in CSV_HEADER]:
            raise DataFormatError(f"unexpected header {','.join(row)}; expected {','.join(CSV_HEADER)}",
                                  path, 1)
        return True
    return False


def _int(text: str, name: str, path: str, line: int) -> int:
    try:
        x = float(text)
    except ValueError:
        raise DataFormatError(f"non-numeric {name} {text.strip()!r}", path, line) from None
    if not x.is_integer():
        raise DataFormatError(f"{name} {text.strip()} is not an integer", path, line)
    return int(x)


def _float(text: str, name: str, path: str, line: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise DataFormatError(f"non-numeric {name} {text.strip()!r}", path, line) from None
