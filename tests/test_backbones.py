"""Backbones by name: every tensor of a face checkpoint lands in the timm encoder, and a wrong or
missing file fails with a message that says what to place where.

Checkpoints are built here from randomly initialised timm models, written in each release's own key
layout (FSFM's ``{"model": …}`` with decoders and contrastive heads, FaRL's OpenAI-CLIP ``{"state_dict":
…}`` with the text tower, timm/open_clip files for SigLIP 2). Every tensor is redrawn before saving, so
a load that silently did nothing would leave the defaults and fail the equality checks. Most tests run
on a 2-block, 64-wide variant of the same architectures (timm kwargs passed through the registered
loaders); one real ViT-B/16 round trip each for FSFM and FaRL checks the full-size layout.
"""

from __future__ import annotations

import json
import re

import pytest
import timm
import torch

from trainers.models import BACKBONES, MultiTaskNet, WeightsError, create_backbone, upper_stages
from trainers.models.backbones import encoder_stages
from trainers.models.face_backbones import CLIP_MEAN, CLIP_STD, FSFM_MEAN, FSFM_STD, SIGLIP_MEAN

TINY = dict(depth=2, embed_dim=64, num_heads=2)
FSFM_ARCH, FARL_ARCH, SIGLIP_ARCH = "vit_base_patch16_224", "vit_base_patch16_clip_quickgelu_224", \
    "vit_base_patch16_siglip_224"


def random_state(arch: str, dtype=torch.float32, **kwargs) -> dict[str, torch.Tensor]:
    """A state dict of ``arch`` (encoder only) with every tensor redrawn, built on the meta device so a
    full ViT-B costs no initialisation."""
    with torch.device("meta"):
        model = timm.create_model(arch, num_classes=0, **kwargs)
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(v.shape, generator=gen).to(dtype) for k, v in model.state_dict().items()}


def fsfm_checkpoint(encoder: dict) -> dict:
    """FSFM's pre-training checkpoint: the online network under "model" (MAE encoder keys, pixel decoder,
    representation decoder, BYOL projector/predictor, mask token) plus the training state."""
    d = encoder["cls_token"].shape[-1]
    extra = {
        "mask_token": torch.randn(1, 1, d),
        "decoder_embed.weight": torch.randn(32, d), "decoder_pos_embed": torch.randn(1, 197, 32),
        "decoder_blocks.0.attn.qkv.weight": torch.randn(96, 32), "decoder_norm.weight": torch.randn(32),
        "decoder_pred.weight": torch.randn(768, 32),
        "rep_decoder_embed.weight": torch.randn(d, d), "rep_decoder_blocks.0.norm1.weight": torch.randn(d),
        "rep_decoder_pred.weight": torch.randn(d, d),
        "projector.projection_head.0.weight": torch.randn(16, d),
        "predictor.projection_head.0.weight": torch.randn(16, 16),
    }
    return {"model": {**encoder, **extra}, "epoch": 399, "optimizer": {"state": {}}}


def to_openai_clip(encoder: dict, embed_out: int = 32) -> dict:
    """A timm CLIP ViT state dict renamed to OpenAI-CLIP's layout (what FaRL ships), plus a text tower."""
    out = {}
    for k, v in encoder.items():
        if k == "cls_token":
            out["visual.class_embedding"] = v.reshape(-1)
            continue
        if k == "pos_embed":
            out["visual.positional_embedding"] = v[0]
            continue
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", k)
        if m:
            rest = m.group(2)
            for timm_name, clip_name in [("norm1", "ln_1"), ("norm2", "ln_2"), ("attn.qkv.", "attn.in_proj_"),
                                         ("attn.proj", "attn.out_proj"), ("mlp.fc1", "mlp.c_fc"),
                                         ("mlp.fc2", "mlp.c_proj")]:
                if rest.startswith(timm_name):
                    out[f"visual.transformer.resblocks.{m.group(1)}.{clip_name}{rest[len(timm_name):]}"] = v
                    break
            else:
                raise KeyError(k)
            continue
        renamed = {"patch_embed.proj.weight": "conv1.weight", "norm_pre.weight": "ln_pre.weight",
                   "norm_pre.bias": "ln_pre.bias", "norm.weight": "ln_post.weight", "norm.bias": "ln_post.bias"}
        out["visual." + renamed[k]] = v
    width = encoder["cls_token"].shape[-1]
    out["visual.proj"] = torch.randn(width, embed_out, dtype=encoder["cls_token"].dtype)
    text = {"token_embedding.weight": torch.randn(100, 32), "positional_embedding": torch.randn(77, 32),
            "transformer.resblocks.0.attn.in_proj_weight": torch.randn(96, 32),
            "transformer.resblocks.0.ln_1.weight": torch.randn(32), "ln_final.weight": torch.randn(32),
            "text_projection": torch.randn(32, embed_out), "logit_scale": torch.tensor(4.6)}
    return {**out, **text}


