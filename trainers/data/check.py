"""``affsweep data check``: is a dataset root complete and well-formed before anything trains?

``check_dataset(root, dataset)`` loads every split with the real loader, counts examples per
split, class and task, opens every image with PIL, and checks that the splits are disjoint
(videos for Aff-Wild2, images otherwise). It never raises on bad data: everything found is listed
in the report, ``report.ok`` is False when anything would make training wrong or crash.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from PIL import Image

from .errors import DataFormatError, find_missing
from .labels import AU_NAMES
from .registry import get_dataset, real_datasets


@dataclass
class SplitSummary:
    """What one split holds."""

    name: str
    n: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    valid: dict[str, int] = field(default_factory=dict)       # task -> examples with a valid label
    groups: int = 0                                           # videos (Aff-Wild2) or images
    missing_images: list[str] = field(default_factory=list)
    n_missing: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    n_unreadable: int = 0
    notes: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class DataCheckReport:
    """Result of :func:`check_dataset`; ``problems`` is what makes ``ok`` False."""

    dataset: str
    root: str
    splits: dict[str, SplitSummary] = field(default_factory=dict)
    overlap: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self, max_listed: int = 10) -> str:
        lines = [f"{self.dataset} at {self.root}"]
        for s in self.splits.values():
            if s.error is not None:
                lines.append(f"  {s.name}: could not be loaded")
                continue
            videos = f" in {s.groups} videos" if get_dataset(self.dataset).group == "videos" else ""
            lines.append(f"  {s.name}: {s.n} examples{videos}")
            if s.valid:
                lines.append("    valid labels: " + ", ".join(f"{t} {c}" for t, c in s.valid.items()))
            if s.per_class:
                width = max(len(k) for k in s.per_class)
                for name, c in s.per_class.items():
                    share = c / max(1, s.valid.get("EXPR", s.n))
                    lines.append(f"    {name:<{width}} {c:>8}  {share:6.1%}")
            for note in s.notes:
                lines.append(f"    note: {note}")
            if s.n_missing:
                lines.append(f"    missing images: {s.n_missing}")
                lines += [f"      {p}" for p in s.missing_images[:max_listed]]
                if s.n_missing > max_listed:
                    lines.append(f"      ... and {s.n_missing - max_listed} more")
            if s.n_unreadable:
                lines.append(f"    unreadable images: {s.n_unreadable}")
                lines += [f"      {p}: {why}" for p, why in s.unreadable[:max_listed]]
                if s.n_unreadable > max_listed:
                    lines.append(f"      ... and {s.n_unreadable - max_listed} more")
        for note in self.notes:
            lines.append(f"  note: {note}")
        if self.problems:
            lines.append(f"PROBLEMS ({len(self.problems)}):")
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines.append("OK")
        return "\n".join(lines)


def check_dataset(root: str | os.PathLike, dataset: str, open_images: bool = True,
                  num_workers: int | None = None, progress: bool = False) -> DataCheckReport:
    """Check the dataset ``dataset`` ("affwild2", "affectnet" or "rafdb") under ``root``.

    ``open_images`` decodes every image with PIL (threads; a reduced-scale JPEG decode, which still
    catches truncated and corrupt files); without it only existence is checked.
    """
    entry = get_dataset(dataset)
    if not entry.needs_root:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {tuple(real_datasets())}")
    name = entry.name
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    report = DataCheckReport(dataset=name, root=root)
    if not os.path.isdir(root):
        report.problems.append(f"{root}: folder not found")
        return report
    splits = entry.splits
    space = entry.label_space
    frames = {}
    for split in splits:
        summary = SplitSummary(split)
        report.splits[split] = summary
        try:
            df = entry.load_checked(root, split)
        except (DataFormatError, FileNotFoundError, ValueError) as e:
            summary.error = str(e)
            report.problems.append(f"{split}: {e}")
            continue
        frames[split] = df
        _summarise(df, summary, space, entry)
        for v in df.attrs["load_report"].get("videos_without_images", []):
            report.problems.append(f"{split}: video {v} is annotated but "
                                   f"{os.path.join(root, 'cropped_aligned', v)} does not exist")
        _check_images(df, summary, report, open_images, num_workers, progress)
        if summary.n == 0:
            report.problems.append(f"{split}: no examples")
    if len(frames) == 2:
        a, b = (frames[s] for s in splits)
        key = "group" if entry.group == "videos" else "path"
        report.overlap = sorted(set(a[key].astype(str)) & set(b[key].astype(str)))
        if report.overlap:
            what = entry.group
            shown = ", ".join(report.overlap[:10]) + (" ..." if len(report.overlap) > 10 else "")
            report.problems.append(f"{splits[0]} and {splits[1]} share {len(report.overlap)} {what}: {shown}")
    return report


def _summarise(df: pd.DataFrame, s: SplitSummary, space, entry) -> None:
    s.n = len(df)
    s.groups = int(df["group"].nunique())
    expr = df["expr"].to_numpy()
    counts = np.bincount(expr[expr >= 0], minlength=space.num_classes)
    s.per_class = {space.class_names[k]: int(counts[k]) for k in space.scored_classes}
    if space.has_va:
        s.valid["VA"] = int((~df[["valence", "arousal"]].isna().any(axis=1)).sum())
    s.valid["EXPR"] = int((expr >= 0).sum())
    if space.has_au:
        s.valid["AU"] = int((~df[list(AU_NAMES)].isna().all(axis=1)).sum())
    rep = df.attrs.get("load_report", {})
    note = entry.note(rep)
    if note:
        s.notes.append(note)
    for task in ("VA", "EXPR", "AU"):
        if task in s.valid and s.valid[task] == 0 and s.n:
            s.notes.append(f"no valid {task} label in this split")
    empty = [k for k in space.scored_classes if counts[k] == 0]
    if empty and s.valid["EXPR"]:
        s.notes.append("classes without examples: " + ", ".join(space.class_names[k] for k in empty))


def _check_images(df: pd.DataFrame, s: SplitSummary, report: DataCheckReport, open_images: bool,
                  num_workers: int | None, progress: bool) -> None:
    paths = df["path"].astype(str).tolist()
    missing = find_missing(paths)
    s.n_missing = len(missing)
    s.missing_images = [paths[i] for i in missing[:100]]
    if missing:
        report.problems.append(f"{s.name}: {len(missing)} missing image(s), e.g. {paths[missing[0]]}")
    if not open_images:
        return
    gone = set(missing)
    todo = [p for i, p in enumerate(paths) if i not in gone]
    workers = num_workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_try_open, todo, chunksize=64)
        if progress:
            from tqdm.auto import tqdm

            results = tqdm(results, total=len(todo), unit="img", desc=f"opening {s.name} images")
        bad = [(p, why) for p, why in zip(todo, results) if why is not None]
    s.n_unreadable = len(bad)
    s.unreadable = bad[:100]
    if bad:
        report.problems.append(f"{s.name}: {len(bad)} unreadable image(s), e.g. {bad[0][0]}: {bad[0][1]}")


def _try_open(path: str) -> str | None:
    """None if PIL decodes ``path``, else why not."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (32, 32))  # decoding at 1/8 scale still reads every byte
            img.load()
        return None
    except Exception as e:  # any failure to decode is what we report
        return f"{type(e).__name__}: {str(e).replace(repr(path), '').strip()}"
