"""Images/s of the JPEG decode path vs the decoded cache, on a generated Aff-Wild2-layout tree.

    python benchmarks/data_pipeline.py [--n 3000] [--size 112] [--batch 64] [--threads 1]

Generates ``--n`` 112-px JPEG frames in a temporary directory (the fixture generator of the tests,
official Aff-Wild2 layout), loads the index with ``load_affwild2``, then measures, in one process:

* JPEG path: ``decode_image`` on every index row in a shuffled epoch order, batched like a loader
  (``--threads`` > 1 decodes each batch on a thread pool);
* cache build: ``build_cache`` (thread pool, every image decoded once);
* cache path: random batches sliced from the read-only memmap -> contiguous uint8 -> torch tensor.

The ratio cache/JPEG is what the cache buys per process. The cache was just written, so its pages
are in the OS page cache (the steady state of a node where all workers share it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.datasets import make_affwild2_tree  # noqa: E402
from trainers.data.affwild2 import load_affwild2  # noqa: E402
from trainers.data.cache import build_cache, decode_image, open_cache  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="number of JPEG frames to generate")
    ap.add_argument("--size", type=int, default=112, help="decoded resolution (source JPEGs are 112 px)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="decode threads for the JPEG path")
    ap.add_argument("--cache-passes", type=int, default=5, help="epochs over the cache to time")
    ap.add_argument("--dir", default=None, help="where to generate the tree (default: a temp dir)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        n_videos = 10
        frames = -(-args.n // n_videos)
        t0 = time.perf_counter()
        videos = {"train": [f"video{i:02d}" for i in range(n_videos)], "val": []}
        make_affwild2_tree(tmp, videos=videos, frames=frames, missing_frames={}, image_size=112)
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        index = load_affwild2(tmp, "train")
        load_s = time.perf_counter() - t0
        n = len(index)
        paths = index["path"].tolist()
        order = np.random.default_rng(0).permutation(n)
        batches = [order[i:i + args.batch] for i in range(0, n, args.batch)]
        print(f"tree: {n} frames (112 px JPEG) generated in {gen_s:.1f} s; index loaded in {load_s:.2f} s")

        # JPEG path: what a loader worker does without the cache
        pool = ThreadPoolExecutor(args.threads) if args.threads > 1 else None
        t0 = time.perf_counter()
        for b in batches:
            if pool is None:
                imgs = [decode_image(paths[i], args.size) for i in b]
            else:
                imgs = list(pool.map(lambda i: decode_image(paths[i], args.size), b))
            x = torch.from_numpy(np.stack(imgs))
        jpeg_s = time.perf_counter() - t0
        if pool is not None:
            pool.shutdown()
        jpeg_ips = n / jpeg_s

        cache_dir = os.path.join(tmp, "cache")
        t0 = time.perf_counter()
        path = build_cache(index, args.size, cache_dir, progress=False)
        build_s = time.perf_counter() - t0
        cache = open_cache(path)
        images = cache.images
        t0 = time.perf_counter()
        for _ in range(args.cache_passes):
            for b in batches:
                x = torch.from_numpy(np.ascontiguousarray(images[b]))
        cache_s = (time.perf_counter() - t0) / args.cache_passes
        cache_ips = n / cache_s
        assert x.dtype == torch.uint8 and x.shape[1:] == (args.size, args.size, 3)

    threads = f"{args.threads} thread{'s' if args.threads > 1 else ''}"
    print(f"JPEG decode path ({threads}):   {jpeg_ips:10.0f} images/s")
    print(f"cache build (thread pool):  {n / build_s:10.0f} images/s  ({build_s:.2f} s, once)")
    print(f"decoded cache (memmap):     {cache_ips:10.0f} images/s")
    print(f"ratio cache / JPEG:         {cache_ips / jpeg_ips:10.1f}x")
    return {"n": n, "jpeg_ips": jpeg_ips, "cache_ips": cache_ips, "build_ips": n / build_s,
            "ratio": cache_ips / jpeg_ips}


if __name__ == "__main__":
    main()