def assert_loaded(backbone, source: dict) -> None:
    """Every encoder tensor equals the checkpoint's (so nothing kept its initialisation)."""
    own = backbone.encoder.state_dict()
    assert set(own) == set(source)
    different = [k for k, v in source.items() if not torch.equal(own[k], v.to(own[k].dtype))]
    assert not different, different[:5]


# --- FSFM -------------------------------------------------------------------------------------------

def test_fsfm_loads_every_encoder_tensor_and_drops_the_decoders(tmp_path, caplog):
    encoder = random_state(FSFM_ARCH, **TINY)
    path = tmp_path / "checkpoint-400.pth"
    torch.save(fsfm_checkpoint(encoder), path)
    bb = create_backbone("fsfm_vit_b16", str(path), **TINY)
    assert_loaded(bb, encoder)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # every file tensor accounted for
    assert (bb.name, bb.feat_dim, bb.mean, bb.std) == ("fsfm_vit_b16", 64, FSFM_MEAN, FSFM_STD)
    assert bb.encoder(torch.randn(2, 3, 224, 224)).shape == (2, 64)


def test_fsfm_reads_pretrain_ds_mean_std_beside_the_checkpoint(tmp_path):
    torch.save(fsfm_checkpoint(random_state(FSFM_ARCH, **TINY)), tmp_path / "checkpoint-400.pth")
    stats = {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}
    (tmp_path / "pretrain_ds_mean_std.txt").write_text(json.dumps(stats) + "\n")
    bb = create_backbone("fsfm_vit_b16", str(tmp_path / "checkpoint-400.pth"), **TINY)
    assert (bb.mean, bb.std) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    (tmp_path / "pretrain_ds_mean_std.txt").write_text("mean: 0.5\n")
    with pytest.raises(WeightsError, match="pretrain_ds_mean_std.txt"):
        create_backbone("fsfm_vit_b16", str(tmp_path / "checkpoint-400.pth"), **TINY)


def test_fsfm_other_input_size_and_fsfm_finetuning_pool(tmp_path):
    """img_size 112 resamples the position embedding; global_pool avg (FSFM's own fine-tuning head) takes
    the final norm as fc_norm; every other tensor is the checkpoint's."""
    encoder = random_state(FSFM_ARCH, **TINY)
    torch.save(fsfm_checkpoint(encoder), tmp_path / "c.pth")
    bb = create_backbone("fsfm_vit_b16", str(tmp_path / "c.pth"), img_size=112, global_pool="avg", **TINY)
    own = bb.encoder.state_dict()
    assert own["pos_embed"].shape == (1, 1 + 7 * 7, 64)
    assert torch.equal(own["fc_norm.weight"], encoder["norm.weight"])
    same = [k for k in encoder if k not in ("pos_embed", "norm.weight", "norm.bias")]
    assert all(torch.equal(own[k], encoder[k]) for k in same)
    assert bb.encoder(torch.randn(1, 3, 112, 112)).shape == (1, 64)


