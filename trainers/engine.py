"""The one training loop every trial runs: set up, loop, evaluate, checkpoint (STYLE: like nanoGPT).

Methods change the objective through the hooks of ``trainers.methods.base.Method``; nothing here
names a method. Every random stream is a function of (seed, epoch), so a trial resumed from its
epoch-k checkpoint ends with the same metrics as an uninterrupted run, and every condition sharing a
seed shares its world and random streams (``data_order_hash``; the realized first-epoch order, which
a method's own sampler may change by design, is ``sample_order_hash``).
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
from trainers.data.device_resident import DeviceImages, device_resident, iterate_device_batches
from trainers.data.labels import AU_NAMES
from trainers.data.pipeline import (
    ImageStore,
    LabelTensors,
    apply_label_noise,
    augment_batch,
    augmentation_generator,
    epoch_order,
    iterate_batches,
    load_split,
    matched_seed_hash,
    order_hash,
    sampler_weights,
)
from trainers.losses import UncertaintyWeighting
from trainers.methods import MethodContext, StepState, create_method
from trainers.metrics import au_f1_per_unit, ccc, confusion_matrix, expr_f1, p_mtl, per_class_f1
from trainers.models import create_backbone, fixed_input_size, upper_stages
from trainers.result_row import result_row

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
    # the training index as distributed, before injected label noise (docs/methods.md §9): it decides the
    # sampler, the matched-seed hash and the TRUE circumplex, so noise rates stay matched
    distributed_index: pd.DataFrame | None = None
    true_geometry: object = None  # the circumplex of the labels as distributed (None: ctx.geometry)


@dataclass
class TrialResult:
    metrics: dict
    trial_dir: Path
    history: list[dict] = field(default_factory=list)
    timing: dict = field(default_factory=dict)


TIMING = "timing.json"  # this attempt's phase wall times and bytes written (benchmarks/sweep_overhead.py)


class PhaseTimes(dict):
    """Wall seconds per phase of one attempt (``timing/<phase>_s``) and checkpoint bytes written.
    Kept out of result.json: timings differ between identical trials, metrics must not."""

    def add(self, phase: str, seconds: float) -> None:
        key = f"timing/{phase}_s"
        self[key] = self.get(key, 0.0) + seconds

    def phase(self, name: str):
        times = self

        class _Span:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                times.add(name, time.perf_counter() - self.t0)

        return _Span()


def backbone_kwargs(cfg: TrialConfig) -> dict:
    """timm kwargs; an architecture of a fixed input size (a ViT) is built for the dataset's resolution."""
    kwargs = dict(cfg.backbone.kwargs)
    if "img_size" not in kwargs and fixed_input_size(cfg.backbone.name):
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


@lru_cache(maxsize=4)
def _cached_images(dataset_json: str) -> tuple[ImageStore, ImageStore]:
    """One decoded copy of a dataset's images per process, whichever trials of it the process runs
    (label noise changes labels, never images)."""
    from trainers.config import DatasetConfig

    train, val = _cached_splits(dataset_json)
    ds = DatasetConfig.model_validate_json(dataset_json)
    return (ImageStore(train, ds.image_size, ds.cache_dir, ds.cache),
            ImageStore(val, ds.image_size, ds.cache_dir, ds.cache))


def prepare_data(cfg: TrialConfig) -> TrialData:
    dataset_json = cfg.dataset.model_dump_json()
    distributed, val = _cached_splits(dataset_json)
    # flips only to the classes the dataset has (RAF-DB: its 7, docs/methods.md §9)
    train = apply_label_noise(distributed, cfg.label_noise.rate, cfg.label_noise.seed,
                              cfg.label_space.scored_classes)
    true_geometry = None
    if cfg.label_noise.rate > 0:
        from trainers.geometry import estimate_geometry

        true_geometry = estimate_geometry(distributed, cfg.label_space)
    train_images, val_images = _cached_images(dataset_json)
    return TrialData(
        distributed_index=distributed, true_geometry=true_geometry,
        train_index=train, val_index=val, train_images=train_images, val_images=val_images,
        train_labels=LabelTensors.from_index(train), val_labels=LabelTensors.from_index(val),
    )


def on_device(data: TrialData, cfg: TrialConfig, device: torch.device) -> TrialData:
    """``data`` with its images in device memory when ``cfg.data_on_device`` asks and they fit."""
    import dataclasses
    import sys

    say = lambda line: print(line, file=sys.stderr)  # noqa: E731
    train = device_resident(data.train_images, cfg.data_on_device, device, say)
    val = device_resident(data.val_images, cfg.data_on_device, device, say) if train is not None else None
    if train is None or val is None:
        return data
    return dataclasses.replace(data, train_images=train, val_images=val)


