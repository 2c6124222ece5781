"""The one training loop every trial runs: set up, loop, evaluate, checkpoint (STYLE: like nanoGPT).

Methods change the objective through the hooks of ``trainers.methods.base.Method``; nothing here
names a method. Every random stream is a function of (seed, epoch), so a trial resumed from its
epoch-k checkpoint ends with the same metrics as an uninterrupted run, and every condition sharing a
seed sees the same data order (``data_order_hash``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from timm.utils import ModelEmaV3
from tqdm.auto import tqdm

from trainers.config import TrialConfig
from trainers.data.labels import AU_NAMES
from trainers.data.pipeline import (
    ImageStore,
    LabelTensors,
    apply_label_noise,
    augment_batch,
    epoch_order,
    iterate_batches,
    load_split,
    order_hash,
    oversampling_weights,
)
from trainers.losses import UncertaintyWeighting
from trainers.methods import MethodContext, StepState, create_method
from trainers.metrics import au_f1_per_unit, ccc, confusion_matrix, expr_f1, p_mtl, per_class_f1
from trainers.models import create_backbone, upper_stages

CHECKPOINT = "last.pt"
NAN_CHECK_EVERY = 25  # steps between NaN checks on CUDA (each check waits for the GPU)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the message names the epoch, step and the task losses."""


@dataclass
class TrialData:
    train_index: pd.DataFrame
    val_index: pd.DataFrame
    train_images: ImageStore
    val_images: ImageStore
    train_labels: LabelTensors
    val_labels: LabelTensors


@dataclass
class TrialResult:
    metrics: dict
    trial_dir: Path
    history: list[dict] = field(default_factory=list)


def backbone_kwargs(cfg: TrialConfig) -> dict:
    """timm kwargs; a ViT is built for the dataset's resolution (position embeddings resampled)."""
    kwargs = dict(cfg.backbone.kwargs)
    if "vit" in cfg.backbone.name and "img_size" not in kwargs:
        kwargs["img_size"] = cfg.dataset.image_size
    return kwargs


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@lru_cache(maxsize=4)
def _cached_splits(dataset_json: str):
    from trainers.config import DatasetConfig

    ds = DatasetConfig.model_validate_json(dataset_json)
    return load_split(ds, "train"), load_split(ds, "val")


def prepare_data(cfg: TrialConfig) -> TrialData:
    train, val = _cached_splits(cfg.dataset.model_dump_json())
    train = apply_label_noise(train, cfg.label_noise.rate, cfg.label_noise.seed, cfg.label_space.num_classes)
    ds = cfg.dataset
    return TrialData(
        train_index=train, val_index=val,
        train_images=ImageStore(train, ds.image_size, ds.cache_dir, ds.cache),
        val_images=ImageStore(val, ds.image_size, ds.cache_dir, ds.cache),
        train_labels=LabelTensors.from_index(train), val_labels=LabelTensors.from_index(val),
    )


def method_context(cfg: TrialConfig, data: TrialData, device: torch.device) -> MethodContext:
    from trainers.geometry import estimate_geometry

    space = cfg.label_space
    expr = data.train_index["expr"].to_numpy()
    counts = np.bincount(expr[expr >= 0], minlength=space.num_classes)
    pos_weight = None
    if space.has_au:
        au = data.train_index[list(AU_NAMES)].to_numpy(np.float64)
        pos, neg = np.nansum(au == 1, 0), np.nansum(au == 0, 0)
        pos_weight = neg / np.maximum(pos, 1)
    return MethodContext(label_space=space, train_index=data.train_index, class_counts=counts,
                         au_pos_weight=pos_weight, geometry=estimate_geometry(data.train_index, space),
                         seed=cfg.seed, device=device, epochs=cfg.epochs, backbone_name=cfg.backbone.name)


