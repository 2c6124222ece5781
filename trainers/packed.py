"""Packed trials: K grid points that share a dataset and a backbone, trained in one process.

Mechanism: interleaved steps. ``trainers.engine.fit_steps`` is ``fit`` as a generator that yields
after every optimisation step; ``fit_packed`` advances the K generators round-robin, one step each.
Every trial keeps everything it has unpacked — its own model, optimiser, EMA, seed streams (data
order and augmentation come from per-trial generators; torch's global RNG, which seeds the
initialisation and dropout, is saved and restored around each trial's steps), its own ``trial_id``,
directory (``result.json``, ``checkpoints/last.pt``, ``timing.json``) and ``report`` hook — so a
packed trial ends with exactly the metrics it has alone, resumes from its own checkpoint, and pairs
like any other. What the K trials share is the process: one decoded copy of the images
(``engine._cached_images``), one world, one set of imports, one CUDA context.

Why interleaved steps rather than a ``torch.func`` vmapped ensemble: vmap needs functional models
(BatchNorm's running statistics and the methods' own modules and optimisers — CAF's critic,
Ada-DF's distributions — do not vmap), and it would make packing change the arithmetic (batched
matmuls), so a packed trial would no longer equal itself alone. Interleaving keeps the exact
per-trial computation. On the CPU it saves the per-trial process, world and data set-up. On CUDA
each trial's steps are issued on its own ``torch.cuda.Stream`` (``streams=True``): kernel launches
are asynchronous and the loop syncs only every ``NAN_CHECK_EVERY`` steps, so while one trial's
host thread prepares the next launch the GPU runs the other trials' kernels — what fills a
launch-bound GPU with small backbones. (The stream path is written for CUDA but has not been run
on a GPU in this change.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from trainers.config import TrialConfig
from trainers.engine import TrialResult, fit_steps


def check_packable(cfgs: Sequence[TrialConfig]) -> None:
    """Packed trials share one dataset and one backbone architecture (and device)."""
    first = cfgs[0]
    for cfg in cfgs[1:]:
        for what in ("dataset", "backbone", "device"):
            if getattr(cfg, what) != getattr(first, what):
                raise ValueError(f"packed trials {first.trial_id} and {cfg.trial_id} differ in {what}: "
                                 "only trials sharing dataset, backbone and device are packed")
    ids = [c.trial_id for c in cfgs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"packed trials repeat a trial_id: {ids}")


def fit_packed(cfgs: Sequence[TrialConfig], trial_dirs: Sequence[str | Path],
               reports: Sequence[Callable | None] | None = None,
               resume_from: Sequence[str | Path | None] | None = None,
               streams: bool = True, sweep: str | None = None,
               axes: Sequence[dict | None] | None = None,
               on_end: Callable[[int, TrialResult | BaseException], None] | None = None,
               ) -> list[TrialResult | BaseException]:
    """Train ``cfgs`` interleaved step by step; one result (or the exception that ended it) per
    trial, in order. A trial that fails does not stop the others. ``sweep`` and each trial's ``axes``
    complete its result row, as in ``fit``. ``on_end(i, outcome)`` is called as trial ``i`` ends,
    while the others still train (the Ray trainable records it there)."""
    check_packable(cfgs)
    k = len(cfgs)
    reports = list(reports) if reports is not None else [None] * k
    resume_from = list(resume_from) if resume_from is not None else [None] * k
    axes = list(axes) if axes is not None else [None] * k
    gens = [fit_steps(c, d, r, progress=False, resume_from=f, sweep=sweep, axes=a)
            for c, d, r, f, a in zip(cfgs, trial_dirs, reports, resume_from, axes)]
    cuda = streams and torch.cuda.is_available() and torch.device(_device(cfgs[0])).type == "cuda"
    cuda_streams = [torch.cuda.Stream() for _ in range(k)] if cuda else [None] * k
    rng: list[torch.Tensor | None] = [None] * k  # each trial's torch RNG state between its steps
    cuda_rng: list[torch.Tensor | None] = [None] * k
    results: list[TrialResult | BaseException | None] = [None] * k
    started = [False] * k
    active = list(range(k))
    while active:
        for i in list(active):
            if rng[i] is not None:
                torch.set_rng_state(rng[i])
                if cuda:
                    torch.cuda.set_rng_state(cuda_rng[i])
            try:
                if cuda:
                    with torch.cuda.stream(cuda_streams[i]):
                        next(gens[i])
                else:
                    next(gens[i])
            except StopIteration as done:
                results[i] = done.value
            except Exception as e:  # noqa: BLE001 — recorded per trial, the others go on
                results[i] = e
            else:
                rng[i] = torch.get_rng_state()
                if cuda:
                    cuda_rng[i] = torch.cuda.get_rng_state()
                    if not started[i]:  # set-up copied shared tensors (device-resident images) on this
                        torch.cuda.synchronize()  # stream: the other streams may read them only after it
                started[i] = True
                continue
            active.remove(i)
            if on_end is not None:
                on_end(i, results[i])
    if cuda:
        torch.cuda.synchronize()
    return results


def _device(cfg: TrialConfig) -> str:
    from trainers.engine import resolve_device

    return str(resolve_device(cfg.device))
