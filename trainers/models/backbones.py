"""Backbones by name (like timm's ``create_model``), with the stage listing the schedule needs.

``create_backbone(cfg)`` returns a feature extractor (timm model with ``num_classes=0``), its
feature width and the mean/std its pretraining expects. Any timm name works; names registered
with ``@register_backbone`` add loading rules for checkpoints that timm does not know (e.g.
face-pretrained encoders).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.models import group_parameters
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    encoder: nn.Module
    feat_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str


BACKBONES: dict[str, Callable[..., Backbone]] = {}
BACKBONE_ARCHS: dict[str, str] = {}  # registered name -> the timm architecture it builds


def register_backbone(name: str, arch: str | None = None):
    """Register a builder by name; ``arch``: the timm architecture it builds (its data, e.g. input size)."""

    def wrap(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
        BACKBONES[name] = fn
        if arch is not None:
            BACKBONE_ARCHS[name] = arch
        return fn

    return wrap


def fixed_input_size(name: str) -> bool:
    """Whether ``name`` is built for one input resolution (timm's ``pretrained_cfg.fixed_input_size``:
    a ViT's position embeddings), so it is built for the dataset's ``img_size``."""
    try:
        cfg = timm.models.get_pretrained_cfg(BACKBONE_ARCHS.get(name, name))
    except Exception:  # noqa: BLE001 -- a name timm does not know has no such data
        return False
    return bool(cfg is not None and cfg.fixed_input_size)


class WeightsError(RuntimeError):
    """A pretrained weight file is missing or does not fit the architecture."""


def create_backbone(name: str, pretrained: bool | str = False, **kwargs) -> Backbone:
    """Build ``name`` from the registry, else from timm. ``pretrained``: False, True (timm's
    cache/hub) or a local file path (environment variables expanded)."""
    if name in BACKBONES:
        return BACKBONES[name](pretrained=pretrained, **kwargs)
    return timm_backbone(name, pretrained=pretrained, **kwargs)


def timm_backbone(name: str, pretrained: bool | str = False, state_dict_key: str | None = None,
                  key_filter: Callable[[dict], dict] | None = None, mean=None, std=None, **kwargs) -> Backbone:
    if name not in timm.list_models() and name not in timm.list_pretrained():
        import difflib

        close = difflib.get_close_matches(name, [*BACKBONES, *timm.list_models()], n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        raise ValueError(f"backbone.name: unknown backbone {name!r}{hint}")
    use_hub = pretrained is True
    try:
        encoder = timm.create_model(name, pretrained=use_hub, num_classes=0, **kwargs)
    except Exception as e:  # offline hub / missing cache: say what to place where
        if use_hub and _is_download_error(e):
            raise WeightsError(hub_weights_message(name, e)) from None
        raise
    if isinstance(pretrained, str):
        load_checkpoint(encoder, pretrained, state_dict_key=state_dict_key, key_filter=key_filter)
    cfg = getattr(encoder, "pretrained_cfg", {}) or {}
    return Backbone(
        encoder=encoder,
        feat_dim=encoder.num_features,
        mean=tuple(mean or cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(std or cfg.get("std", IMAGENET_STD)),
        name=name,
    )


def load_checkpoint(encoder: nn.Module, path: str, state_dict_key: str | None = None,
                    key_filter: Callable[[dict], dict] | None = None) -> list[str]:
    """Load encoder weights from a local file; fail if any encoder key stays uninitialised."""
    file = Path(os.path.expandvars(os.path.expanduser(path)))
    if not file.is_file():
        raise WeightsError(f"backbone.pretrained: weight file {file} does not exist")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(file, device="cpu")
        else:
            obj = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as e:
        raise WeightsError(f"backbone.pretrained: cannot read {file} ({type(e).__name__}: {e})") from None
    state = obj
    if isinstance(obj, dict) and "trial_id" in obj and "ema" in obj and state_dict_key is None:
        # an affsweep trial checkpoint (checkpoints/last.pt): its evaluated (EMA) encoder
        state = {k.removeprefix("module.encoder."): v for k, v in obj["ema"].items()
                 if k.startswith("module.encoder.")}
    for key in ([state_dict_key] if state_dict_key else ["model", "state_dict", "model_state"]):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise WeightsError(f"backbone.pretrained: {file} holds a {type(state).__name__}, not a state dict")
    if key_filter is not None:
        state = key_filter(state)
    own = encoder.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and hasattr(v, "shape") and v.shape != own[k].shape]
    if wrong:  # a checkpoint of another size (ViT-S for ViT-B, …) would otherwise fail deep inside torch
        raise WeightsError(f"backbone.pretrained: {file} does not fit this architecture: {len(wrong)} tensors have "
                           f"another shape, e.g. {wrong[:3]}")
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("head", "fc."))]
    if missing:
        raise WeightsError(f"backbone.pretrained: {file} lacks {len(missing)} encoder keys, e.g. {missing[:3]}")
    return list(unexpected)


def _is_download_error(e: Exception) -> bool:
    """A failure to fetch weights (offline, no cache, HTTP), not a bad architecture argument."""
    return isinstance(e, OSError) or type(e).__module__.split(".")[0] in {"huggingface_hub", "httpx", "requests",
                                                                          "urllib3"}


def hub_weights_message(name: str, error: Exception | None = None) -> str:
    """Where timm looks for ``name``'s weights and what to place where when it cannot download them."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:
        cfg = None
    repo = getattr(cfg, "hf_hub_id", None)
    try:
        from huggingface_hub import constants

        cache = constants.HF_HUB_CACHE
    except ImportError:
        cache = os.path.join(os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub")
    why = f" ({type(error).__name__})" if error is not None else ""
    if repo:
        filename = getattr(cfg, "hf_hub_filename", None) or "model.safetensors"
        where = (f"timm reads {filename} of the Hugging Face repo {repo} from the cache {cache}. On a machine "
                 f"with internet run `hf download {repo}` and copy the folder models--{repo.replace('/', '--')} "
                 f"into {cache} (or point HF_HOME at a copy of that cache), or download {filename} and set "
                 f"`backbone.pretrained: /path/to/{filename}`")
    else:
        url = getattr(cfg, "url", "") or "its release page"
        where = (f"download the weights ({url}) on a machine with internet and set "
                 f"`backbone.pretrained: /path/to/file`")
    return f"backbone {name!r}: pretrained weights are not in the local cache and cannot be downloaded{why}; {where}."


def encoder_stages(encoder: nn.Module) -> list[list[nn.Parameter]]:
    """Parameters grouped bottom -> top: [stem, block/stage 1, …, block/stage n] (timm's coarse
    group matcher), so the schedule can unfreeze "the upper fraction" of a CNN or a ViT alike."""
    named = dict(encoder.named_parameters())
    try:
        groups = group_parameters(encoder, encoder.group_matcher(coarse=True))
        return [[named[n] for n in names] for _, names in sorted(groups.items())]
    except (AttributeError, NotImplementedError):
        children = [list(c.parameters()) for c in encoder.children()]
        return [c for c in children if c]
