"""Aff-Wild2 (ABAW) loader: cropped-aligned frames with VA, EXPR and AU annotations (docs/methods.md §1).

Two annotation layouts are read, whichever the user has:

* multi-task (ABAW MTL) files ``training_set_annotations.txt`` / ``validation_set_annotations.txt``
  (under ROOT, ROOT/MTL_Challenge, ROOT/annotations or ROOT/annotations/MTL_Challenge), one line per
  frame: ``image,valence,arousal,expression,AU1,...,AU26`` with ``image`` like ``video1/00001.jpg``;
* per-task folders ``VA_Estimation_Challenge``, ``EXPR_Recognition_Challenge`` (or
  ``EXPR_Classification_Challenge``) and ``AU_Detection_Challenge`` (under ROOT or ROOT/annotations),
  each with ``Train_Set/`` and ``Validation_Set/`` holding one ``<video>.txt`` per video: a header
  line, then line i describes frame ``{i:05d}.jpg``. The tasks are merged per frame (outer join).

ABAW annotates frames for which no cropped face exists; those frames are dropped and counted in
``df.attrs["load_report"]``, as are frames that carry no valid label for any task.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable

import numpy as np
import pandas as pd

from .errors import DataFormatError, find_missing
from .labels import ABAW_AU_INVALID, ABAW_EXPR, ABAW_EXPR_INVALID, ABAW_VA_INVALID, AU_NAMES

SPLITS = ("train", "val")
MTL_FILES = {"train": "training_set_annotations.txt", "val": "validation_set_annotations.txt"}
MTL_DIRS = (".", "MTL_Challenge", "annotations", os.path.join("annotations", "MTL_Challenge"))
TASK_DIRS = {
    "va": ("VA_Estimation_Challenge",),
    "expr": ("EXPR_Recognition_Challenge", "EXPR_Classification_Challenge"),
    "au": ("AU_Detection_Challenge",),
}
TASK_BASES = (".", "annotations")
SPLIT_DIRS = {"train": "Train_Set", "val": "Validation_Set"}
IMAGE_DIR = "cropped_aligned"
MTL_HEADER = ("image", "valence", "arousal", "expression", *AU_NAMES)
_COLUMN_NAMES = {"va": ("valence", "arousal"), "expr": ("expression",), "au": AU_NAMES}
_LAYOUTS = ("auto", "mtl", "per_task")


def load_affwild2(root: str | os.PathLike, split: str, every_k: int = 1, check_images: bool = True,
                  layout: str = "auto") -> pd.DataFrame:
    """Index of the Aff-Wild2 ``split`` ("train" or "val") under ``root``.

    Returns one row per frame with ``path`` (absolute), ``valence``, ``arousal`` (NaN where the
    annotation is -5 or absent), ``expr`` (ABAW order, -1 missing), ``AU1 … AU26`` (0/1, NaN
    missing), ``group`` (the video name) and ``frame`` (the frame number of ``NNNNN.jpg``), sorted
    by video then frame. ``every_k`` keeps every k-th remaining frame of each video.
    ``check_images`` drops frames whose image file does not exist (ABAW annotates frames without a
    cropped face); with ``check_images=False`` the paths are returned unchecked.
    ``layout`` is "mtl", "per_task", or "auto" (the multi-task files when present).

    Malformed annotation lines raise :class:`DataFormatError` naming ``file:line``.
    """
    if split not in SPLITS:
        raise ValueError(f"Aff-Wild2 split must be one of {SPLITS}, got {split!r}")
    if not isinstance(every_k, (int, np.integer)) or every_k < 1:
        raise ValueError(f"every_k must be a positive integer, got {every_k!r}")
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: Aff-Wild2 root folder not found")
    image_root = os.path.join(root, IMAGE_DIR)
    if check_images and not os.path.isdir(image_root):
        raise FileNotFoundError(f"{image_root}: folder of face crops not found "
                                f"(expected ROOT/{IMAGE_DIR}/<video>/<NNNNN>.jpg)")

    mtl = {s: _find_mtl_file(root, s) for s in SPLITS}
    task_dirs = _find_task_dirs(root, split)
    if layout == "auto":
        layout = "mtl" if any(mtl.values()) else "per_task"
    if layout == "mtl":
        if mtl[split] is None:
            raise FileNotFoundError(_not_found_message(root, split, "mtl"))
        va, expr, au, videos, frames, images, sources = _read_mtl(mtl[split])
    else:
        if not task_dirs:
            raise FileNotFoundError(_not_found_message(root, split, "per_task"))
        va, expr, au, videos, frames, images, sources = _read_per_task(task_dirs)

    report = {"layout": layout, "annotation_sources": sources, "annotated_frames": int(len(frames)),
              "missing_images": 0, "missing_image_examples": [], "videos_without_images": [],
              "unlabelled_frames": 0, "every_k": int(every_k)}
    prefix = image_root + os.sep
    paths = np.array([prefix + p for p in images], dtype=object)
    keep = np.ones(len(paths), dtype=bool)
    if check_images:
        missing = find_missing(paths)
        keep[missing] = False
        report["missing_images"] = len(missing)
        report["missing_image_examples"] = [str(paths[i]) for i in missing[:10]]
        report["videos_without_images"] = [v for v in dict.fromkeys(videos)
                                           if not os.path.isdir(os.path.join(image_root, v))]
    labelled = (~np.isnan(va).all(axis=1)) | (expr >= 0) | (~np.isnan(au).all(axis=1))
    report["unlabelled_frames"] = int((keep & ~labelled).sum())
    keep &= labelled

    df = pd.DataFrame({"path": paths[keep],
                       "valence": va[keep, 0], "arousal": va[keep, 1], "expr": expr[keep]})
    for j, name in enumerate(AU_NAMES):
        df[name] = au[keep, j]
    df["group"] = np.asarray(videos, dtype=object)[keep]
    df["frame"] = np.asarray(frames, dtype=np.int64)[keep]
    df = df.sort_values(["group", "frame"], kind="stable").reset_index(drop=True)
    if every_k > 1:
        df = df[df.groupby("group", sort=False).cumcount() % every_k == 0].reset_index(drop=True)
    df.attrs["label_space"] = "affwild2"
    df.attrs["split"] = split
    df.attrs["root"] = root
    df.attrs["load_report"] = report
    return df


def check_video_disjoint(train_df: pd.DataFrame, val_df: pd.DataFrame, strict: bool = True) -> list[str]:
    """Videos present in both splits (sorted); with ``strict`` an overlap raises DataFormatError.

    Frames of one video are strongly correlated, so a video in both splits leaks the validation
    subject into training (the study's splits are video-disjoint).
    """
    shared = sorted(set(train_df["group"].astype(str)) & set(val_df["group"].astype(str)))
    if shared and strict:
        shown = ", ".join(shared[:10]) + (f" and {len(shared) - 10} more" if len(shared) > 10 else "")
        raise DataFormatError(f"train and val share {len(shared)} video(s): {shown}; "
                              "the splits must be video-disjoint")
    return shared


# --------------------------------------------------------------------------------------- locating


def _find_mtl_file(root: str, split: str) -> str | None:
    for d in MTL_DIRS:
        p = os.path.normpath(os.path.join(root, d, MTL_FILES[split]))
        if os.path.isfile(p):
            return p
    return None


def _find_task_dirs(root: str, split: str) -> dict[str, str]:
    """Task -> folder with the per-video files of ``split``, for the tasks the user has."""
    found = {}
    for task, names in TASK_DIRS.items():
        for base in TASK_BASES:
            for name in names:
                p = os.path.normpath(os.path.join(root, base, name, SPLIT_DIRS[split]))
                if os.path.isdir(p) and task not in found:
                    found[task] = p
    return found


def _not_found_message(root: str, split: str, layout: str) -> str:
    mtl = [os.path.normpath(os.path.join(root, d, MTL_FILES[split])) for d in MTL_DIRS]
    per_task = [os.path.normpath(os.path.join(root, b, n, SPLIT_DIRS[split]))
                for b in TASK_BASES for names in TASK_DIRS.values() for n in names]
    looked = {"mtl": mtl, "per_task": per_task}[layout]
    return (f"no Aff-Wild2 {split} annotations ({layout} layout) under {root}; looked for: "
            + ", ".join(looked))


# --------------------------------------------------------------------------------------- parsing


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        lines = f.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataFormatError("empty file; expected a header line", path, 1)
    return lines


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_header(header: str, names: Iterable[str], path: str, what: str) -> None:
    """The header line must be present and, where it names the columns, name them in our order."""
    fields = [f.strip() for f in header.split(",")]
    if fields and all(_is_number(f) for f in fields if f):
        raise DataFormatError(f"expected a header line ({','.join(names)}), got data; line i after the "
                              "header must describe frame i", path, 1)
    names = tuple(names)
    if len(fields) == len(names) and [f.lower() for f in fields] != [n.lower() for n in names]:
        raise DataFormatError(f"{what} columns are {','.join(fields)}; expected {','.join(names)}", path, 1)


def _parse_numeric(lines: list[str], names: tuple[str, ...], path: str, first_line: int) -> np.ndarray:
    """(n, len(names)) float array of comma-separated ``lines``; a malformed line raises naming it.

    pandas' C parser reads the well-formed files (nearly all of them) fast; anything it rejects
    or reads as missing is re-read line by line to name the first offending line.
    """
    ncols = len(names)
    if not lines:
        return np.empty((0, ncols))
    try:
        values = pd.read_csv(io.StringIO("\n".join(lines)), header=None, dtype=np.float64,
                             skip_blank_lines=False, engine="c").to_numpy()
        if values.shape == (len(lines), ncols) and not np.isnan(values).any():
            return values
    except ValueError:  # ParserError, EmptyDataError and failed float conversion
        pass
    values = np.empty((len(lines), ncols))
    for i, line in enumerate(lines):
        fields = line.split(",")
        if len(fields) == 1 and not fields[0].strip():
            raise DataFormatError(f"empty line; expected {ncols} columns", path, first_line + i)
        if len(fields) != ncols:
            raise DataFormatError(f"expected {ncols} columns, got {len(fields)}", path, first_line + i)
        for j, (name, text) in enumerate(zip(names, fields)):
            try:
                values[i, j] = float(text)
            except ValueError:
                raise DataFormatError(f"non-numeric {name} {text.strip()!r}", path, first_line + i) from None
    return values  # NaN/inf values parse here and fail the range checks with their line


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _validate(task: str, values: np.ndarray, path: str, first_line: int) -> None:
    """Range checks of the ABAW conventions; the first bad row raises naming its line."""
    if task == "va":
        bad = ~((np.abs(values) <= 1.0) | (values == ABAW_VA_INVALID))
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise DataFormatError(f"{_COLUMN_NAMES['va'][j]} {_fmt(values[i, j])} out of range "
                                  f"(expected -1..1, or {_fmt(ABAW_VA_INVALID)} for missing)",
                                  path, first_line + int(i))
    elif task == "expr":
        v = values[:, 0]
        bad = ~((v == np.round(v)) & (v >= ABAW_EXPR_INVALID) & (v < len(ABAW_EXPR)))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataFormatError(f"unknown expression label {_fmt(v[i])} "
                                  f"(expected 0-{len(ABAW_EXPR) - 1}, or {ABAW_EXPR_INVALID} for missing)",
                                  path, first_line + i)
    else:
        bad = ~np.isin(values, (0.0, 1.0, float(ABAW_AU_INVALID)))
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise DataFormatError(f"{AU_NAMES[j]} value {_fmt(values[i, j])} "
                                  f"(expected 0 or 1, or {ABAW_AU_INVALID} for missing)",
                                  path, first_line + int(i))


def _convert(task: str, values: np.ndarray):
    """Sentinels -> NaN / -1 (docs/methods.md §1)."""
    if task == "expr":
        return values[:, 0].astype(np.int64)
    out = values.astype(np.float32)
    out[values == (ABAW_VA_INVALID if task == "va" else ABAW_AU_INVALID)] = np.nan
    return out


def _read_task_file(path: str, task: str) -> np.ndarray:
    lines = _read_lines(path)
    names = ABAW_EXPR if task == "expr" else _COLUMN_NAMES[task]
    _check_header(lines[0], names, path, {"va": "VA", "expr": "expression", "au": "AU"}[task])
    values = _parse_numeric(lines[1:], _COLUMN_NAMES[task], path, first_line=2)
    _validate(task, values, path, first_line=2)
    return _convert(task, values)


def _read_per_task(task_dirs: dict[str, str]):
    """Outer join of the per-task files by (video, frame)."""
    per_video: dict[str, dict[str, np.ndarray]] = {}
    sources = {}
    for task, folder in task_dirs.items():
        sources[task] = folder
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".txt"):
                continue
            video = name[:-4]
            per_video.setdefault(video, {})[task] = _read_task_file(os.path.join(folder, name), task)
    va_parts, expr_parts, au_parts, videos, frames = [], [], [], [], []
    for video in sorted(per_video):
        tasks = per_video[video]
        n = max(len(a) for a in tasks.values())
        va = np.full((n, 2), np.nan, dtype=np.float32)
        expr = np.full(n, -1, dtype=np.int64)
        au = np.full((n, len(AU_NAMES)), np.nan, dtype=np.float32)
        if "va" in tasks:
            va[: len(tasks["va"])] = tasks["va"]
        if "expr" in tasks:
            expr[: len(tasks["expr"])] = tasks["expr"]
        if "au" in tasks:
            au[: len(tasks["au"])] = tasks["au"]
        va_parts.append(va)
        expr_parts.append(expr)
        au_parts.append(au)
        videos.extend([video] * n)
        frames.append(np.arange(1, n + 1, dtype=np.int64))
    if not videos:
        raise FileNotFoundError("no <video>.txt annotation files in " + ", ".join(task_dirs.values()))
    frames = np.concatenate(frames)
    images = [f"{v}/{f:05d}.jpg" for v, f in zip(videos, frames)]
    return (np.concatenate(va_parts), np.concatenate(expr_parts), np.concatenate(au_parts), videos,
            frames, images, sources)


def _read_mtl(path: str):
    lines = _read_lines(path)
    header = [f.strip() for f in lines[0].split(",")]
    if not header or _is_number(header[0]) or "/" in header[0]:
        raise DataFormatError(f"expected a header line ({','.join(MTL_HEADER)}), got data", path, 1)
    if len(header) == len(MTL_HEADER) and [h.lower() for h in header[4:]] != [a.lower() for a in AU_NAMES]:
        raise DataFormatError(f"AU columns are {','.join(header[4:])}; expected {','.join(AU_NAMES)}",
                              path, 1)
    body = lines[1:]
    ncols = len(MTL_HEADER)
    table = None
    if body:
        try:  # fast path: pandas' C parser; anything odd is re-read line by line below
            table = pd.read_csv(io.StringIO("\n".join(body)), header=None, skip_blank_lines=False,
                                dtype={0: str, **dict.fromkeys(range(1, ncols), np.float64)},
                                na_filter=False, engine="c")
            if table.shape != (len(body), ncols) or np.isnan(table.iloc[:, 1:].to_numpy()).any():
                table = None
        except ValueError:
            table = None
    if table is not None:
        images = table[0].str.strip()
        values = table.iloc[:, 1:].to_numpy(dtype=np.float64)
    else:
        for i, line in enumerate(body):
            if line.count(",") != ncols - 1:
                raise DataFormatError(f"expected {ncols} columns, got {line.count(',') + 1}", path, i + 2)
        split = [line.split(",", 1) for line in body]
        images = pd.Series([parts[0].strip() for parts in split], dtype=object)
        values = _parse_numeric([parts[1] for parts in split], MTL_HEADER[1:], path, first_line=2)
    _validate("va", values[:, 0:2], path, 2)
    _validate("expr", values[:, 2:3], path, 2)
    _validate("au", values[:, 3:], path, 2)
    parts = images.str.replace("\\", "/", regex=False).str.extract(r"^(.+)/(\d+)\.[^./]+$")
    bad = parts[0].isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataFormatError(f"image {images.iloc[i]!r} is not of the form <video>/<NNNNN>.jpg", path, i + 2)
    dup = images.duplicated(keep="first").to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero((images == images.iloc[i]).to_numpy())[0])
        raise DataFormatError(f"duplicate image {images.iloc[i]!r} (first at line {first + 2})", path, i + 2)
    videos = parts[0].tolist()
    frames = parts[1].astype(np.int64).to_numpy()
    images = images.tolist()
    return (_convert("va", values[:, 0:2]), _convert("expr", values[:, 2:3]), _convert("au", values[:, 3:]),
            videos, frames, images, {"mtl": path})
