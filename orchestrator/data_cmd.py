"""``affsweep data {synth,cache,check}``."""

from __future__ import annotations

import sys
from pathlib import Path


def main(args) -> int:
    if args.data_command == "synth":
        return _synth(args)
    if args.data_command == "check":
        from trainers.data.check import check_dataset

        root = Path(args.root).expanduser()
        if not root.is_dir():  # a wrong argument, not a finding about the data
            print(f"error: affsweep data check: {root.resolve()}: folder not found", file=sys.stderr)
            return 2
        report = check_dataset(args.root, args.dataset)
        print(report.format())
        return 0 if report.ok else 1
    if args.data_command == "cache":
        return _cache(args)
    return 2


def _synth(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from trainers.data.synthetic import PRESETS, synthetic

    if args.preset not in PRESETS:
        print(f"error: --preset: unknown preset {args.preset!r} (choose from {', '.join(PRESETS)})", file=sys.stderr)
        return 2
    df = synthetic(args.preset, n=args.n, seed=args.seed, image_size=args.image_size,
                   separability=args.separability)
    names = PRESETS[args.preset].label_space.class_names
    picks = df[df["expr"] >= 0].groupby("expr").head(4)
    cols = 8
    rows = int(np.ceil(len(picks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.4, rows * 1.6))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, (_, row) in zip(np.ravel(axes), picks.iterrows()):
        ax.imshow(row["image"])
        ax.set_title(names[int(row["expr"])], fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"{len(df)} frames of {args.preset}; preview written to {Path(args.out).resolve()}")
    return 0


def _cache(args) -> int:
    from trainers.config import DatasetConfig
    from trainers.data.cache import build_cache
    from trainers.data.pipeline import load_split

    ds = DatasetConfig(name=args.dataset, root=args.root, image_size=args.image_size)
    splits = ["train", "val"] if args.split == "all" else [args.split]
    for split in splits:
        try:
            index = load_split(ds, split)
        except (FileNotFoundError, ValueError) as e:  # DataFormatError names file:line
            print(f"error: affsweep data cache: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
        path = build_cache(index, args.image_size, str(Path(args.cache_dir).expanduser()), progress=True)
        print(f"{args.dataset} {split}: {len(index)} images cached at {path}")
    return 0
