"""Datasets by name, registered like methods and backbones: adding a dataset touches this file.

A ``Dataset`` entry says what the rest of the code needs to know about one dataset: its label
space, the names of its two splits as its loader calls them (the trainer's "val" is RAF-DB's
"test"), the loader for training and the one for ``affsweep data check``, the layout a root must
have (for messages), what "a group" is (videos or images) and a note on its load report. The
dispatch of ``pipeline.load_split``, ``check.check_dataset``, ``DatasetConfig.name``, the CLI's
``--dataset`` choices and the preflight all read this table.

Loaders are imported when called, so importing the registry is cheap (numpy/pandas only).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from trainers.data.labels import AFFECTNET, AFFWILD2, RAFDB, LabelSpace


@dataclass(frozen=True)
class Dataset:
    name: str
    label_space: LabelSpace | None          # None: decided by the config (synthetic presets)
    splits: tuple[str, str] = ("train", "val")  # (train, held-out) as the loader names them
    load: Callable[..., pd.DataFrame] | None = None   # (root, split, ds) -> index, for training
    load_checked: Callable[[str, str], pd.DataFrame] | None = None  # (root, split) -> index, data check
    layout: str = ""                        # the expected layout, for messages
    group: str = "images"                   # what the ``group`` column counts ("videos" / "images")
    aliases: tuple[str, ...] = ()
    drops_missing_images: bool = False      # the loader skips annotated frames without an image (ABAW)
    note: Callable[[dict], str | None] = lambda report: None  # one line from the loader's load report

    @property
    def needs_root(self) -> bool:
        return self.load is not None

    def loader_split(self, split: str) -> str:
        """The loader's name of the trainer's ``split`` ("train" / "val")."""
        return self.splits[0] if split == "train" else self.splits[1]


DATASETS: dict[str, Dataset] = {}


def register_dataset(entry: Dataset) -> Dataset:
    if entry.name in DATASETS:
        raise ValueError(f"dataset {entry.name!r} registered twice")
    DATASETS[entry.name] = entry
    return entry


def get_dataset(name: str) -> Dataset:
    key = name.lower()
    for entry in DATASETS.values():
        if key == entry.name or key in entry.aliases:
            return entry
    import difflib

    close = difflib.get_close_matches(key, list(DATASETS), n=1)
    hint = f' (did you mean "{close[0]}"?)' if close else f" (choose from {', '.join(DATASETS)})"
    raise ValueError(f"unknown dataset {name!r}{hint}")


def real_datasets() -> list[str]:
    """Names of the datasets read from a root folder (the CLI's ``--dataset`` choices)."""
    return [name for name, entry in DATASETS.items() if entry.needs_root]


def expand_root(root: str) -> str:
    return os.path.abspath(os.path.expandvars(os.path.expanduser(root)))


# --- the datasets ----------------------------------------------------------------------------------

def _affwild2(root, split, ds=None, check_images=True):
    from trainers.data.affwild2 import load_affwild2

    # the official protocol scores every validation frame: every_k subsamples training only
    every_k = getattr(ds, "every_k", 1) if split == "train" else getattr(ds, "val_every_k", 1)
    return load_affwild2(root, split, every_k=every_k, check_images=check_images)


def _affwild2_note(rep: dict) -> str:
    return (f"{rep.get('layout')} layout; {rep.get('annotated_frames', 0)} annotated frames, "
            f"{rep.get('missing_images', 0)} without a cropped image and "
            f"{rep.get('unlabelled_frames', 0)} without any valid label were dropped")


def _affectnet(root, split, ds=None, check_images=True):
    from trainers.data.affectnet import load_affectnet

    return load_affectnet(root, split, crop_faces=getattr(ds, "crop_faces", False), check_images=check_images)


def _affectnet_note(rep: dict) -> str:
    dropped = rep.get("dropped_classes", {})
    return "dropped (not expressions): " + ", ".join(f"{k} {v}" for k, v in dropped.items())


def _rafdb(root, split, ds=None, check_images=True):
    from trainers.data.rafdb import load_rafdb

    return load_rafdb(root, split, check_images=check_images)


register_dataset(Dataset("synthetic", None, layout="drawn in memory (no root)"))
register_dataset(Dataset(
    "affwild2", AFFWILD2, ("train", "val"), load=_affwild2,
    load_checked=lambda root, split: _affwild2(root, split, check_images=True),
    layout="ROOT/cropped_aligned/<video>/<NNNNN>.jpg and the ABAW annotations: per-task "
           "ROOT/[annotations/]{VA_Estimation,EXPR_Recognition,AU_Detection}_Challenge/{Train,Validation}_Set/"
           "<video>.txt or MTL ROOT/[annotations/][MTL_Challenge/]{training,validation}_set_annotations.txt",
    group="videos", aliases=("aff-wild2", "aff_wild2"), drops_missing_images=True, note=_affwild2_note))
register_dataset(Dataset(
    "affectnet", AFFECTNET, ("train", "val"), load=_affectnet,
    load_checked=lambda root, split: _affectnet(root, split, check_images=False),
    layout="ROOT/training.csv, ROOT/validation.csv and ROOT/Manually_Annotated_Images/<dir>/<file>.jpg",
    note=_affectnet_note))
register_dataset(Dataset(
    "rafdb", RAFDB, ("train", "test"), load=_rafdb,
    load_checked=lambda root, split: _rafdb(root, split, check_images=False),
    layout="ROOT/EmoLabel/list_patition_label.txt and ROOT/Image/aligned/<name>_aligned.jpg",
    aliases=("raf-db", "raf_db")))
