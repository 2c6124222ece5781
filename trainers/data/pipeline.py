"""From a dataset config to tensors the loop can consume (docs/design.md §2, docs/methods.md §2).

- ``load_split``: the index of one split (synthetic world split by group; real loaders' splits).
- ``LabelTensors``: labels as tensors with per-task validity masks (sentinels already NaN/-1).
- ``ImageStore``: uint8 images by sample index — in memory, decoded from JPEG, or a decoded cache.
- ``sampler_weights`` / ``epoch_order``: the seeded sample order of one epoch (natural,
  inverse-frequency oversampling, or class-balanced), from the labels as distributed.
- ``matched_seed_hash``: what a seed fixes across the conditions of a sweep (``data_order_hash``).
- ``augment_batch``: flips, colour jitter and normalisation on a uint8 batch, on any device.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from trainers.data.labels import AU_NAMES


def _expand(path: str) -> str:
    return os.path.expandvars(os.path.expanduser(path))


def group_split(index: pd.DataFrame, val_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split by ``group`` so that no video (or image) is in both splits."""
    groups = np.array(sorted(index["group"].unique()))
    rng = np.random.default_rng(seed)
    rng.shuffle(groups)
    n_val = max(1, int(round(val_fraction * len(groups))))
    val_groups = set(groups[:n_val])
    is_val = index["group"].isin(val_groups).to_numpy()
    train, val = index[~is_val].reset_index(drop=True), index[is_val].reset_index(drop=True)
    for part in (train, val):
        part.attrs.update(index.attrs)
    return train, val


def load_split(ds, split: str) -> pd.DataFrame:
    """The index of ``split`` ("train" or "val") for a DatasetConfig, without ``ds.drop_tasks``."""
    index = _load_split(ds, split)
    if ds.drop_tasks:
        index = index.copy()
        if "va" in ds.drop_tasks:
            index[["valence", "arousal"]] = np.nan
        if "expr" in ds.drop_tasks:
            index["expr"] = -1
        if "au" in ds.drop_tasks:
            index[list(AU_NAMES)] = np.nan
    return index


def _load_split(ds, split: str) -> pd.DataFrame:
    if ds.name == "synthetic":
        from trainers.data.world_cache import shared_synthetic  # drawn once per node

        world = shared_synthetic(ds.preset, n=ds.n, seed=ds.seed, image_size=ds.image_size,
                                 separability=ds.separability)
        train, val = group_split(world, ds.val_fraction, seed=ds.seed)
        return train if split == "train" else val
    from trainers.data.registry import get_dataset

    entry = get_dataset(ds.name)
    if ds.root is None:
        raise ValueError(f"dataset.root: required for dataset {ds.name!r}")
    return entry.load(_expand(ds.root), entry.loader_split(split), ds)


def apply_label_noise(index: pd.DataFrame, rate: float, seed: int, classes: int | Sequence[int]) -> pd.DataFrame:
    """Flip exactly round(rate · N_expr) EXPR labels, each uniformly to another of ``classes`` (K, or
    the classes the dataset has: RAF-DB's 7, never AffectNet's Contempt — docs/methods.md §9), from its own
    seed (the protocol of the fusion and Ada-DF papers). Adds a boolean ``noisy`` column."""
    out = index.copy()
    out["noisy"] = False
    if rate <= 0:
        return out
    present = np.arange(classes) if isinstance(classes, int | np.integer) else np.asarray(sorted(classes))
    expr = out["expr"].to_numpy()
    valid = np.flatnonzero(expr >= 0)
    position = np.full(int(max(present.max(), expr.max())) + 1, -1)
    position[present] = np.arange(len(present))
    if (position[expr[valid]] < 0).any():
        absent = sorted(set(expr[valid].tolist()) - set(present.tolist()))
        raise ValueError(f"label noise: labels {absent} are not among the dataset's classes {present.tolist()}")
    rng = np.random.default_rng(seed)
    flip = rng.choice(valid, size=int(round(rate * len(valid))), replace=False)
    shift = rng.integers(1, len(present), size=len(flip))  # never 0: always another present class
    out.loc[flip, "expr"] = present[(position[expr[flip]] + shift) % len(present)]
    out.loc[flip, "noisy"] = True
    return out