def trial_circumplex(cfg: TrialConfig, data: TrialData):
    """The trial's ``trainers.circumplex.TrialCircumplex``, resolved once: its own or imported
    circumplex, the cost it trains with, and the TRUE circumplex it is scored under."""
    from trainers.circumplex import resolve_circumplex
    from trainers.methods import METHOD_REGISTRY

    m = cfg.method
    cost = METHOD_REGISTRY[m.name].effective_cost(m.cost)
    return resolve_circumplex(cfg.label_space, data.train_index, cfg.seed, cost, m.imported_from,
                              distributed=data.true_geometry)


def method_context(cfg: TrialConfig, data: TrialData, device: torch.device) -> MethodContext:
    space = cfg.label_space
    expr = data.train_index["expr"].to_numpy()
    counts = np.bincount(expr[expr >= 0], minlength=space.num_classes)
    pos_weight = None
    if space.has_au:
        au = data.train_index[list(AU_NAMES)].to_numpy(np.float64)
        pos, neg = np.nansum(au == 1, 0), np.nansum(au == 0, 0)
        pos_weight = neg / np.maximum(pos, 1)
    circumplex = trial_circumplex(cfg, data)
    return MethodContext(label_space=space, train_index=data.train_index, class_counts=counts,
                         au_pos_weight=pos_weight, geometry=circumplex.geometry, circumplex=circumplex,
                         seed=cfg.seed, device=device, epochs=cfg.epochs, backbone_name=cfg.backbone.name)


