"""Tiny dataset trees in the official layouts, with known label content (importable by any test).

Each ``make_*_tree`` writes real (small) JPEGs with PIL and the annotation files exactly as the
datasets ship them, and returns a :class:`FixtureTree` whose ``expected[split]`` is the index the
loader must return, computed here from the generating formulas (not by the loader's code).
``files`` names every annotation file written, so a test can corrupt one line with
:func:`replace_line`; ``missing`` / ``unreadable`` options leave images out or write garbage.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

AU = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26")
ABAW_EXPR_HEADER = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"
AFFECTNET_HEADER = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,"
                    "expression,valence,arousal")
# RAF-DB 1..7 -> AffectNet order, by class name (docs/methods.md §1), written out independently of labels.py
RAF_NAMES = ("Surprise", "Fear", "Disgust", "Happy", "Sad", "Anger", "Neutral")
AFFECTNET_NAMES = ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt")
COLUMNS = ("path", "valence", "arousal", "expr", *AU, "group", "frame")


@dataclass
class FixtureTree:
    root: Path
    expected: dict[str, pd.DataFrame]
    files: dict[str, Path] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def replace_line(path: str | os.PathLike, line: int, text: str) -> None:
    """Replace 1-based ``line`` of a text file by ``text``."""
    lines = Path(path).read_text().splitlines()
    lines[line - 1] = text
    Path(path).write_text("\n".join(lines) + "\n")


def write_image(path: str | os.PathLike, seed: int, size: tuple[int, int] = (24, 24)) -> None:
    """A small RGB JPEG whose content depends on ``seed`` (so decoded images differ)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    r = (xx * 255 // max(1, w - 1) + seed * 37) % 256
    g = (yy * 255 // max(1, h - 1) + seed * 91) % 256
    b = ((xx + yy) * 7 + seed * 13) % 256
    arr = np.stack([r, g, b], axis=-1).astype(np.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=90)


def write_garbage(path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(b"this is not a JPEG\x00\x01\x02")


def _frame_from_columns(cols: dict) -> pd.DataFrame:
    df = pd.DataFrame({c: cols[c] for c in COLUMNS})
    for c in ("valence", "arousal", *AU):
        df[c] = df[c].astype(np.float32)
    df["expr"] = df["expr"].astype(np.int64)
    df["frame"] = df["frame"].astype(np.int64)
    return df


# ------------------------------------------------------------------------------------- Aff-Wild2


def abaw_labels(vi: int, f: int) -> tuple[tuple[float, float] | None, int, tuple[int, ...] | None]:
    """Label content of frame ``f`` of the ``vi``-th video: (VA or None, EXPR or -1, AUs or None)."""
    va = None if f % 5 == 0 else (((vi * 5 + f) % 11 - 5) / 5, ((vi * 3 + 2 * f) % 11 - 5) / 5)
    expr = -1 if f % 4 == 0 else (vi + f) % 8
    au = None if f % 6 == 3 else tuple(int((vi + f + j) % 3 == 0) for j in range(12))
    return va, expr, au


def make_affwild2_tree(root: str | os.PathLike, layout: str = "per_task",
                       videos: dict[str, list[str]] | None = None, frames: int = 6,
                       missing_frames: dict[str, Iterable[int]] | None = None,
                       annotations_dir: str = "", expr_dir: str = "EXPR_Recognition_Challenge",
                       image_size: int = 24) -> FixtureTree:
    """Aff-Wild2 tree: ``cropped_aligned/<video>/<NNNNN>.jpg`` and annotations in ``layout``.

    Label content is :func:`abaw_labels`. In the per-task layout the first video of each split has
    an EXPR file two lines short (its last two frames lack EXPR) and the last train video has no AU
    file, so the outer join is exercised. ``missing_frames`` (video -> frame numbers) are annotated
    but get no image; default: the last frame of the first train video. ``annotations_dir`` is
    where the annotation files go ("" = ROOT; e.g. "annotations" or, for MTL, "MTL_Challenge").
    """
    root = Path(root)
    videos = videos or {"train": ["video1", "video2", "video3"], "val": ["video4", "video5"]}
    if missing_frames is None:
        missing_frames = {videos["train"][0]: [frames]}
    missing = {v: set(fs) for v, fs in missing_frames.items()}
    ann = root / annotations_dir
    tree = FixtureTree(root=root, expected={}, info={"missing_images": {}, "unlabelled": {}})
    all_videos = [v for s in ("train", "val") for v in videos.get(s, [])]
    for split in ("train", "val"):
        cols = {c: [] for c in COLUMNS}
        mtl_lines = ["image,valence,arousal,expression," + ",".join(AU)]
        n_missing = n_unlabelled = 0
        for pos, video in enumerate(videos.get(split, [])):
            vi = all_videos.index(video)
            expr_len = frames - 2 if (layout == "per_task" and pos == 0) else frames
            has_au = not (layout == "per_task" and split == "train" and pos == len(videos[split]) - 1
                          and len(videos[split]) > 1)
            va_lines, expr_lines, au_lines = ["valence,arousal"], [ABAW_EXPR_HEADER], [",".join(AU)]
            for f in range(1, frames + 1):
                va, expr, au = abaw_labels(vi, f)
                va_lines.append("-5,-5" if va is None else f"{va[0]:.1f},{va[1]:.1f}")
                expr_lines.append(str(expr))
                au_lines.append(",".join(["-1"] * 12 if au is None else map(str, au)))
                mtl_lines.append(f"{video}/{f:05d}.jpg,{va_lines[-1]},{expr},{au_lines[-1]}")
                if f in missing.get(video, ()):
                    n_missing += 1
                else:
                    write_image(root / "cropped_aligned" / video / f"{f:05d}.jpg", vi * 1000 + f,
                                (image_size, image_size))
                # what the loader must return for this frame
                expr_seen = expr if f <= expr_len else -1
                au_seen = au if has_au else None
                if va is None and expr_seen < 0 and au_seen is None:
                    n_unlabelled += f not in missing.get(video, ())
                    continue
                if f in missing.get(video, ()):
                    continue
                cols["path"].append(str((root / "cropped_aligned" / video / f"{f:05d}.jpg").absolute()))
                cols["valence"].append(np.nan if va is None else va[0])
                cols["arousal"].append(np.nan if va is None else va[1])
                cols["expr"].append(expr_seen)
                for j, name in enumerate(AU):
                    cols[name].append(np.nan if au_seen is None else au_seen[j])
                cols["group"].append(video)
                cols["frame"].append(f)
            if layout == "per_task":
                split_dir = {"train": "Train_Set", "val": "Validation_Set"}[split]
                for task, lines, folder, keep in (("VA", va_lines, "VA_Estimation_Challenge", True),
                                                  ("EXPR", expr_lines[: expr_len + 1], expr_dir, True),
                                                  ("AU", au_lines, "AU_Detection_Challenge", has_au)):
                    if not keep:
                        continue
                    path = ann / folder / split_dir / f"{video}.txt"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("\n".join(lines) + "\n")
                    tree.files[f"{task}/{split}/{video}"] = path
        if layout == "mtl":
            name = {"train": "training_set_annotations.txt", "val": "validation_set_annotations.txt"}[split]
            path = ann / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(mtl_lines) + "\n")
            tree.files[f"MTL/{split}"] = path
        df = _frame_from_columns(cols).sort_values(["group", "frame"]).reset_index(drop=True)
        tree.expected[split] = df
        tree.info["missing_images"][split] = n_missing
        tree.info["unlabelled"][split] = n_unlabelled
    return tree


# ------------------------------------------------------------------------------------- AffectNet


def affectnet_row(i: int, split: str) -> dict:
    """Content of row ``i``: classes cycle 0..10 (8-10 are dropped), some VA missing (-2)."""
    label = i % 11
    missing_va = label >= 8 or i % 6 == 5
    return {
        "sub": f"{1 + i % 3}/{split[0]}{i:04d}.jpg",
        "box": (2 + i % 3, 1 + i % 2, 16 + i % 5, 18),
        "expression": label,
        "valence": -2.0 if missing_va else ((i * 7) % 21 - 10) / 10,
        "arousal": -2.0 if missing_va else ((i * 5) % 21 - 10) / 10,
    }


def make_affectnet_tree(root: str | os.PathLike, n: int = 22, n_val: int = 11,
                        missing: Iterable[tuple[str, int]] = (), unreadable: Iterable[tuple[str, int]] = (),
                        image_size: tuple[int, int] = (32, 28)) -> FixtureTree:
    """AffectNet tree: ``training.csv``/``validation.csv`` and ``Manually_Annotated_Images/``.

    ``missing`` / ``unreadable``: (split, row) pairs whose image is not written / is garbage.
    Row i of a split is written on csv line i + 2 (after the header).
    """
    root = Path(root)
    missing, unreadable = set(missing), set(unreadable)
    tree = FixtureTree(root=root, expected={}, info={"dropped": {}})
    for split, count, fname in (("train", n, "training.csv"), ("val", n_val, "validation.csv")):
        lines = [AFFECTNET_HEADER]
        cols = {c: [] for c in COLUMNS}
        boxes = []
        for i in range(count):
            r = affectnet_row(i, split)
            x, y, w, h = r["box"]
            landmarks = ";".join(f"{(i + k) % 24}.{k % 10}" for k in range(10))
            lines.append(f'{r["sub"]},{x},{y},{w},{h},"{landmarks}",{r["expression"]},'
                         f'{r["valence"]},{r["arousal"]}')
            image = root / "Manually_Annotated_Images" / r["sub"]
            if (split, i) in unreadable:
                write_garbage(image)
            elif (split, i) not in missing:
                write_image(image, i + (0 if split == "train" else 500), image_size)
            if r["expression"] >= 8:
                continue
            cols["path"].append(str(image.absolute()))
            cols["valence"].append(np.nan if r["valence"] == -2 else r["valence"])
            cols["arousal"].append(np.nan if r["arousal"] == -2 else r["arousal"])
            cols["expr"].append(r["expression"])
            for name in AU:
                cols[name].append(np.nan)
            cols["group"].append(Path(r["sub"]).stem)
            cols["frame"].append(0)
            boxes.append(r["box"])
        path = root / fname
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        tree.files[split] = path
        tree.expected[split] = _frame_from_columns(cols)
        tree.info.setdefault("boxes", {})[split] = np.array(boxes, dtype=np.float32).reshape(-1, 4)
        tree.info["dropped"][split] = sum(1 for i in range(count) if i % 11 >= 8)
    return tree


# ------------------------------------------------------------------------------------- RAF-DB


def make_rafdb_tree(root: str | os.PathLike, n: int = 14, n_test: int = 7,
                    missing: Iterable[str] = (), unreadable: Iterable[str] = ()) -> FixtureTree:
    """RAF-DB tree: ``EmoLabel/list_patition_label.txt`` and ``Image/aligned/<stem>_aligned.jpg``.

    Labels cycle 1..7; the train lines come first (line i + 1 is ``train_{i+1:05d}.jpg``), then
    the test lines. ``missing`` / ``unreadable``: stems (e.g. "test_0002") without / with a garbage image.
    """
    root = Path(root)
    missing, unreadable = set(missing), set(unreadable)
    tree = FixtureTree(root=root, expected={})
    lines = []
    for split, count, digits in (("train", n, 5), ("test", n_test, 4)):
        cols = {c: [] for c in COLUMNS}
        for i in range(count):
            stem = f"{split}_{i + 1:0{digits}d}"
            label = 1 + (i + (3 if split == "test" else 0)) % 7
            lines.append(f"{stem}.jpg {label}")
            image = root / "Image" / "aligned" / f"{stem}_aligned.jpg"
            if stem in unreadable:
                write_garbage(image)
            elif stem not in missing:
                write_image(image, i + (0 if split == "train" else 300))
            cols["path"].append(str(image.absolute()))
            cols["valence"].append(np.nan)
            cols["arousal"].append(np.nan)
            cols["expr"].append(AFFECTNET_NAMES.index(RAF_NAMES[label - 1]))
            for name in AU:
                cols[name].append(np.nan)
            cols["group"].append(stem)
            cols["frame"].append(0)
        tree.expected[split] = _frame_from_columns(cols)
    path = root / "EmoLabel" / "list_patition_label.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    tree.files["labels"] = path
    return tree
