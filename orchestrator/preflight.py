"""Preflight: what a worker would hit deterministically from its configuration, found before anything starts.

``affsweep run`` (and ``--dry-run``) calls :func:`check_sweep` on the expanded plan before Ray, MLflow
or the sweep directory exist; ``affsweep train`` calls :func:`check_trial`. Each distinct dataset,
backbone and (method, dataset labels) combination is checked once, not once per trial:

- dataset: a registered name with its root set, existing and holding what its loader reads (the
  annotation files are parsed as the worker parses them; a sample of the listed images must exist);
  a synthetic preset that exists;
- backbone: a name registered in ``trainers.models`` or known to timm (a near name is suggested);
  a ``pretrained`` path that exists, reads as a checkpoint (``torch.load(weights_only=True, mmap=True)``
  or a safetensors header) and fits the architecture (built on the ``meta`` device: no weights are
  allocated, nothing is trained);
- method: labels the method or its ``cost`` needs that the dataset lacks (``gaussian_w2``, ``instance``
  and ``va_au`` need the dataset's own VA, ``va_au`` its AUs; a VA-less dataset needs
  ``method.imported_from`` for a class-level circumplex), and an ``imported_from`` source that loads.

A problem is a :class:`~trainers.config.ConfigError` of ONE line ``FILE:LINE: key.path: message``, the
line being where the offending value is written (the grid item, the include point, or ``base``).
Option values and key names are checked earlier, by the config models themselves.
"""

from __future__ import annotations

import json
import os
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from analysis.dotted import get_dotted
from trainers.config import TrialConfig
from trainers.config_errors import ConfigError, YamlSource, unknown_message

__all__ = ["check_sweep", "check_trial"]

IMAGE_SAMPLE = 32  # listed images checked per split


