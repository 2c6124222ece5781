"""Decoded-image cache and the shared JPEG decoder."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.support.datasets import make_affectnet_tree, make_affwild2_tree, write_garbage, write_image
from trainers.data import cache as cache_mod
from trainers.data.affectnet import load_affectnet
from trainers.data.affwild2 import load_affwild2
from trainers.data.cache import build_cache, decode_image, open_cache
from trainers.data.errors import DataFormatError


@pytest.fixture
def affwild2_index(tmp_path):
    make_affwild2_tree(tmp_path / "aw")
    return load_affwild2(tmp_path / "aw", "train")


def _reference(path, size, box=None):
    """Straight PIL: decode, crop, resize (what decode_image must equal when no draft applies)."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if box is not None:
            x, y, w, h = box
            img = img.crop((x, y, x + w, y + h))
        return np.asarray(img.resize((size, size), Image.BILINEAR))


# ------------------------------------------------------------------------------------- decode_image


def test_decode_image_resizes_and_crops(tmp_path):
    path = tmp_path / "a.jpg"
    write_image(path, seed=3, size=(32, 28))
    out = decode_image(path, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, _reference(path, 16))
    box = (4, 3, 20, 18)
    cropped = decode_image(path, 16, box=box)
    np.testing.assert_array_equal(cropped, _reference(path, 16, box))
    assert not np.array_equal(cropped, out)
    # NaN box (no face box for this row) means no crop
    np.testing.assert_array_equal(decode_image(path, 16, box=(np.nan,) * 4), out)


def test_decode_image_reduced_scale_decode_of_large_images(tmp_path):
    path = tmp_path / "big.jpg"
    write_image(path, seed=1, size=(640, 480))
    out = decode_image(path, 32)
    assert out.shape == (32, 32, 3)
    # libjpeg's DCT scaling then a bilinear resize stays close to the full-resolution result
    assert np.abs(out.astype(int) - _reference(path, 32).astype(int)).mean() < 6


def test_decode_image_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        decode_image(missing, 16)
    garbage = tmp_path / "bad.jpg"
    write_garbage(garbage)
    with pytest.raises(DataFormatError) as err:
        decode_image(garbage, 16)
    assert str(err.value).startswith(f"{garbage}: cannot decode image")
    truncated = tmp_path / "cut.jpg"
    write_image(truncated, seed=2, size=(64, 64))
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(DataFormatError, match=str(truncated)):
        decode_image(truncated, 16)
    good = tmp_path / "good.jpg"
    write_image(good, seed=2)
    with pytest.raises(DataFormatError, match="outside the 24x24 image"):
        decode_image(good, 16, box=(100, 100, 10, 10))


# ------------------------------------------------------------------------------------- cache


def test_cache_round_trip_equals_direct_decoding(tmp_path, affwild2_index):
    path = build_cache(affwild2_index, 16, tmp_path / "cache", progress=False, num_workers=2)
    cache = open_cache(path)
    assert path.parent == tmp_path / "cache" and len(cache) == len(affwild2_index) == 17
    direct = np.stack([decode_image(p, 16) for p in affwild2_index["path"]])
    np.testing.assert_array_equal(np.asarray(cache.images), direct)
    pd.testing.assert_frame_equal(cache.index, affwild2_index, check_dtype=False)
    assert cache.index.attrs["label_space"] == "affwild2"
    assert cache.image_size == 16 and cache.images.shape == (17, 16, 16, 3)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["n"] == 17 and manifest["image_size"] == 16 and manifest["key"] == path.name
    with pytest.raises(ValueError):  # read-only mapping: shared pages are never written
        cache.images[0, 0, 0, 0] = 1
    assert isinstance(cache.images, np.memmap)