def fit(cfg: TrialConfig, trial_dir: str | Path, report: Callable[[int, dict, Path], None] | None = None,
        progress: bool = True, resume_from: str | Path | None = None) -> TrialResult:
    """Train one trial and write its directory (DESIGN "One trial"). ``report(epoch, metrics,
    checkpoint_dir)`` is called after each epoch's checkpoint (Ray Tune's hook)."""
    # --- set up ----------------------------------------------------------------------------
    trial_dir = Path(trial_dir)
    ckpt_dir = trial_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    cuda = device.type == "cuda"
    if not cuda:
        torch.use_deterministic_algorithms(True, warn_only=True)
    data = prepare_data(cfg)
    ctx = method_context(cfg, data, device)
    m = cfg.method
    torch.manual_seed(cfg.seed)  # the seed fixes the initialisation of everything seeded
    method = create_method(m.name, ctx, cost=m.cost, lam=m.lam, consistency=m.consistency,
                           imported_from=m.imported_from, **m.options)
    backbone = create_backbone(cfg.backbone.name, cfg.backbone.pretrained, **backbone_kwargs(cfg))
    model = method.build_model(backbone.encoder, backbone.feat_dim)
    method.setup(model, backbone.feat_dim)
    model.to(device)
    method.modules.to(device)
    if cuda and cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    weighting = UncertaintyWeighting().to(device)
    stages, heads = model.schedule_groups()
    upper = upper_stages(stages, cfg.unfreeze_fraction)
    extra_params = [p for mod in method.main_optimizer_modules() for p in mod.parameters()]
    head_params = [*heads, *extra_params, *weighting.parameters()]
    optimizer = torch.optim.AdamW([
        {"params": head_params, "lr": cfg.lr},
        {"params": upper, "lr": cfg.lr * cfg.encoder_lr_factor},  # METHODS §2: reduced encoder LR
    ], weight_decay=cfg.weight_decay)
    ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True)
    forward = torch.compile(model) if (cfg.compile and cuda) else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and cfg.amp)

    start, step, history, train_seconds, images_seen, first_order = 1, 0, [], 0.0, 0, None
    resume_file = Path(resume_from) / CHECKPOINT if resume_from else ckpt_dir / CHECKPOINT
    if resume_file.is_file():
        state = torch.load(resume_file, map_location=device, weights_only=False)
        if state["trial_id"] != cfg.trial_id:
            raise RuntimeError(f"{resume_file}: checkpoint belongs to trial {state['trial_id']}, not {cfg.trial_id}")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        weighting.load_state_dict(state["weighting"])
        method.modules.load_state_dict(state["method_modules"])
        method.load_state_dict(state["method_state"])
        start, step, history = state["epoch"] + 1, state["step"], state["history"]
        train_seconds, images_seen, first_order = state["train_seconds"], state["images_seen"], state["order_hash"]

    encoder_params = [p for stage in stages for p in stage]
    sample_weights = method.train_sampler_weights()
    if sample_weights is None and cfg.oversample:
        sample_weights = oversampling_weights(data.train_index["expr"].to_numpy())
    n_train = len(data.train_images)
    steps_per_epoch = max(1, n_train // cfg.batch_size)  # full batches only: BatchNorm cannot take one frame
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    bar = tqdm(total=(cfg.epochs - start + 1) * steps_per_epoch, disable=not progress, desc=cfg.trial_id,
               unit="batch", leave=False)

    # --- loop ------------------------------------------------------------------------------
    for epoch in range(start, cfg.epochs + 1):
        # METHODS §2: head warm-up with the encoder frozen, then the upper fraction unfrozen
        for p in encoder_params:
            p.requires_grad_(False)
        if epoch > cfg.warmup_epochs:
            for p in upper:
                p.requires_grad_(True)
        order = epoch_order(n_train, cfg.seed, epoch, sample_weights)
        if epoch == 1:
            first_order = order_hash(order)
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # dropout etc.: a function of (seed, epoch)
        aug_gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        model.train()
        state = StepState(epoch=epoch, step=step, epochs=cfg.epochs)
        sums: dict = {}
        counts: dict[str, int] = {}
        t0 = time.perf_counter()
        batches = iterate_batches(data.train_images, order, cfg.batch_size, steps_per_epoch, cfg.num_workers,
                                  pin_memory=cuda)
        for b, (idx, images) in enumerate(batches):
            idx = np.asarray(idx)
            images = images.to(device, non_blocking=True)
            x = augment_batch(images, backbone.mean, backbone.std, aug_gen, cfg.augment.hflip,
                              cfg.augment.color_jitter, train=True, channels_last=cuda and cfg.channels_last)
            batch = data.train_labels.batch(torch.from_numpy(idx), device)
            batch["index"] = torch.from_numpy(idx).to(device)
            batch["image"] = x
            state.step = step
            with autocast:
                out = forward(x)
            losses = method.task_losses(out, batch, state)
            total, weighted = weighting(losses)
            # a NaN/inf check is a GPU sync: every step on the CPU, every few steps on CUDA
            if (not cuda or step % NAN_CHECK_EVERY == 0 or b == steps_per_epoch - 1) and not torch.isfinite(total):
                parts = ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items() if v is not None)
                raise NonFiniteLossError(f"non-finite loss at epoch {epoch}, step {step} ({parts})")
            optimizer.zero_grad(set_to_none=True)
            method.backward(total, weighted, model)
            optimizer.step()
            step += 1
            ema.update(model, step=step)
            extra = method.extra_step(model, batch, out, state)
            logged = {"loss": total, **{f"loss_{k}": v for k, v in losses.items() if v is not None}, **extra}
            for k, v in logged.items():
                v = v.detach() if torch.is_tensor(v) else v
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            images_seen += len(idx)
            bar.update(1)
        train_seconds += time.perf_counter() - t0
        epoch_metrics = {f"train/{k}": float(v) / counts[k] for k, v in sums.items()}
        epoch_metrics.update(method.on_epoch_end(
            model, lambda: iterate_outputs(model, data.train_images, cfg, backbone, device), state))

        # --- evaluate (the EMA weights, METHODS §2) -------------------------------------------
        recalibrate_batchnorm(ema.module, data.train_images, order, cfg, backbone, device)
        evaluation = evaluate(ema.module, method, data, cfg, backbone, device, ctx)
        epoch_metrics.update({k: v for k, v in evaluation.metrics.items() if not isinstance(v, str)})
        epoch_metrics["epoch"] = epoch
        history.append(epoch_metrics)

        # --- checkpoint (atomic: a kill mid-write never leaves a corrupt "last") -----------------
        tmp = ckpt_dir / (CHECKPOINT + ".tmp")
        torch.save({
            "trial_id": cfg.trial_id, "epoch": epoch, "step": step, "history": history,
            "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
            "weighting": weighting.state_dict(), "method_modules": method.modules.state_dict(),
            "method_state": method.state_dict(), "train_seconds": train_seconds, "images_seen": images_seen,
            "order_hash": first_order,
        }, tmp)
        os.replace(tmp, ckpt_dir / CHECKPOINT)
        if report is not None:
            report(epoch, epoch_metrics, ckpt_dir)
    bar.close()

    # --- final result --------------------------------------------------------------------------
    # resumed from the last epoch's checkpoint (killed before result.json): evaluate the restored EMA
    ran_an_epoch = start <= cfg.epochs
    final = evaluation if ran_an_epoch else evaluate(ema.module, method, data, cfg, backbone, device, ctx)
    metrics = {**final.metrics, "epochs": cfg.epochs, "train_seconds": train_seconds,
               "images_per_second": images_seen / train_seconds if train_seconds > 0 else float("nan"),
               "data_order_hash": first_order, **method.parameter_counts(model)}
    result = {"trial_id": cfg.trial_id, "seed": cfg.seed, "status": "done", **metrics}
    write_json(trial_dir / "result.json", result)
    write_json(trial_dir / "confusion.json", {"class_names": list(cfg.label_space.class_names),
                                              "matrix": final.confusion.tolist()})
    write_json(trial_dir / "circumplex.json", circumplex_record(ctx, method))
    write_json(trial_dir / "history.json", history)
    return TrialResult(metrics=result, trial_dir=trial_dir, history=history)