def fit(cfg: TrialConfig, trial_dir: str | Path, report: Callable[[int, dict, Path], None] | None = None,
        progress: bool = True, resume_from: str | Path | None = None, *, sweep: str | None = None,
        axes: dict | None = None) -> TrialResult:
    """Train one trial and write its directory (docs/design.md §2). ``report(epoch, metrics,
    checkpoint_dir)`` is called after each epoch's checkpoint (Ray Tune's hook). ``sweep`` and
    ``axes`` (the trial's grid values) complete its result row: ``result.json`` is written once, whole
    (``trainers.result_row``)."""
    steps = fit_steps(cfg, trial_dir, report, progress, resume_from, sweep=sweep, axes=axes)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def fit_steps(cfg: TrialConfig, trial_dir: str | Path, report: Callable[[int, dict, Path], None] | None = None,
              progress: bool = True, resume_from: str | Path | None = None, *, sweep: str | None = None,
              axes: dict | None = None):
    """``fit`` as a generator that yields after every optimisation step and returns the TrialResult:
    ``trainers.packed`` interleaves the steps of several trials in one process this way."""
    # --- set up ----------------------------------------------------------------------------
    t_fit = time.perf_counter()
    timing = PhaseTimes()
    trial_dir = Path(trial_dir)
    ckpt_dir = trial_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    cuda = device.type == "cuda"
    if not cuda:
        torch.use_deterministic_algorithms(True, warn_only=True)
    with timing.phase("data"):
        data = prepare_data(cfg)
        data = on_device(data, cfg, device)
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
    head_params = [*heads, *extra_params]
    optimizer = torch.optim.AdamW([
        {"params": head_params, "lr": cfg.lr},
        {"params": upper, "lr": cfg.lr * cfg.encoder_lr_factor},  # docs/methods.md §2: reduced encoder LR
        {"params": list(weighting.parameters()), "lr": cfg.lr, "weight_decay": cfg.log_var_weight_decay},
    ], weight_decay=cfg.weight_decay)
    ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=cfg.ema_warmup)
    forward = torch.compile(model) if (cfg.compile and cuda) else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and cfg.amp)

    start, step, history, train_seconds, images_seen, first_order = 1, 0, [], 0.0, 0, None
    resume_file = Path(resume_from) / CHECKPOINT if resume_from else ckpt_dir / CHECKPOINT
    if resume_file.is_file():
        state = torch.load(resume_file, map_location=device, weights_only=False)
        if state["trial_id"] != cfg.trial_id:
            raise RuntimeError(f"{resume_file}: checkpoint belongs to trial {state['trial_id']}, not {cfg.trial_id}")
        if "model" in state:  # absent from a finished trial's checkpoint: nothing left to train
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        weighting.load_state_dict(state["weighting"])
        method.modules.load_state_dict(state["method_modules"])
        method.load_state_dict(state["method_state"])
        start, step, history = state["epoch"] + 1, state["step"], state["history"]
        train_seconds, images_seen, first_order = state["train_seconds"], state["images_seen"], state["order_hash"]

    encoder_params = [p for stage in stages for p in stage]
    # the method's sampler, else the recipe's; weights from the labels as distributed (docs/methods.md §9)
    sampling = method.sampling() or ("inverse_frequency" if cfg.oversample else "natural")
    sample_weights = sampler_weights(sampling, data.distributed_index["expr"].to_numpy())
    world_hash = matched_seed_hash(cfg.dataset.name, data.distributed_index, data.val_index, cfg.seed)
    n_train = len(data.train_images)
    steps_per_epoch = max(1, n_train // cfg.batch_size)  # full batches only: BatchNorm cannot take one frame
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    timing.add("setup", time.perf_counter() - t_fit - timing["timing/data_s"])
    bar = tqdm(total=(cfg.epochs - start + 1) * steps_per_epoch, disable=not progress, desc=cfg.trial_id,
               unit="batch", leave=False)

    # --- loop ------------------------------------------------------------------------------
    for epoch in range(start, cfg.epochs + 1):
        # docs/methods.md §2: head warm-up with the encoder frozen, then the upper fraction unfrozen
        for p in encoder_params:
            p.requires_grad_(False)
        if epoch > cfg.warmup_epochs:
            for p in upper:
                p.requires_grad_(True)
        order = epoch_order(n_train, cfg.seed, epoch, sample_weights)
        if epoch == 1:
            first_order = order_hash(order)
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # dropout etc.: a function of (seed, epoch)
        aug_gen = augmentation_generator(cfg.seed, epoch)
        model.train()
        if not cfg.frozen_bn_update:
            freeze_batchnorm_statistics(model)
        state = StepState(epoch=epoch, step=step, epochs=cfg.epochs)
        sums: dict = {}
        counts: dict[str, int] = {}
        t0, paused = time.perf_counter(), 0.0
        if isinstance(data.train_images, DeviceImages):  # gathered on the device: no loader, no copies
            batches = iterate_device_batches(data.train_images, order, cfg.batch_size, steps_per_epoch)
        else:
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
                parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items() if v is not None)
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
            t_yield = time.perf_counter()
            yield step
            paused += time.perf_counter() - t_yield  # another packed trial's step: not this trial's time
        timing.add("paused", paused)
        train_seconds += time.perf_counter() - t0 - paused
        timing.add("train", time.perf_counter() - t0 - paused)
        with timing.phase("epoch_end"):
            epoch_metrics = {f"train/{k}": float(v) / counts[k] for k, v in sums.items()}
            epoch_metrics.update(method.on_epoch_end(
                model, lambda: iterate_outputs(model, data.train_images, cfg, backbone, device), state))

        # --- evaluate (the EMA weights, docs/methods.md §2) on the epochs the schedule keeps --------------
        if evaluates(cfg, epoch):
            evaluation = evaluate_ema(ema.module, method, data, order, cfg, backbone, device, ctx, timing)
            epoch_metrics.update({k: v for k, v in evaluation.metrics.items() if not isinstance(v, str)})
        epoch_metrics["epoch"] = epoch
        history.append(epoch_metrics)

        # --- checkpoint (atomic: a kill mid-write never leaves a corrupt "last") -----------------
        t_ckpt = time.perf_counter()
        tmp = ckpt_dir / (CHECKPOINT + ".tmp")
        # a finished trial keeps the evaluated (EMA) weights; the raw weights and the optimiser state
        # only serve to train on, and are dropped unless keep_optimizer (then it stays resumable)
        final_epoch = epoch == cfg.epochs and not cfg.keep_optimizer
        torch.save({
            "trial_id": cfg.trial_id, "epoch": epoch, "step": step, "history": history,
            **({} if final_epoch else {"model": model.state_dict(), "optimizer": optimizer.state_dict()}),
            "ema": ema.state_dict(),
            "weighting": weighting.state_dict(), "method_modules": method.modules.state_dict(),
            "method_state": method.state_dict(), "train_seconds": train_seconds, "images_seen": images_seen,
            "order_hash": first_order,
        }, tmp)
        timing["checkpoint_bytes"] = timing.get("checkpoint_bytes", 0) + tmp.stat().st_size
        os.replace(tmp, ckpt_dir / CHECKPOINT)
        timing.add("checkpoint", time.perf_counter() - t_ckpt)
        if report is not None:
            with timing.phase("report"):
                report(epoch, epoch_metrics, ckpt_dir)
    bar.close()

    # --- final result --------------------------------------------------------------------------
    # resumed from the last epoch's checkpoint (killed before result.json): evaluate the restored EMA
    ran_an_epoch = start <= cfg.epochs
    t_final = time.perf_counter()
    if not ran_an_epoch:
        last_order = epoch_order(n_train, cfg.seed, cfg.epochs, sample_weights)
        evaluation = evaluate_ema(ema.module, method, data, last_order, cfg, backbone, device, ctx, timing)
    final = evaluation
    metrics = {**final.metrics, "epochs": cfg.epochs, "train_seconds": train_seconds,
               "images_per_second": images_seen / train_seconds if train_seconds > 0 else float("nan"),
               "data_order_hash": world_hash, "sample_order_hash": first_order, "sampling": sampling,
               **method.parameter_counts(model)}
    result = result_row(cfg.trial_id, cfg.seed, "done", metrics, sweep=sweep, axes=axes)
    write_json(trial_dir / "result.json", result)
    write_json(trial_dir / "confusion.json", {"class_names": list(cfg.label_space.class_names),
                                              "matrix": final.confusion.tolist()})
    write_json(trial_dir / "circumplex.json", circumplex_record(ctx, method))
    write_json(trial_dir / "history.json", history)
    timing.add("final", time.perf_counter() - t_final)
    timing.add("fit", time.perf_counter() - t_fit - timing.get("timing/paused_s", 0.0))
    write_json(trial_dir / TIMING, dict(timing))
    return TrialResult(metrics=result, trial_dir=trial_dir, history=history, timing=dict(timing))