def test_tensors_the_encoder_does_not_use_are_reported(tmp_path, caplog):
    ckpt = fsfm_checkpoint(random_state(FSFM_ARCH, **TINY))
    ckpt["model"]["aux_head.weight"] = torch.randn(3, 64)
    torch.save(ckpt, tmp_path / "aux.pth")
    create_backbone("fsfm_vit_b16", str(tmp_path / "aux.pth"), **TINY)
    assert any("aux_head.weight" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_checkpoint_lacking_encoder_tensors_names_them(tmp_path):
    ckpt = fsfm_checkpoint(random_state(FSFM_ARCH, **TINY))
    for k in [k for k in ckpt["model"] if k.startswith("blocks.1.")]:
        del ckpt["model"][k]
    torch.save(ckpt, tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match=r"partial\.pth lacks 12 encoder keys, e\.g\. \['blocks\.1\."):
        create_backbone("fsfm_vit_b16", str(tmp_path / "partial.pth"), **TINY)


def test_wrong_file_gives_a_clear_error(tmp_path):
    # a ResNet checkpoint: no ViT key at all
    torch.save({"state_dict": timm.create_model("resnet18", num_classes=0).state_dict()}, tmp_path / "r.pth")
    with pytest.raises(WeightsError, match=r"r\.pth lacks \d+ encoder keys, e\.g\. \[.*(cls_token|pos_embed).*"
                                           r"expects FSFM's pre-training checkpoint"):
        create_backbone("fsfm_vit_b16", str(tmp_path / "r.pth"), **TINY)
    # an FSFM checkpoint of another width (a ViT-S release for a ViT-B model)
    torch.save(fsfm_checkpoint(random_state(FSFM_ARCH, depth=2, embed_dim=32, num_heads=2)), tmp_path / "s.pth")
    with pytest.raises(WeightsError, match=r"s\.pth does not fit this architecture.*\(1, 1, 32\) vs \(1, 1, 64\)"):
        create_backbone("fsfm_vit_b16", str(tmp_path / "s.pth"), **TINY)
    # not a checkpoint at all
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match=r"cannot read .*notes\.pth"):
        create_backbone("fsfm_vit_b16", str(tmp_path / "notes.pth"), **TINY)


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "weights" / "FaRL-Base-Patch16-LAIONFace20M-ep64.pth"
    for name in ("fsfm_vit_b16", "farl_vit_b16", "siglip2_vit_b16", "resnet18"):
        kwargs = {} if name == "resnet18" else TINY
        with pytest.raises(WeightsError, match=re.escape(f"weight file {missing} does not exist")):
            create_backbone(name, str(missing), **kwargs)


def test_face_checkpoints_have_no_hub_source():
    with pytest.raises(WeightsError, match=r"(?s)fsfm_vit_b16.*no download source.*Wolowolo/fsfm-3c.*pretrained: "):
        create_backbone("fsfm_vit_b16", True, **TINY)
    with pytest.raises(WeightsError, match=r"(?s)farl_vit_b16.*no download source.*FaRL-Base-Patch16"):
        create_backbone("farl_vit_b16", True, **TINY)


# --- FaRL -------------------------------------------------------------------------------------------

def test_farl_converts_openai_clip_names_and_drops_the_text_tower(tmp_path, caplog):
    encoder = random_state(FARL_ARCH, dtype=torch.float16, **TINY)  # OpenAI-CLIP releases are fp16
    torch.save({"state_dict": to_openai_clip(encoder)}, tmp_path / "farl.pth")
    bb = create_backbone("farl_vit_b16", str(tmp_path / "farl.pth"), **TINY)
    assert_loaded(bb, encoder)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert (bb.name, bb.feat_dim, bb.mean, bb.std) == ("farl_vit_b16", 64, CLIP_MEAN, CLIP_STD)
    assert next(bb.encoder.parameters()).dtype == torch.float32


def test_farl_checkpoint_without_image_tower_fails(tmp_path):
    ckpt = to_openai_clip(random_state(FARL_ARCH, **TINY))
    text_only = {k: v for k, v in ckpt.items() if not k.startswith("visual.")}
    torch.save({"state_dict": text_only}, tmp_path / "text.pth")
    with pytest.raises(WeightsError, match=r"text\.pth lacks \d+ encoder keys"):
        create_backbone("farl_vit_b16", str(tmp_path / "text.pth"), **TINY)


# --- SigLIP 2 ---------------------------------------------------------------------------------------

