"""Decoded uint8 images kept in the training device's memory: batches gathered there, no loader.

With ``data_on_device`` (a placement field: ``auto`` — on CUDA when it fits; ``on`` — on any
device; ``off``), the whole decoded split is copied to the device once, as (N, H, W, 3) uint8, and a
batch is an index gather on the device followed by the same (B, 3, H, W) view ``ImageStore.take``
gives — so the augmentation (already on the device) sees identical inputs and a trial's metrics do
not depend on where its images live. Per step this removes the loader thread or processes and the
host→device copy. A split without decoded images (JPEG path without ``dataset.cache``) or one that
does not fit (more than ``FRACTION`` of the device's free memory) falls back to the loader, with
one line saying how much it needs.
"""

from __future__ import annotations

import os
import weakref

import numpy as np
import torch

FRACTION = 0.5  # of the free device memory the images may take (the model needs the rest)
_RESIDENT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # store -> {device: DeviceImages}:
# trials of one process (packed, or a reused Ray actor) share one device copy of a split


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


class DeviceImages:
    """The ``take``/``len`` of an ``ImageStore``, answered from a tensor on ``device``."""

    def __init__(self, array: np.ndarray, device: torch.device) -> None:
        self.device = device
        self.images = torch.from_numpy(np.array(array, copy=True)).to(device)  # (N, H, W, 3) uint8

    def __len__(self) -> int:
        return len(self.images)

    def take(self, idx) -> torch.Tensor:
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long).to(self.device, non_blocking=True)
        return self.images.index_select(0, idx).permute(0, 3, 1, 2)


def iterate_device_batches(store: DeviceImages, order: np.ndarray, batch_size: int, steps: int):
    """(sample indices, images on the device) of an epoch's ``order``, like ``iterate_batches``."""
    for b in range(steps):
        idx = order[b * batch_size:(b + 1) * batch_size]
        yield idx, store.take(idx)


def device_resident(store, mode: str, device: torch.device, say=print) -> DeviceImages | None:
    """A ``DeviceImages`` for ``store`` when ``mode`` asks for one and it fits; otherwise None."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    array = getattr(store, "array", None)
    if array is None:
        say(f"data_on_device: the images are JPEG files decoded per batch; set dataset.cache: true to keep "
            f"them on {device}; using the loader")
        return None
    shared = _RESIDENT.setdefault(store, {})
    if str(device) in shared:
        return shared[str(device)]
    need, free = int(array.nbytes), free_bytes(device)
    if need > FRACTION * free:
        say(f"data_on_device: the images need {_size(need)} on {device}, more than {FRACTION:.0%} of "
            f"the {_size(free)} free; using the loader")
        return None
    shared[str(device)] = DeviceImages(array, device)
    return shared[str(device)]


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