@dataclass
class Evaluation:
    metrics: dict
    confusion: np.ndarray


@torch.no_grad()
def recalibrate_batchnorm(model, images: ImageStore, order: np.ndarray, cfg: TrialConfig, backbone, device) -> None:
    """Re-estimate BatchNorm running statistics of the (EMA) model on the first training batches of
    this epoch's order, unaugmented. An average of weights carries running statistics that belong to
    none of them (most visibly after few steps); SWA recomputes them the same way. No-op without BN."""
    n_batches = cfg.bn_recalibration_batches
    if n_batches == 0 or not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    cuda = device.type == "cuda"
    idx = order[: n_batches * cfg.batch_size]
    inputs = [augment_batch(images.take(idx[i:i + cfg.batch_size]).to(device), backbone.mean, backbone.std, None,
                            train=False, channels_last=cuda and cfg.channels_last)
              for i in range(0, len(idx), cfg.batch_size)]

    class Images(torch.nn.Module):  # update_bn feeds each element to model(...)
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and cfg.amp):
                return self.inner(x)

    was_training = model.training
    torch.optim.swa_utils.update_bn(inputs, Images(model), device=device)
    model.train(was_training)


@torch.no_grad()
def iterate_outputs(model, images: ImageStore, cfg: TrialConfig, backbone, device):
    """(sample indices, model outputs) over a whole split in eval mode, without augmentation."""
    was_training = model.training
    model.eval()
    cuda = device.type == "cuda"
    n = len(images)
    try:
        for start in range(0, n, cfg.eval_batch_size):
            idx = np.arange(start, min(n, start + cfg.eval_batch_size))
            x = augment_batch(images.take(idx).to(device), backbone.mean, backbone.std, None, train=False,
                              channels_last=cuda and cfg.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and cfg.amp):
                out = model(x)
            yield idx, out
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate(model, method, data: TrialData, cfg: TrialConfig, backbone, device, ctx) -> Evaluation:
    """Validation metrics of METHODS §3 and §6 (error structure under the TRUE circumplex)."""
    from analysis.errors import affect_weighted_accuracy, error_severity, quadrant_preservation
    from trainers.geometry import representational_similarity

    va, probs, au, feats = [], [], [], []
    for _, out in iterate_outputs(model, data.val_images, cfg, backbone, device):
        va.append(out["va"].float().cpu())
        probs.append(method.expr_probabilities(out).float().cpu())
        au.append(out["au"].float().cpu())
        feats.append(out["feat"].float().cpu())
    va, probs, au, feats = (torch.cat(t).numpy() for t in (va, probs, au, feats))
    labels, space = data.val_labels, cfg.label_space
    metrics: dict = {}
    names = space.class_names
    vm = labels.va_mask.numpy()
    if space.has_va and vm.sum() >= 2:
        cv, ca = ccc(va[vm, 0], labels.va[vm, 0].numpy()), ccc(va[vm, 1], labels.va[vm, 1].numpy())
        metrics.update(va_ccc=(cv + ca) / 2, va_ccc_v=cv, va_ccc_a=ca)
    else:
        metrics.update(va_ccc=float("nan"), va_ccc_v=float("nan"), va_ccc_a=float("nan"))
    em = labels.expr_mask.numpy()
    y, yhat = labels.expr.numpy()[em], probs.argmax(1)[em]
    confusion = confusion_matrix(yhat, y, space.num_classes)
    if em.any():
        metrics["expr_f1"] = expr_f1(yhat, y, space.num_classes, space.scored_classes)
        metrics["expr_acc"] = float((yhat == y).mean())
        for name, f in zip(names, per_class_f1(confusion)):
            metrics[f"expr_f1/{name}"] = float(f)
    else:
        metrics.update(expr_f1=float("nan"), expr_acc=float("nan"))
    if space.has_au:
        per_unit = au_f1_per_unit(au > 0, labels.au.numpy())
        metrics["au_f1"] = float(np.nanmean(per_unit)) if np.isfinite(per_unit).any() else float("nan")
        for name, f in zip(AU_NAMES, per_unit):
            metrics[f"au_f1/{name}"] = float(f)
    else:
        metrics["au_f1"] = float("nan")
    metrics["p_mtl"] = p_mtl(metrics["va_ccc"], metrics["expr_f1"], metrics["au_f1"])
    true_geometry = true_circumplex(ctx, method, cfg.method.imported_from)
    nan = float("nan")
    if true_geometry is not None and em.any():
        cost, centroids = np.asarray(true_geometry["cost"]), np.asarray(true_geometry["centroids"])
        # a class without a single jointly labelled training frame has no centroid: error structure
        # is scored over the classes whose place on the circumplex is known
        known = np.flatnonzero(np.isfinite(centroids).all(1))
        sub = np.ix_(known, known)
        metrics["error_severity"] = error_severity(confusion[sub], cost[sub])
        metrics["quadrant_keep"] = quadrant_preservation(confusion[sub], centroids[known])
        metrics["affect_weighted_acc"] = affect_weighted_accuracy(confusion[sub], cost[sub])
        rsa = representational_similarity(feats[em], y, cost, classes=[k for k in known if (y == k).any()])
        metrics["rsa_rho"] = float(rsa.rho)
    else:
        metrics.update(error_severity=nan, quadrant_keep=nan, affect_weighted_acc=nan, rsa_rho=nan)
    if em.any():  # and under the cost's own source, when it is not the circumplex (trainers.costs)
        from trainers.costs import source_error_metrics

        metrics.update(source_error_metrics(confusion, getattr(getattr(method, "ot", None), "choice", None)))
    return Evaluation(metrics={k: float(v) for k, v in metrics.items()}, confusion=confusion)


