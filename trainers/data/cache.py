"""Decoded-image cache: every image of an index decoded once into a shared uint8 memmap.

JPEG decoding dominates the input pipeline of small backbones. ``build_cache`` decodes each image
of an index DataFrame once (RGB, optional face-box crop, resize to ``image_size``²) into
``images.npy`` (N, H, W, 3) uint8, writes the index beside it (``index.parquet``) and a JSON
manifest; ``open_cache`` maps it read-only, so all worker processes of a node share the pages.

A cache lives in ``CACHE_DIR/<key>/`` where the key hashes the index (paths and labels), each
image's size and mtime, and the resolution, so a changed annotation, image or ``image_size``
builds a new cache instead of silently reusing a stale one. The build writes into a temporary
folder that is renamed into place only when complete, so a crash never leaves a cache that looks
valid.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from .errors import DataFormatError

CACHE_VERSION = 1
BOX_COLUMNS = ("face_x", "face_y", "face_width", "face_height")
IMAGES_FILE = "images.npy"
INDEX_FILE = "index.parquet"
MANIFEST_FILE = "manifest.json"


def decode_image(path: str | os.PathLike, image_size: int, box=None) -> np.ndarray:
    """``(image_size, image_size, 3)`` uint8 RGB array of the image at ``path``.

    ``box`` is an optional face box ``(x, y, width, height)`` in pixels of the original image,
    cropped (clipped to the image) before resizing. A missing file raises FileNotFoundError and an
    undecodable one DataFormatError, both naming the path.
    """
    path = os.fspath(path)
    size = int(image_size)
    try:
        img = Image.open(path)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "image not found", path) from None
    except (PermissionError, IsADirectoryError):
        raise
    except (UnidentifiedImageError, OSError) as e:
        raise DataFormatError(f"cannot decode image: {e}", path) from None
    try:
        with img:
            width, height = img.size
            crop = None
            if box is not None and not any(_isnan(b) for b in box):
                x, y, w, h = (float(b) for b in box)
                left, top = max(0.0, x), max(0.0, y)
                right, bottom = min(float(width), x + w), min(float(height), y + h)
                if right - left < 1 or bottom - top < 1:
                    raise DataFormatError(f"face box (x={x:g}, y={y:g}, w={w:g}, h={h:g}) lies outside "
                                          f"the {width}x{height} image", path)
                crop = (left, top, right, bottom)
            # Let libjpeg decode at a reduced scale when the target is much smaller (AffectNet
            # images are up to thousands of pixels wide); draft keeps the scale >= the target.
            cw, ch = (crop[2] - crop[0], crop[3] - crop[1]) if crop else (width, height)
            img.draft("RGB", (max(1, int(size * width / cw)), max(1, int(size * height / ch))))
            sx, sy = img.size[0] / width, img.size[1] / height
            img = img.convert("RGB")
            if crop:
                img = img.crop((round(crop[0] * sx), round(crop[1] * sy),
                                max(round(crop[2] * sx), round(crop[0] * sx) + 1),
                                max(round(crop[3] * sy), round(crop[1] * sy) + 1)))
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8).copy()
    except DataFormatError:
        raise
    except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt data
        raise DataFormatError(f"cannot decode image: {e}", path) from None


def _isnan(x) -> bool:
    try:
        return bool(np.isnan(x))
    except TypeError:
        return False


def boxes_of(index_df: pd.DataFrame) -> np.ndarray | None:
    """(N, 4) face boxes when the index carries the box columns (``load_affectnet(crop_faces=True)``)."""
    if all(c in index_df.columns for c in BOX_COLUMNS):
        return index_df[list(BOX_COLUMNS)].to_numpy(dtype=np.float64)
    return None


# --------------------------------------------------------------------------------------- keying


def cache_key(index_df: pd.DataFrame, image_size: int) -> str:
    """Hash of what the decoded pixels and labels depend on.

    Paths and every label column, each source file's size and mtime, the resolution and the cache
    format version; stat-ing the files is what makes a replaced image invalidate the cache.
    """
    if "path" not in index_df.columns:
        raise ValueError("build_cache needs an index with a 'path' column (in-memory data needs no cache)")
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "image_size": int(image_size),
                         "columns": [str(c) for c in index_df.columns], "n": len(index_df)}).encode())
    h.update(pd.util.hash_pandas_object(index_df.reset_index(drop=True), index=False).to_numpy().tobytes())
    stats = np.empty((len(index_df), 2), dtype=np.int64)
    for i, p in enumerate(index_df["path"]):
        try:
            st = os.stat(p)
            stats[i] = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            stats[i] = (-1, -1)  # decoding will name it
    h.update(stats.tobytes())
    return h.hexdigest()[:24]


# --------------------------------------------------------------------------------------- building


@dataclass
class DecodedCache:
    """An opened cache: ``images`` (N, H, W, 3) read-only uint8 memmap, row i <-> ``index`` row i."""

    path: Path
    images: np.ndarray
    index: pd.DataFrame
    manifest: dict = field(repr=False)

    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])

    def __len__(self) -> int:
        return int(self.images.shape[0])


def build_cache(index_df: pd.DataFrame, image_size: int, cache_dir: str | os.PathLike,
                progress: bool = True, num_workers: int | None = None) -> Path:
    """Decode every image of ``index_df`` once into ``cache_dir/<key>/`` and return that folder.

    An existing complete cache with the same key is reused as is. Decoding runs on a thread pool
    (PIL releases the GIL while decoding); ``num_workers`` defaults to the CPUs available, at most 8.
    Any image that cannot be decoded aborts the build with the error naming it, leaving no cache.
    """
    from tqdm.auto import tqdm

    size = int(image_size)
    if size < 1:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    cache_dir = Path(cache_dir).expanduser().absolute()
    key = cache_key(index_df, size)
    final = cache_dir / key
    if (final / MANIFEST_FILE).is_file():
        try:
            open_cache(final)
            return final
        except DataFormatError:
            shutil.rmtree(final, ignore_errors=True)  # damaged after the fact: rebuild
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=cache_dir))
    try:
        index = index_df.reset_index(drop=True)
        n = len(index)
        images = np.lib.format.open_memmap(tmp / IMAGES_FILE, mode="w+", dtype=np.uint8,
                                           shape=(n, size, size, 3))
        paths = index["path"].astype(str).tolist()
        boxes = boxes_of(index)
        workers = num_workers or min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                     else os.cpu_count() or 1)
        chunk = 64
        start = time.perf_counter()
        lock = threading.Lock()
        failed = threading.Event()
        with tqdm(total=n, unit="img", desc=f"decoding {size}px", disable=not progress) as bar:
            def work(lo: int) -> None:
                if failed.is_set():  # an image already failed: the build is abandoned
                    return
                hi = min(n, lo + chunk)
                try:
                    for i in range(lo, hi):
                        images[i] = decode_image(paths[i], size, None if boxes is None else boxes[i])
                except BaseException:
                    failed.set()
                    raise
                with lock:
                    bar.update(hi - lo)

            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                for _ in pool.map(work, range(0, n, chunk)):
                    pass
        images.flush()
        _write_index(index, tmp / INDEX_FILE)
        manifest = {
            "version": CACHE_VERSION, "key": key, "n": n, "image_size": size,
            "shape": [n, size, size, 3], "dtype": "uint8",
            "label_space": index_df.attrs.get("label_space"), "split": index_df.attrs.get("split"),
            "crop_faces": boxes is not None, "build_seconds": round(time.perf_counter() - start, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        # The manifest is written last: a folder without one is never a cache.
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        os.chmod(tmp, 0o755)
        if final.exists() and not (final / MANIFEST_FILE).is_file():
            shutil.rmtree(final, ignore_errors=True)  # not a cache (no manifest): make room
        try:
            os.rename(tmp, final)  # atomic: the cache appears complete or not at all
        except OSError:
            if not (final / MANIFEST_FILE).is_file():
                raise
            # another process finished the same cache first; it holds the same pixels
        return final
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _write_index(index: pd.DataFrame, path: Path) -> None:
    out = index.copy()
    out.attrs = {}
    for c in out.columns:
        if out[c].dtype == object:
            out[c] = out[c].astype(str)
    out.to_parquet(path, index=False)


def open_cache(path: str | os.PathLike) -> DecodedCache:
    """Open a cache folder made by :func:`build_cache` (images read-only, shared between processes)."""
    path = Path(path).expanduser().absolute()
    if path.name == MANIFEST_FILE:
        path = path.parent
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise DataFormatError(f"not a complete decoded cache (no {MANIFEST_FILE})", path)
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise DataFormatError(f"unreadable manifest: {e}", manifest_path) from None
    if manifest.get("version") != CACHE_VERSION:
        raise DataFormatError(f"cache format version {manifest.get('version')} "
                              f"(this affsweep reads {CACHE_VERSION}); rebuild it", manifest_path)
    try:
        images = np.load(path / IMAGES_FILE, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise DataFormatError(f"unreadable image array: {e}", path / IMAGES_FILE) from None
    if list(images.shape) != list(manifest["shape"]) or images.dtype != np.uint8:
        raise DataFormatError(f"image array is {images.dtype}{list(images.shape)}, manifest says "
                              f"uint8{manifest['shape']}", path / IMAGES_FILE)
    index = pd.read_parquet(path / INDEX_FILE)
    if len(index) != images.shape[0]:
        raise DataFormatError(f"index has {len(index)} rows, images {images.shape[0]}", path / INDEX_FILE)
    if manifest.get("label_space"):
        index.attrs["label_space"] = manifest["label_space"]
    if manifest.get("split"):
        index.attrs["split"] = manifest["split"]
    return DecodedCache(path=path, images=images, index=index, manifest=manifest)
