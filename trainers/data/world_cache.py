"""The synthetic world drawn once per node: every trial process on the node maps the same files.

``synthetic(...)`` is deterministic in (preset, n, seed, image_size, separability), so its output is
cached under a key of exactly those values (and of the generator's source) in a node-local
directory (``$AFFSWEEP_WORLD_CACHE``, default ``~/.cache/affsweep/worlds``): the images as one
``.npy`` file opened as a read-only memory map (the page cache holds one copy for all processes),
the labels as a pickled DataFrame (dtypes round-trip exactly). The first process to need a world
draws it and publishes it atomically (a temporary directory renamed into place); a process that
loses the race uses the winner's copy.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd


def _generator_digest() -> str:
    """The generator's own source: a changed synthetic.py never serves a stale world."""
    module = importlib.import_module("trainers.data.synthetic")
    return hashlib.sha256(Path(module.__file__).read_bytes()).hexdigest()[:16]


def world_cache_dir() -> Path:
    return Path(os.path.expandvars(os.path.expanduser(os.environ.get("AFFSWEEP_WORLD_CACHE",
                                                                     "~/.cache/affsweep/worlds"))))


def world_key(preset: str, n: int, seed: int, image_size: int, separability: float | None) -> str:
    values = {"preset": preset, "n": int(n), "seed": int(seed), "image_size": int(image_size),
              "separability": None if separability is None else float(separability),
              "generator": _generator_digest()}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def shared_synthetic(preset: str, n: int, seed: int, image_size: int = 64,
                     separability: float | None = None, cache_dir: Path | None = None) -> pd.DataFrame:
    """``synthetic(...)``, drawn at most once per cache directory; images are memory-mapped views."""
    root = Path(cache_dir) if cache_dir is not None else world_cache_dir()
    final = root / world_key(preset, n, seed, image_size, separability)
    if not (final / "labels.pkl").is_file():
        synthetic = importlib.import_module("trainers.data.synthetic").synthetic
        world = synthetic(preset, n=n, seed=seed, image_size=image_size, separability=separability)
        try:
            _publish(world, root, final)
        except OSError:  # a read-only or full cache directory: the drawn world still serves this trial
            return world
    return _open(final)


def _publish(world: pd.DataFrame, root: Path, final: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        np.save(tmp / "images.npy", np.stack(world["image"].to_list()))
        labels = world.drop(columns="image")
        pd.to_pickle({"labels": labels, "attrs": dict(world.attrs)}, tmp / "labels.pkl")
        try:
            os.rename(tmp, final)  # atomic; fails if another process published first
        except OSError:
            if not (final / "labels.pkl").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _open(final: Path) -> pd.DataFrame:
    stored = pd.read_pickle(final / "labels.pkl")
    images = np.load(final / "images.npy", mmap_mode="r")
    labels: pd.DataFrame = stored["labels"]
    df = pd.concat([pd.DataFrame({"image": pd.Series(list(images), dtype=object)}), labels], axis=1)
    df.attrs.update(stored["attrs"])
    return df