def true_circumplex(ctx: MethodContext, method, imported_from: str | None = None) -> dict | None:
    """The dataset's own circumplex (METHODS §6: always the TRUE one, whatever cost trained);
    for a dataset without VA (RAF-DB) the imported geometry stands in when the trial names one —
    also for its ``cost: none`` condition, so every condition of the sweep is scored alike."""
    if ctx.geometry is not None:
        return {"cost": ctx.geometry.cost, "centroids": ctx.geometry.centroids}
    term = getattr(method, "ot", None)
    source = getattr(term, "source_geometry", None) if term is not None else None
    if source is not None:
        return {"cost": source["cost"], "centroids": source["centroids"]}
    if imported_from:
        from trainers.geometry import import_geometry
        from trainers.losses.ot import load_import_source

        g = import_geometry(load_import_source(imported_from), ctx.label_space.class_names)
        return {"cost": g.finite_cost, "centroids": g.centroids}
    return None


def circumplex_record(ctx: MethodContext, method) -> dict:
    from trainers.geometry import circumplex_record as record

    if ctx.geometry is None and getattr(method, "ot", None) is None:
        return {"class_names": list(ctx.label_space.class_names), "cost_variant": method.cost_variant,
                "centroids": None, "true_cost": None, "cost_used": None, "derangement": None}
    from trainers.geometry import cost_for_variant

    choice = method.ot.choice if method.ot is not None else cost_for_variant("none", ctx.geometry, ctx.seed)
    return record(ctx.geometry, choice)


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default, allow_nan=True))
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, np.integer | np.floating):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