def test_siglip2_loads_timm_and_open_clip_files(tmp_path):
    from safetensors.torch import save_file

    encoder = random_state(SIGLIP_ARCH, **TINY)
    save_file(encoder, tmp_path / "model.safetensors")
    bb = create_backbone("siglip2_vit_b16", str(tmp_path / "model.safetensors"), **TINY)
    assert_loaded(bb, encoder)
    assert (bb.name, bb.mean, bb.std) == ("siglip2_vit_b16", SIGLIP_MEAN, SIGLIP_MEAN)
    open_clip = {**{f"visual.trunk.{k}": v for k, v in encoder.items()},
                 "text.trunk.embeddings.word_embeddings.weight": torch.randn(10, 8), "logit_scale": torch.ones(1)}
    torch.save(open_clip, tmp_path / "open_clip_pytorch_model.bin")
    assert_loaded(create_backbone("siglip2_vit_b16", str(tmp_path / "open_clip_pytorch_model.bin"), **TINY),
                  encoder)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """No network and an empty Hugging Face cache, whatever the machine has."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_pretrained_true_offline_says_which_file_to_place_where(offline_hub):
    with pytest.raises(WeightsError) as e:
        create_backbone("siglip2_vit_b16", True, **TINY)
    msg = str(e.value)
    for part in ("siglip2_vit_b16", "timm/vit_base_patch16_siglip_224.v2_webli", "model.safetensors", str(offline_hub),
                 "backbone.pretrained: /path/to/model.safetensors", "open_clip_pytorch_model.bin"):
        assert part in msg, (part, msg)
    with pytest.raises(WeightsError, match=r"(?s)timm/resnet50\.a1_in1k.*" + re.escape(str(offline_hub))):
        create_backbone("resnet50", True)


def test_bad_architecture_argument_is_not_reported_as_missing_weights(offline_hub):
    with pytest.raises(TypeError):
        create_backbone("resnet18", True, no_such_argument=1)


# --- names, normalisation and the unfreezing schedule ------------------------------------------------

def test_registry_and_plain_timm_names():
    assert {"fsfm_vit_b16", "farl_vit_b16", "siglip2_vit_b16"} <= set(BACKBONES)
    bb = create_backbone("resnet18")
    assert (bb.name, bb.feat_dim, bb.mean) == ("resnet18", 512, (0.485, 0.456, 0.406))
    with pytest.raises(ValueError, match='did you mean "fsfm_vit_b16"'):
        create_backbone("fsfm_vit_b61")


def test_upper_fraction_maps_to_vit_blocks_and_resnet_stages():
    vit = create_backbone("fsfm_vit_b16", depth=4, embed_dim=64, num_heads=2).encoder
    stages = encoder_stages(vit)  # stem, block 0..3 (final norm with the last block)
    assert len(stages) == 5
    names = {id(p): n for n, p in vit.named_parameters()}
    top = {names[id(p)] for p in upper_stages(stages, 0.5)}
    assert {n.split(".")[1] for n in top if n.startswith("blocks.")} == {"2", "3"}
    assert {"norm.weight", "norm.bias"} <= top and "cls_token" not in top
    siglip = create_backbone("siglip2_vit_b16", **TINY).encoder
    assert len(encoder_stages(siglip)) == 1 + 2 + 1  # stem, blocks, attention-pool head
    resnet = create_backbone("resnet18").encoder
    names = {id(p): n for n, p in resnet.named_parameters()}
    assert len(encoder_stages(resnet)) == 5  # stem, layer1..layer4
    assert {names[id(p)].split(".")[0] for p in upper_stages(encoder_stages(resnet), 0.25)} == {"layer4"}
    assert {names[id(p)].split(".")[0] for p in upper_stages(encoder_stages(resnet), 0.5)} == {"layer3", "layer4"}


def test_face_backbone_feeds_the_multitask_net():
    bb = create_backbone("farl_vit_b16", img_size=32, **TINY)
    net = MultiTaskNet(bb.encoder, bb.feat_dim, num_classes=8)
    out = net(torch.randn(2, 3, 32, 32))
    assert out["expr"].shape == (2, 8) and out["va"].shape == (2, 2) and out["au"].shape == (2, 12)


# --- full-size ViT-B/16 round trips -------------------------------------------------------------------

def test_fsfm_vit_b16_full_size_round_trip(tmp_path):
    encoder = random_state(FSFM_ARCH)
    torch.save(fsfm_checkpoint(encoder), tmp_path / "checkpoint-400.pth")
    bb = create_backbone("fsfm_vit_b16", str(tmp_path / "checkpoint-400.pth"))
    assert_loaded(bb, encoder)
    assert bb.feat_dim == 768 and len(encoder_stages(bb.encoder)) == 13  # stem + 12 blocks


def test_farl_vit_b16_full_size_round_trip(tmp_path):
    encoder = random_state(FARL_ARCH, dtype=torch.float16)
    torch.save({"state_dict": to_openai_clip(encoder, embed_out=512)}, tmp_path / "farl.pth")
    bb = create_backbone("farl_vit_b16", str(tmp_path / "farl.pth"))
    assert_loaded(bb, encoder)
    assert bb.feat_dim == 768 and len(encoder_stages(bb.encoder)) == 13