def freeze_batchnorm_statistics(model: torch.nn.Module) -> None:
    """Put every BatchNorm whose parameters are all frozen (warm-up, lower stages, Ada-DF's stem) in
    eval mode, so that its running statistics stay what they were: frozen means frozen."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


@dataclass
class Evaluation:
    metrics: dict
    confusion: np.ndarray


def evaluates(cfg: TrialConfig, epoch: int) -> bool:
    """The epochs whose evaluation is kept: the last, and every ``eval_every``-th when set. Tune's
    ``report`` needs no evaluation (non-evaluated epochs report their training metrics), nor do
    retries (they resume from the checkpoint, which every epoch writes)."""
    return epoch == cfg.epochs or (cfg.eval_every is not None and epoch % cfg.eval_every == 0)


def evaluate_ema(model, method, data: TrialData, order: np.ndarray, cfg: TrialConfig, backbone, device, ctx,
                 timing: PhaseTimes) -> Evaluation:
    """BatchNorm re-estimated on this epoch's first training batches, then the validation metrics.
    ``update_bn`` resets the running statistics before re-estimating them, so an evaluation depends
    only on the EMA's parameters: how often a trial is evaluated never changes its final metrics."""
    with timing.phase("bn_recalibration"):
        recalibrate_batchnorm(model, data.train_images, order, cfg, backbone, device)
    with timing.phase("eval"):
        return evaluate(model, method, data, cfg, backbone, device, ctx)


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
    """Validation metrics of docs/methods.md §3 and §6 (error structure under the TRUE circumplex)."""
    from analysis.errors import affect_weighted_accuracy, error_severity, quadrant_preservation
    from trainers.geometry import representational_similarity

    va, probs, au, feats = [], [], [], []
    for _, out in iterate_outputs(model, data.val_images, cfg, backbone, device):  # kept on the device:
        va.append(out["va"].float())                                              # one host copy at the end
        probs.append(method.expr_probabilities(out).float())
        au.append(out["au"].float())
        feats.append(out["feat"].float())
    va, probs, au, feats = (torch.cat(t).cpu().numpy() for t in (va, probs, au, feats))
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
    true_geometry = ctx.circumplex.truth
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

        metrics.update(source_error_metrics(confusion, ctx.circumplex.choice))
    return Evaluation(metrics={k: float(v) for k, v in metrics.items()}, confusion=confusion)


def circumplex_record(ctx: MethodContext, method) -> dict:
    """The trial's ``circumplex.json`` (``trainers.geometry.circumplex_record``) from its resolved circumplex."""
    from trainers.geometry import circumplex_record as record

    circ = ctx.circumplex
    if circ.geometry is None and method.ot is None:
        return {"class_names": list(ctx.label_space.class_names), "cost_variant": method.cost_variant,
                "centroids": None, "true_cost": None, "cost_used": None, "derangement": None}
    return record(circ.geometry, circ.choice, true_geometry=circ.distributed)


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