@dataclass
class LabelTensors:
    va: torch.Tensor        # (N,2) float, 0 where missing
    va_mask: torch.Tensor   # (N,) bool
    expr: torch.Tensor      # (N,) long, 0 where missing
    expr_mask: torch.Tensor
    au: torch.Tensor        # (N,12) float, NaN where missing
    au_mask: torch.Tensor   # (N,) bool: at least one AU labelled

    @classmethod
    def from_index(cls, index: pd.DataFrame) -> LabelTensors:
        va = index[["valence", "arousal"]].to_numpy(np.float32, copy=True)
        va_mask = ~np.isnan(va).any(1)
        expr = index["expr"].to_numpy(np.int64, copy=True)
        au = index[list(AU_NAMES)].to_numpy(np.float32, copy=True)
        return cls(
            va=torch.from_numpy(np.nan_to_num(va)), va_mask=torch.from_numpy(va_mask),
            expr=torch.from_numpy(np.maximum(expr, 0)), expr_mask=torch.from_numpy(expr >= 0),
            au=torch.from_numpy(au), au_mask=torch.from_numpy(~np.isnan(au).all(1)),
        )

    def batch(self, idx: torch.Tensor, device: torch.device) -> dict:
        """Labels of ``idx`` on ``device``, plus ``n``: per-task valid counts as Python ints (CPU)."""
        out = {k: getattr(self, k)[idx] for k in ("va", "va_mask", "expr", "expr_mask", "au", "au_mask")}
        n = {"va": int(out["va_mask"].sum()), "expr": int(out["expr_mask"].sum()), "au": int(out["au_mask"].sum())}
        out = {k: v.to(device, non_blocking=True) for k, v in out.items()}
        out["n"] = n
        return out


class ImageStore(torch.utils.data.Dataset):
    """uint8 (3,H,W) images by sample index, from memory, JPEG files, or a decoded cache."""

    def __init__(self, index: pd.DataFrame, image_size: int, cache_dir: str | None = None,
                 use_cache: bool = False) -> None:
        self.image_size = image_size
        self.array: np.ndarray | None = None
        self.paths: list[str] | None = None
        self.boxes = index[["face_x", "face_y", "face_width", "face_height"]].to_numpy() \
            if {"face_x", "face_width"} <= set(index.columns) else None
        if "image" in index.columns:
            self.array = np.stack(index["image"].to_list())
            if self.array.shape[1] != image_size:
                self.array = _resize_uint8(self.array, image_size)
        elif use_cache:
            from trainers.data.cache import build_cache, open_cache

            path = build_cache(index, image_size, _expand(cache_dir or "~/.cache/affsweep"))
            self.array = open_cache(path).images
        else:
            self.paths = index["path"].tolist()

    def __len__(self) -> int:
        return len(self.array) if self.array is not None else len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.array is not None:
            img = self.array[i]
        else:
            from trainers.data.cache import decode_image

            box = None if self.boxes is None else tuple(self.boxes[i])
            img = decode_image(self.paths[i], self.image_size, box=box)
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)

    def take(self, idx: np.ndarray) -> torch.Tensor:
        """A whole batch at once (fast path for in-memory and cached images)."""
        if self.array is not None:
            return torch.from_numpy(np.ascontiguousarray(self.array[idx])).permute(0, 3, 1, 2)
        return torch.stack([self[i] for i in idx])


def _resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


SAMPLING = ("inverse_frequency", "natural", "class_balanced")


