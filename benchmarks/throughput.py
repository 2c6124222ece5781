"""Trainer throughput as a fraction of a model-only loop on the same device in the same run.

The model-only loop is the ceiling: the same network (backbone + heads), the same frozen stages,
batch size, precision and memory format, fed one pre-made tensor already on the device, with a
trivial loss. The trainer runs ``trainers.engine.fit`` on the synthetic world (data order, sampling,
augmentation, masked multi-task losses, uncertainty weighting, EMA). Ratio = trainer / model-only.

    python benchmarks/throughput.py                           # resnet18 @ 32 px on this machine
    python benchmarks/throughput.py --backbone vit_base_patch16_224 --image-size 224 \
        --unfreeze 0.5 --batch 128 --steps 60                  # the GPU target (bf16 on CUDA)
    python benchmarks/throughput.py --backbone resnet18 --image-size 112 --data jpeg --workers 4
    python benchmarks/throughput.py --backbone resnet18 --image-size 112 --data cache
    python benchmarks/throughput.py --backbone resnet18 --image-size 112 --data cache --data-on-device on

``--data memory`` (default) feeds the trainer the synthetic world in memory; ``jpeg`` and ``cache``
write that world once as an AffectNet-format tree (training.csv + JPEGs) and train through the real
loader, from JPEG decoding or from the decoded uint8 cache (built before timing).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trainers.config import TrialConfig
from trainers.engine import backbone_kwargs, fit, resolve_device
from trainers.methods import MethodContext, create_method
from trainers.models import create_backbone, upper_stages


def model_only(cfg: TrialConfig, steps: int) -> float:
    """Images/s of forward + backward + step on a fixed device tensor (the ceiling)."""
    device = resolve_device(cfg.device)
    cuda = device.type == "cuda"
    space = cfg.label_space
    ctx = MethodContext(label_space=space, train_index=None, class_counts=np.ones(space.num_classes),
                        au_pos_weight=None, device=device)
    method = create_method("focal", ctx)
    bb = create_backbone(cfg.backbone.name, cfg.backbone.pretrained, **backbone_kwargs(cfg))
    model = method.build_model(bb.encoder, bb.feat_dim).to(device)
    if cuda and cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    stages, heads = model.schedule_groups()
    for stage in stages:
        for p in stage:
            p.requires_grad_(False)
    upper = upper_stages(stages, cfg.unfreeze_fraction)
    for p in upper:
        p.requires_grad_(True)
    opt = torch.optim.AdamW([{"params": heads}, {"params": upper}], lr=1e-4)
    fwd = torch.compile(model) if (cfg.compile and cuda) else model
    x = torch.randn(cfg.batch_size, 3, cfg.dataset.image_size, cfg.dataset.image_size, device=device)
    if cuda and cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, space.num_classes, (cfg.batch_size,), device=device)
    model.train()

    def one():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and cfg.amp):
            out = fwd(x)
        loss = torch.nn.functional.cross_entropy(out["expr"].float(), y) + out["va"].float().mean() \
            + out["au"].float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    warm = max(3, steps // 10)
    for _ in range(warm):
        one()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    if cuda:
        torch.cuda.synchronize()
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def trainer(cfg: TrialConfig) -> float:
    with tempfile.TemporaryDirectory() as d:
        return fit(cfg, d, progress=False).metrics["images_per_second"]


def write_affectnet_tree(root: Path, n: int, image_size: int) -> None:
    """The synthetic affectnet_like world as an AffectNet-format tree (what users have on disk)."""
    from PIL import Image

    from trainers.data.synthetic import synthetic

    world = synthetic("affectnet_like", n=n, seed=0, image_size=image_size)
    images = root / "Manually_Annotated_Images" / "0"
    images.mkdir(parents=True)
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"
    for split, part in (("training", world.iloc[: int(0.8 * n)]), ("validation", world.iloc[int(0.8 * n):])):
        lines = [header]
        for i, row in part.iterrows():
            name = f"0/{i:06d}.jpg"
            Image.fromarray(row["image"]).save(images / f"{i:06d}.jpg", quality=90)
            v = -2 if np.isnan(row["valence"]) else row["valence"]
            a = -2 if np.isnan(row["arousal"]) else row["arousal"]
            lines.append(f'{name},0,0,{image_size},{image_size},"",{int(row["expr"])},{v:.4f},{a:.4f}')
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30, help="training steps measured in each loop")
    ap.add_argument("--unfreeze", type=float, default=1.0)
    ap.add_argument("--n", type=int, default=None, help="synthetic frames (default: enough for --steps)")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    ap.add_argument("--data", default="memory", choices=["memory", "jpeg", "cache"])
    ap.add_argument("--workers", type=int, default=0, help="data-loading worker processes (jpeg path)")
    ap.add_argument("--data-on-device", default="off", choices=["auto", "on", "off"],
                    help="keep the decoded images in device memory (trainers/data/device_resident.py)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.n or int(args.steps * args.batch / 0.8) + args.batch
    dataset = dict(name="synthetic", preset="affwild2_like", n=n, image_size=args.image_size)
    tmp = tempfile.TemporaryDirectory()
    if args.data != "memory":
        root = Path(tmp.name) / "affectnet"
        write_affectnet_tree(root, int(n / 0.8) + 1, args.image_size)
        dataset = dict(name="affectnet", root=str(root), image_size=args.image_size, cache=args.data == "cache",
                       cache_dir=str(Path(tmp.name) / "cache"))
    cfg = TrialConfig.model_validate(dict(
        dataset=dataset, backbone=dict(name=args.backbone, pretrained=False), batch_size=args.batch, epochs=1,
        warmup_epochs=0, unfreeze_fraction=args.unfreeze, max_steps_per_epoch=args.steps, oversample=True,
        device=args.device, compile=args.compile, eval_batch_size=256, num_workers=args.workers,
        data_on_device=args.data_on_device))
    if args.data == "cache":  # build the cache before timing, as `affsweep data cache` would
        from trainers.engine import prepare_data

        prepare_data(cfg)
    device = resolve_device(cfg.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    # the trainer runs first so that the model-only loop cannot benefit from a cold start penalty of its own
    t = trainer(cfg)
    m = model_only(cfg, args.steps)
    result = {"device": name, "data": args.data, "workers": args.workers, "data_on_device": args.data_on_device,
              "backbone": args.backbone, "image_size": args.image_size, "batch": args.batch,
              "unfreeze_fraction": args.unfreeze, "amp_bf16": device.type == "cuda",
              "trainer_images_per_s": round(t, 1), "model_only_images_per_s": round(m, 1), "ratio": round(t / m, 3)}
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    tmp.cleanup()


if __name__ == "__main__":
    main()