def test_cache_with_face_boxes(tmp_path):
    make_affectnet_tree(tmp_path / "an")
    index = load_affectnet(tmp_path / "an", "val", crop_faces=True)
    cache = open_cache(build_cache(index, 12, tmp_path / "cache", progress=False))
    boxes = index[["face_x", "face_y", "face_width", "face_height"]].to_numpy()
    direct = np.stack([decode_image(p, 12, box=b) for p, b in zip(index["path"], boxes)])
    np.testing.assert_array_equal(np.asarray(cache.images), direct)
    uncropped = np.stack([decode_image(p, 12) for p in index["path"]])
    assert not np.array_equal(direct, uncropped)
    assert cache.manifest["crop_faces"] is True


def test_cache_is_reused_and_invalidated(tmp_path, affwild2_index, monkeypatch):
    cache_dir = tmp_path / "cache"
    first = build_cache(affwild2_index, 16, cache_dir, progress=False)

    def no_decoding(*args, **kwargs):
        raise AssertionError("a valid cache must not be decoded again")

    with monkeypatch.context() as m:
        m.setattr(cache_mod, "decode_image", no_decoding)
        assert build_cache(affwild2_index.copy(), 16, cache_dir, progress=False) == first

    resized = build_cache(affwild2_index, 20, cache_dir, progress=False)
    assert resized != first and open_cache(resized).images.shape[1:] == (20, 20, 3)

    relabelled = affwild2_index.copy()
    relabelled.loc[0, "expr"] = (relabelled.loc[0, "expr"] + 1) % 8
    assert build_cache(relabelled, 16, cache_dir, progress=False) not in (first, resized)

    subset = affwild2_index.iloc[:5].reset_index(drop=True)
    assert open_cache(build_cache(subset, 16, cache_dir, progress=False)).images.shape[0] == 5

    # the same index, but one image file was replaced on disk
    image = affwild2_index["path"].iloc[2]
    write_image(image, seed=999)
    st = os.stat(image)
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    replaced = build_cache(affwild2_index, 16, cache_dir, progress=False)
    assert replaced != first
    np.testing.assert_array_equal(open_cache(replaced).images[2], decode_image(image, 16))
    assert not np.array_equal(open_cache(replaced).images[2], open_cache(first).images[2])
    assert sorted(p.name for p in cache_dir.iterdir() if p.name.startswith(".")) == []


def test_failed_build_leaves_no_cache(tmp_path, affwild2_index, monkeypatch):
    cache_dir = tmp_path / "cache"
    bad = affwild2_index["path"].iloc[9]
    write_garbage(bad)
    with pytest.raises(DataFormatError, match=str(bad)):
        build_cache(affwild2_index, 16, cache_dir, progress=False, num_workers=2)
    assert list(cache_dir.iterdir()) == []  # neither a final folder nor a temporary one

    # a crash in the middle of decoding (after some images were written)
    write_image(bad, seed=5)
    calls = []
    real = cache_mod.decode_image

    def crash_after_three(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(cache_mod, "decode_image", crash_after_three)
        with pytest.raises(KeyboardInterrupt):
            build_cache(affwild2_index, 16, cache_dir, progress=False, num_workers=1)
    assert list(cache_dir.iterdir()) == []
    path = build_cache(affwild2_index, 16, cache_dir, progress=False)
    assert len(open_cache(path)) == 17


def test_incomplete_folder_is_not_a_cache(tmp_path, affwild2_index):
    cache_dir = tmp_path / "cache"
    path = build_cache(affwild2_index, 16, cache_dir, progress=False)
    (path / "manifest.json").unlink()  # what a build killed before its rename would lack
    with pytest.raises(DataFormatError, match="not a complete decoded cache"):
        open_cache(path)
    # building again replaces the incomplete folder
    assert build_cache(affwild2_index, 16, cache_dir, progress=False) == path
    assert len(open_cache(path)) == 17
    # a truncated image array is detected, not read as garbage
    with open(path / "images.npy", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DataFormatError, match="images.npy"):
        open_cache(path)


def test_progress_bar(tmp_path, affwild2_index, capsys):
    build_cache(affwild2_index, 8, tmp_path / "cache", progress=True)
    assert "17/17" in capsys.readouterr().err