def oversampling_weights(expr: np.ndarray) -> np.ndarray:
    """Inverse class frequency for EXPR-labelled frames, each class totalling N_expr/K_present;
    frames without an EXPR label keep weight 1 (docs/methods.md §2: rare expressions oversampled)."""
    w = np.ones(len(expr), dtype=np.float64)
    valid = expr >= 0
    if valid.any():
        classes, counts = np.unique(expr[valid], return_counts=True)
        per_class = valid.sum() / (len(classes) * counts)
        lookup = dict(zip(classes.tolist(), per_class.tolist()))
        w[valid] = [lookup[c] for c in expr[valid].tolist()]
    return w


def class_balanced_weights(expr: np.ndarray) -> np.ndarray:
    """EXPR-labelled frames only, each present class totalling 1: every class the same expected
    share of a batch (GReFEL's data refinement, docs/methods.md §11); unlabelled frames are never drawn."""
    expr = np.asarray(expr)
    valid = expr >= 0
    w = np.zeros(len(expr), dtype=np.float64)
    if valid.any():
        counts = np.bincount(expr[valid])
        w[valid] = 1.0 / counts[expr[valid]]
    return w


def sampler_weights(sampling: str, expr: np.ndarray) -> np.ndarray | None:
    """Per-frame sampling weights of a ``sampling`` rule from the EXPR labels *as distributed*
    (before injected noise, docs/methods.md §9); None = natural sampling (a permutation per epoch)."""
    if sampling == "natural":
        return None
    if sampling == "inverse_frequency":
        return oversampling_weights(np.asarray(expr))
    if sampling == "class_balanced":
        return class_balanced_weights(np.asarray(expr))
    raise ValueError(f"unknown sampling {sampling!r} (choose from {', '.join(SAMPLING)})")


def order_rng(seed: int, epoch: int) -> np.random.Generator:
    """The data-order stream of (seed, epoch)."""
    return np.random.default_rng([seed, epoch, 0xDA7A])


def augmentation_generator(seed: int, epoch: int) -> torch.Generator:
    """The augmentation stream of (seed, epoch) (flips, jitter; drawn on the CPU)."""
    return torch.Generator().manual_seed(seed * 7919 + epoch)


def epoch_order(n: int, seed: int, epoch: int, weights: np.ndarray | None) -> np.ndarray:
    """The sample order of one epoch, a pure function of (seed, epoch, weights): the same seed gives
    the same data order in every condition that samples alike (matched seeds, docs/methods.md §7)."""
    rng = order_rng(seed, epoch)
    if weights is None:
        return rng.permutation(n)
    p = weights / weights.sum()
    return rng.choice(n, size=n, replace=True, p=p)


def order_hash(order: np.ndarray) -> str:
    """Hash of a realized sample order (result.json's ``sample_order_hash`` for epoch 1)."""
    return hashlib.sha256(np.asarray(order, dtype=np.int64).tobytes()).hexdigest()[:16]


WORLD_COLUMNS = ("group", "frame", "valence", "arousal", "expr", *AU_NAMES)


def _index_fingerprint(h, index: pd.DataFrame) -> None:
    """Feed the identity of a split into ``h``: its size, frames (group, frame) and labels as
    distributed. Image paths are left out (a root is placement); so is resolution."""
    h.update(f"n={len(index)}".encode())
    for col in WORLD_COLUMNS:
        if col not in index.columns:
            continue
        values = index[col]
        if pd.api.types.is_numeric_dtype(values):
            arr = np.nan_to_num(values.to_numpy(np.float64), nan=-1e300)  # one NaN spelling
            h.update(col.encode() + arr.tobytes())
        else:
            h.update(col.encode() + "\x1f".join(map(str, values.tolist())).encode())