class Problem(Exception):
    """A problem of one config, at a key path of TrialConfig (located in the file by the caller)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key, self.message = key, " ".join(str(message).split())  # one line, whatever the source said


# --- entry points ------------------------------------------------------------------------------------

def check_sweep(plan) -> None:
    """Raise ConfigError for the first problem of any trial of ``plan`` (an ``expand.SweepPlan``)."""
    memo: dict[tuple, Problem | None] = {}
    for trial in plan.trials:
        try:
            _check_config(trial.config, memo)
        except Problem as p:
            raise _locate_in_sweep(plan, trial, p) from None


def check_trial(cfg: TrialConfig, path: str | os.PathLike) -> None:
    """Raise ConfigError for the first problem of the trial YAML ``path`` (already validated as ``cfg``)."""
    try:
        _check_config(cfg, {})
    except Problem as p:
        try:
            line = YamlSource(path, Path(path).read_text()).line(p.key)
        except (OSError, UnicodeDecodeError):
            line = None
        raise ConfigError(f"{path}{f':{line}' if line else ''}: {p.key}: {p.message}") from None


def _check_config(cfg: TrialConfig, memo: dict) -> None:
    ds = cfg.dataset
    # what the check reads: not the synthetic draw's size/seed, nor the image size or cache of a real dataset
    labels = _once(memo, ("dataset", _key(ds.model_dump(include={"name", "preset", "root", "every_k", "crop_faces",
                                                                   "drop_tasks"}))),
                   lambda: _check_dataset(ds))
    _once(memo, ("backbone", _key(cfg.backbone.model_dump()), ds.image_size), lambda: _check_backbone(cfg))
    m = cfg.method
    _once(memo, ("method", m.name, m.cost, m.consistency > 0, m.imported_from, labels),
          lambda: _check_method(cfg, labels))


def _once(memo: dict, key: tuple, check: Callable[[], Any]) -> Any:
    """Run ``check`` once per ``key``; a Problem is remembered and raised again for the next trial."""
    if key not in memo:
        try:
            memo[key] = ("ok", check())
        except Problem as p:
            memo[key] = ("problem", p)
    kind, value = memo[key]
    if kind == "problem":
        raise value
    return value


def _key(data: dict) -> str:
    return json.dumps(data, sort_keys=True, default=str)


# --- where in the sweep file ------------------------------------------------------------------------

def _locate_in_sweep(plan, trial, p: Problem) -> ConfigError:
    """The grid item or include point that sets ``p.key`` (or an enclosing mapping) for this trial, else base."""
    from orchestrator.expand import _grid_item, same_value

    spec, src = plan.spec, plan.source
    cfg = trial.config.model_dump(mode="json")

    def covers(k: str) -> bool:
        return p.key == k or p.key.startswith(k + ".")

    def matches(resolved: Any, written: Any) -> bool:  # a written mapping may leave fields at their defaults
        if isinstance(written, dict):
            return isinstance(resolved, dict) and all(matches(resolved.get(k), v) for k, v in written.items())
        return same_value(resolved, written)

    for k, values in spec.grid.items():
        value = next((v for v in values if covers(k) and matches(get_dotted(cfg, k), v)), None)
        if value is not None:
            line = src.line(_grid_item(src, k, value) or f"grid.{k}")
            return _error(src.path, line, f"grid.{k}", p)
    for i, point in enumerate(spec.include):
        for k, v in point.items():
            if covers(k) and matches(get_dotted(cfg, k), v):
                return _error(src.path, src.line(f"include.{i}.{k}"), f"include.{i}.{k}", p)
    return _error(src.path, src.line(f"base.{p.key}"), f"base.{p.key}", p)


def _error(path: str, line: int | None, where: str, p: Problem) -> ConfigError:
    key = where if where.endswith(p.key) else f"{where}: {p.key}"
    return ConfigError(f"{path}{f':{line}' if line else ''}: {key}: {p.message}")


def _expand_path(raw: str, key: str) -> str:
    expanded = os.path.expandvars(os.path.expanduser(raw))
    unset = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", expanded)
    if unset:
        raise Problem(key, f"{raw}: environment variable ${unset[0]} is not set")
    return os.path.abspath(expanded)


# --- dataset -----------------------------------------------------------------------------------------

def _check_dataset(ds) -> tuple[bool, bool]:
    """(has VA, has AU) of the training split as configured; Problem if a worker could not load it."""
    from trainers.data.errors import DataFormatError, find_missing
    from trainers.data.registry import get_dataset

    entry = get_dataset(ds.name)
    if not entry.needs_root:  # synthetic
        from trainers.data.synthetic import PRESETS

        if ds.preset not in PRESETS:
            raise Problem("dataset.preset", unknown_message(ds.preset, list(PRESETS), what="preset"))
        space = PRESETS[ds.preset].label_space
    else:
        space = entry.label_space
        if ds.root is None:
            raise Problem("dataset.root", f"required for dataset {ds.name!r} (a folder with {entry.layout})")
        root = _expand_path(ds.root, "dataset.root")
        if not os.path.isdir(root):
            raise Problem("dataset.root", f"{root}: folder not found (expected {entry.layout})")
        for split in ("train", "val"):
            name = entry.loader_split(split)
            try:
                index = entry.load(root, name, ds, check_images=entry.drops_missing_images)
            except DataFormatError as e:
                raise Problem("dataset.root", str(e)) from None
            except (FileNotFoundError, ValueError) as e:  # the loaders' own messages may name the layout
                layout = "" if "(expected" in str(e) else f" (expected {entry.layout})"
                raise Problem("dataset.root", f"{e}{layout}") from None
            if len(index) == 0:
                raise Problem("dataset.root", f"{root}: the {name} split has no examples")
            paths = index["path"].astype(str).tolist()
            step = max(1, len(paths) // IMAGE_SAMPLE)
            sample = paths[::step][:IMAGE_SAMPLE]
            missing = find_missing(sample)
            if missing:
                raise Problem("dataset.root", f"{len(missing)} of {len(sample)} sampled {name} images not found, "
                                              f"e.g. {sample[missing[0]]} (expected {entry.layout})")
    return space.has_va and "va" not in ds.drop_tasks, space.has_au and "au" not in ds.drop_tasks


# --- backbone ----------------------------------------------------------------------------------------

def _check_backbone(cfg: TrialConfig) -> None:
    import difflib

    import timm

    from trainers.models import BACKBONES

    bb = cfg.backbone
    known = bb.name in BACKBONES or bb.name in _timm_names()
    if not known:
        close = difflib.get_close_matches(bb.name, [*BACKBONES, *timm.list_models()], n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else " (a name registered in trainers.models or known to timm)"
        raise Problem("backbone.name", f"unknown backbone {bb.name!r}{hint}")
    if isinstance(bb.pretrained, str):
        file = _expand_path(bb.pretrained, "backbone.pretrained")
        if os.path.isdir(file):
            raise Problem("backbone.pretrained", f"{file} is a folder, not a weight file")
        if not os.path.isfile(file):
            raise Problem("backbone.pretrained", f"weight file {file} does not exist")
        _read_checkpoint_header(file)
        _fits_architecture(cfg, file)


_TIMM_NAMES: set[str] | None = None


def _timm_names() -> set[str]:
    global _TIMM_NAMES
    if _TIMM_NAMES is None:
        import timm

        _TIMM_NAMES = set(timm.list_models()) | set(timm.list_pretrained())
    return _TIMM_NAMES


def _read_checkpoint_header(file: str) -> None:
    """A safetensors header, or a torch checkpoint opened without running pickled code where possible."""
    import pickle

    import torch

    if file.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(file, framework="pt") as f:
                keys = list(f.keys())
        except Exception as e:  # noqa: BLE001 -- any failure to parse the header is a corrupt file
            raise Problem("backbone.pretrained", f"{file} is not a readable safetensors file (corrupt or "
                                                 f"truncated? {type(e).__name__}: {e})") from None
        if not keys:
            raise Problem("backbone.pretrained", f"{file} holds no tensors")
        return
    is_zip = zipfile.is_zipfile(file)
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):
            return  # a full pickle (e.g. training args saved beside the weights): the key check reads it
        raise Problem("backbone.pretrained", f"{file} is corrupt or not a checkpoint ({_short(e)})") from None
    except Exception as e:  # noqa: BLE001 -- zip/EOF/runtime errors all mean the file cannot be read
        raise Problem("backbone.pretrained", f"{file} is corrupt or not a checkpoint ({_short(e)})") from None
    if not isinstance(obj, dict):
        raise Problem("backbone.pretrained", f"{file} holds a {type(obj).__name__}, not a state dict")


def _short(e: Exception) -> str:
    """The telling line of a (often many-line) torch/pickle error."""
    text = str(e)
    if "error:" in text:  # torch's weights_only message: the reason follows its "WeightsUnpickler error:"
        text = text.split("error:", 1)[1]
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    return f"{type(e).__name__}: {line[:160]}"


def _fits_architecture(cfg: TrialConfig, file: str) -> None:
    """Build the backbone on the meta device and load ``file`` as the worker would (keys and shapes)."""
    import torch

    from trainers.engine import backbone_kwargs
    from trainers.models import WeightsError, create_backbone

    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "copying ... to a meta parameter is a no-op": the point here
            create_backbone(cfg.backbone.name, file, **backbone_kwargs(cfg))
    except WeightsError as e:
        raise Problem("backbone.pretrained", str(e).removeprefix("backbone.pretrained: ")) from None


# --- method and cost ---------------------------------------------------------------------------------

_OWN_VA_COSTS = ("gaussian_w2", "instance", "va_au")
_CIRCUMPLEX_COSTS = ("circumplex",)  # sources (permuted/uniform are the circumplex's controls)


def _check_method(cfg: TrialConfig, labels: tuple[bool, bool]) -> None:
    from trainers.costs import cost_key, cost_pair
    from trainers.methods import METHOD_REGISTRY

    has_va, has_au = labels
    m, ds = cfg.method, cfg.dataset
    what = f"dataset {ds.name!r}" + (f" (preset {ds.preset})" if ds.name == "synthetic" else "") + (
        f" with drop_tasks {ds.drop_tasks}" if ds.drop_tasks else "")
    have = {"va": has_va, "au": has_au}
    for task in METHOD_REGISTRY[m.name].needs_labels:
        if not have.get(task, True):
            raise Problem("method.name", f"method {m.name!r} needs {task.upper()} labels on the training split; "
                                         f"{what} has none")
    # the checks are the SOURCE's: {source: gaussian_w2, control: permuted} needs VA as gaussian_w2 does
    pair = cost_pair(m.cost)
    source, label = (pair[0] if pair else "none"), cost_key(m.cost)
    if source in _OWN_VA_COSTS and not has_va:
        raise Problem("method.cost", f"cost {label!r} needs the dataset's own VA labels; {what} has none "
                                     f"(use circumplex, permuted or uniform with method.imported_from, or imported)")
    if source == "va_au" and not has_au:
        raise Problem("method.cost", f"cost {label!r} needs AU labels; {what} has none (use gaussian_w2 or circumplex)")
    if source == "imported" and m.imported_from is None:
        raise Problem("method.imported_from", f"required by cost: {label} (e.g. 'synthetic:affectnet_like' or a "
                                              "circumplex.json path)")
    if not has_va and m.imported_from is None:
        if source in _CIRCUMPLEX_COSTS:
            raise Problem("method.cost", f"cost {label!r} needs a circumplex, but {what} has no VA labels; set "
                                         f"method.imported_from (e.g. 'synthetic:affectnet_like')")
        if m.consistency > 0:
            raise Problem("method.consistency", f"the consistency term needs class centroids in VA, but {what} "
                                                f"has no VA labels; set method.imported_from")
    if m.imported_from is not None:
        _check_import_source(m.imported_from)


def _check_import_source(source: str) -> None:
    if source.startswith("synthetic:"):
        from trainers.data.synthetic import PRESETS

        preset = source.split(":", 1)[1]
        if preset not in PRESETS:
            raise Problem("method.imported_from", unknown_message(preset, list(PRESETS), what="synthetic preset"))
        return
    from trainers.geometry import load_import_source

    _expand_path(source, "method.imported_from")
    try:
        load_import_source(source)
    except (ValueError, UnicodeDecodeError) as e:
        raise Problem("method.imported_from", str(e).removeprefix("method.imported_from: ")) from None
