"""The study's ViT-B/16 encoders (paper §5.1), registered by name on top of timm architectures.

=================  ========================================  ============================  ==============
name               timm architecture                         ``pretrained`` source          mean / std
=================  ========================================  ============================  ==============
fsfm_vit_b16       vit_base_patch16_224                      FSFM checkpoint (path only)    VGGFace2 stats
farl_vit_b16       vit_base_patch16_clip_quickgelu_224       FaRL checkpoint (path only)    OpenAI CLIP
siglip2_vit_b16    vit_base_patch16_siglip_224.v2_webli      timm hub cache, or a path      0.5 / 0.5
=================  ========================================  ============================  ==============

Each checkpoint's own layout is mapped onto the timm encoder here, and every encoder tensor must come
from the file (``load_checkpoint`` fails otherwise), so a wrong file can never load as a silent no-op.
Where to get each file and where to put it: docs/backbones.md.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from trainers.models.backbones import (
    Backbone,
    WeightsError,
    load_checkpoint,
    register_backbone,
    timm_backbone,
)

log = logging.getLogger(__name__)

# FSFM normalises with the statistics of its pre-training faces, shipped beside each checkpoint as
# pretrain_ds_mean_std.txt; these are the VGGFace2 values its code falls back to (the ViT-B/16 release
# was pre-trained on VGGFace2).
FSFM_MEAN = (0.5482207536697388, 0.42340534925460815, 0.3654651641845703)
FSFM_STD = (0.2789176106452942, 0.2438540756702423, 0.23493893444538116)
FSFM_STATS_FILE = "pretrain_ds_mean_std.txt"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

# Parts of FSFM's pre-training model that are not the encoder: MAE pixel decoder, representation
# decoder, the contrastive projector/predictor and the mask token.
FSFM_PRETRAIN_ONLY = ("decoder_", "rep_decoder_", "projector.", "predictor.", "mask_token")

SIGLIP2_ARCH = "vit_base_patch16_siglip_224.v2_webli"


def _no_hub(name: str, what: str, where: str) -> WeightsError:
    return WeightsError(
        f"backbone {name!r}: `pretrained: true` has no download source ({what} is not on timm's hub); download "
        f"{where} and set `backbone.pretrained: /path/to/file` (see docs/backbones.md)")


def _drop_head(state: dict, encoder: nn.Module) -> dict:
    """The encoder is built with ``num_classes=0``: a classifier/projection in the file is not part of it."""
    if isinstance(getattr(encoder, "head", None), nn.Identity):
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    return state


def fsfm_to_timm(state: dict, encoder: nn.Module) -> dict:
    """FSFM ``model`` state dict -> timm ViT keys.

    The encoder part already uses timm's names (MAE code); the decoders and the contrastive heads are
    dropped, the position embedding is resampled when the encoder's ``img_size`` differs, and with
    ``global_pool: avg`` (FSFM's own fine-tuning head) the final norm initialises ``fc_norm``."""
    state = {k: v for k, v in state.items() if not k.startswith(FSFM_PRETRAIN_ONLY)}
    state = checkpoint_filter_fn(state, encoder)
    own = encoder.state_dict()
    if "fc_norm.weight" in own and "norm.weight" not in own:
        state = {("fc_" + k if k.startswith("norm.") else k): v for k, v in state.items()}
    return _drop_head(state, encoder)


def openai_clip_to_timm(state: dict, encoder: nn.Module) -> dict:
    """OpenAI-CLIP state dict (``visual.*`` image tower + text tower) -> timm ViT keys, through timm's
    own conversion (``visual.conv1`` -> ``patch_embed.proj``, ``in_proj_*`` -> ``attn.qkv.*``, …); the text
    tower and the image projection ``visual.proj`` are dropped."""
    return _drop_head(checkpoint_filter_fn(state, encoder), encoder)


def timm_vit_to_timm(state: dict, encoder: nn.Module) -> dict:
    """A timm-format file (``model.safetensors``) or an open_clip file (``visual.trunk.*``)."""
    return _drop_head(checkpoint_filter_fn(state, encoder), encoder)


def _load(backbone: Backbone, path: str, convert, state_dict_key: str | None, expected: str) -> None:
    encoder = backbone.encoder
    try:
        unexpected = load_checkpoint(encoder, path, state_dict_key=state_dict_key,
                                     key_filter=lambda state: convert(state, encoder))
    except WeightsError as e:
        if not Path(os.path.expandvars(os.path.expanduser(path))).is_file():
            raise  # "weight file … does not exist" says it all
        raise WeightsError(f"{e} (backbone {backbone.name!r} expects {expected})") from None
    if unexpected:
        log.warning("backbone %s: %d tensors in %s are not part of the encoder and were ignored, e.g. %s",
                    backbone.name, len(unexpected), path, unexpected[:3])


def fsfm_stats(path: str | None) -> tuple[tuple, tuple] | None:
    """(mean, std) from FSFM's ``pretrain_ds_mean_std.txt`` beside the checkpoint (a JSON line with
    ``mean`` and ``std``), or None when there is none."""
    if not isinstance(path, str) or not path:
        return None
    stats = Path(os.path.expandvars(os.path.expanduser(path))).parent / FSFM_STATS_FILE
    if not stats.is_file():
        return None
    try:
        first = json.loads(stats.read_text().splitlines()[0])
        mean, std = tuple(float(x) for x in first["mean"]), tuple(float(x) for x in first["std"])
    except (IndexError, KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"backbone.pretrained: {stats} is not FSFM's mean/std file: expected a JSON line "
                           f'{{"mean": [r, g, b], "std": [r, g, b]}} ({type(e).__name__}: {e})') from None
    if len(mean) != 3 or len(std) != 3:
        raise WeightsError(f"backbone.pretrained: {stats}: mean and std need three values each")
    return mean, std


@register_backbone("fsfm_vit_b16", arch="vit_base_patch16_224")
def fsfm_vit_b16(pretrained: bool | str = False, mean=None, std=None, **kwargs) -> Backbone:
    """FSFM (CVPR 2025) face self-supervised ViT-B/16: ``checkpoint-400.pth`` (the online network,
    ``{"model": {...}}``) with its ``pretrain_ds_mean_std.txt`` read when it lies beside it."""
    if pretrained is True:
        raise _no_hub("fsfm_vit_b16", "FSFM",
                      "pretrained_models/VF2_ViT-B/checkpoint-400.pth and pretrain_ds_mean_std.txt from the "
                      "Hugging Face repo Wolowolo/fsfm-3c")
    file_mean, file_std = fsfm_stats(pretrained) or (FSFM_MEAN, FSFM_STD)
    backbone = timm_backbone("vit_base_patch16_224", pretrained=False, mean=mean or file_mean,
                             std=std or file_std, **kwargs)
    backbone.name = "fsfm_vit_b16"
    if pretrained:
        _load(backbone, pretrained, fsfm_to_timm, state_dict_key="model",
              expected="FSFM's pre-training checkpoint, e.g. checkpoint-400.pth, with the encoder under 'model'")
    return backbone


@register_backbone("farl_vit_b16", arch="vit_base_patch16_clip_quickgelu_224")
def farl_vit_b16(pretrained: bool | str = False, mean=None, std=None, **kwargs) -> Backbone:
    """FaRL (CVPR 2022) face vision-language ViT-B/16: ``FaRL-Base-Patch16-LAIONFace20M-ep64.pth``
    (``{"state_dict": {...}}`` in OpenAI-CLIP naming), image tower only; CLIP's QuickGELU architecture."""
    if pretrained is True:
        raise _no_hub("farl_vit_b16", "FaRL",
                      "FaRL-Base-Patch16-LAIONFace20M-ep64.pth (github.com/FacePerceiver/FaRL, 'Pre-trained "
                      "Backbones')")
    backbone = timm_backbone("vit_base_patch16_clip_quickgelu_224", pretrained=False, mean=mean or CLIP_MEAN,
                             std=std or CLIP_STD, **kwargs)
    backbone.name = "farl_vit_b16"
    if pretrained:
        _load(backbone, pretrained, openai_clip_to_timm, state_dict_key="state_dict",
              expected="a FaRL ViT-B/16 checkpoint, e.g. FaRL-Base-Patch16-LAIONFace20M-ep64.pth, with "
                       "OpenAI-CLIP 'visual.*' keys under 'state_dict'")
    return backbone


@register_backbone("siglip2_vit_b16", arch=SIGLIP2_ARCH)
def siglip2_vit_b16(pretrained: bool | str = False, mean=None, std=None, **kwargs) -> Backbone:
    """SigLIP 2 (2025) general vision-language ViT-B/16 image tower with its attention-pool head.
    ``pretrained: true`` reads timm's Hugging Face cache; a path takes timm's ``model.safetensors``
    or open_clip's ``open_clip_pytorch_model.bin`` / ``open_clip_model.safetensors`` (timm/ViT-B-16-SigLIP2)."""
    try:
        backbone = timm_backbone(SIGLIP2_ARCH, pretrained=pretrained is True, mean=mean or SIGLIP_MEAN,
                                 std=std or SIGLIP_STD, **kwargs)
    except WeightsError as e:
        msg = str(e).replace(f"backbone {SIGLIP2_ARCH!r}", f"backbone 'siglip2_vit_b16' (timm {SIGLIP2_ARCH})", 1)
        raise WeightsError(f"{msg} open_clip's open_clip_pytorch_model.bin from timm/ViT-B-16-SigLIP2 works as "
                           f"`backbone.pretrained` too.") from None
    backbone.name = "siglip2_vit_b16"
    if isinstance(pretrained, str) and pretrained:
        _load(backbone, pretrained, timm_vit_to_timm, state_dict_key=None,
              expected=f"timm's model.safetensors of {SIGLIP2_ARCH} or open_clip's open_clip_pytorch_model.bin "
                       f"of timm/ViT-B-16-SigLIP2")
    return backbone


__all__ = ["CLIP_MEAN", "CLIP_STD", "FSFM_MEAN", "FSFM_STD", "SIGLIP_MEAN", "SIGLIP_STD", "farl_vit_b16",
           "fsfm_stats", "fsfm_to_timm", "fsfm_vit_b16", "openai_clip_to_timm", "siglip2_vit_b16",
           "timm_vit_to_timm"]