def matched_seed_hash(dataset: str, train: pd.DataFrame, val: pd.DataFrame, seed: int) -> str:
    """What one seed fixes for every condition of a sweep (result.json's ``data_order_hash``).

    The world — dataset name, the train and validation splits (which frames, how many, their labels
    as distributed: injected label noise is part of the experiment, docs/methods.md §9) — and the seed's
    random streams (initialisation, data order, augmentation), fingerprinted by their first draws.
    Two trials with the same seed and hash saw the same data under the same streams; a condition's
    own sampler (natural sampling) or its noise rate does not change it, another world, split or n
    does. The realized first-epoch order is recorded separately (``sample_order_hash``).
    """
    h = hashlib.sha256(f"world={dataset};".encode())
    for name, index in (("train", train), ("val", val)):
        h.update(f"{name}:".encode())
        _index_fingerprint(h, index)
    h.update(f"seed={seed};".encode())
    h.update(order_rng(seed, 1).integers(0, 2**62, 4).tobytes())
    h.update(torch.rand(4, generator=augmentation_generator(seed, 1)).numpy().tobytes())
    h.update(torch.rand(4, generator=torch.Generator().manual_seed(seed)).numpy().tobytes())  # init stream
    return h.hexdigest()[:16]


def augment_batch(images: torch.Tensor, mean, std, generator: torch.Generator | None,
                  hflip: bool = True, color_jitter: float = 0.0, train: bool = True,
                  channels_last: bool = False) -> torch.Tensor:
    """uint8 (B,3,H,W) -> normalised float; random flips and brightness/contrast jitter when training.
    Random draws come from ``generator`` (on the CPU) so the augmentation stream is seeded."""
    x = images.float().div_(255)
    if train:
        b = x.shape[0]
        # draws on the CPU from the seeded generator, applied with torch.where (no GPU sync)
        draws = torch.rand(b, 3, generator=generator).to(x.device, non_blocking=True)
        if hflip:
            x = torch.where((draws[:, 0] < 0.5).view(b, 1, 1, 1), x.flip(-1), x)
        if color_jitter > 0:
            bright = (1 + (draws[:, 1] * 2 - 1) * color_jitter).view(b, 1, 1, 1)
            contrast = (1 + (draws[:, 2] * 2 - 1) * color_jitter).view(b, 1, 1, 1)
            mu = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (((x - mu) * contrast + mu) * bright).clamp_(0, 1)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    x = (x - m) / s
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class _Batches(torch.utils.data.Dataset):
    """Batch b of an epoch's order, gathered in one call (worker processes build whole batches)."""

    def __init__(self, store: ImageStore, order: np.ndarray, batch_size: int, steps: int) -> None:
        self.store, self.order, self.batch_size, self.steps = store, order, batch_size, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, b: int) -> tuple[np.ndarray, torch.Tensor]:
        idx = self.order[b * self.batch_size:(b + 1) * self.batch_size]
        return idx, self.store.take(idx)


def iterate_batches(store: ImageStore, order: np.ndarray, batch_size: int, steps: int, num_workers: int = 0,
                    pin_memory: bool = False, prefetch: int = 2):
    """Yield (sample indices, uint8 images) for the epoch's ``order``, prepared ahead of the model.

    With ``num_workers`` > 0 a DataLoader's worker processes gather (and, on the JPEG path, decode)
    whole batches; otherwise a background thread does (numpy copies and PIL decoding release the
    GIL). Either way the order is exactly ``order``, so data order stays a function of the seed.
    """
    batches = _Batches(store, order, batch_size, steps)
    if num_workers > 0:
        loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=num_workers,
                                             pin_memory=pin_memory, prefetch_factor=prefetch,
                                             persistent_workers=False)
        yield from loader
        return
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def produce() -> None:
        try:
            for b in range(steps):
                if stop.is_set():
                    return
                idx, images = batches[b]
                q.put((idx, images.pin_memory() if pin_memory else images))
            q.put(None)
        except BaseException as e:  # surface loader errors (a missing image) in the training thread
            q.put(e)

    thread = threading.Thread(target=produce, daemon=True, name="affsweep-prefetch")
    thread.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
