"""The ``modern`` preset's checkpoints at their real sizes, without their weights.

``models/real_configs/modern_<role>.json`` holds each checkpoint's architecture as data (each
file's "source" says which published repository it describes and where a value is transformers'
default rather than a published one): Qwen/Qwen3-VL-8B-Instruct, diffusers'
stable-diffusion-xl-1.0-inpainting-0.1 (UNet, VAE, both CLIP text encoders),
facebook/sam2.1-hiera-large and, for the optional concept role, facebook/sam3. GroundingDINO and
CLIP are the paper lineup's (``models.real``). The builders make the modules the backends load,
on the meta device, in the precision the backends keep them in, so that FLOPs, weights and
activation bytes can be counted at real size (``int_engine.bench.realsize_modern``). The SAM
models' parameters are built without ``requires_grad`` (inference only: their forward returns
some parameters as they are, which torch's module tracker cannot hook under ``no_grad``).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import torch

from . import real

ROLES = ("vlm", "inpaint", "detector", "segmenter", "clip", "concept")
OWN = ("vlm", "inpaint", "segmenter", "concept")  # the roles with a modern_<role>.json


@lru_cache(maxsize=None)
def _config(role: str) -> str:
    if role not in OWN:
        raise ValueError(f"no modern config for role {role!r}; roles with one are {', '.join(OWN)}")
    return (real.ROOT / f"modern_{role}.json").read_text(encoding="utf-8")


def modern_config(role: str) -> dict[str, Any]:
    """The checkpoint's architecture for ``role`` (a fresh copy, the caller's to change)."""
    return json.loads(_config(role))


def _sub(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k != "model_type"}


def build_vlm(dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """Qwen3-VL-8B-Instruct (transformers ``Qwen3VLForConditionalGeneration``) on meta, SDPA attention."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    cfg = _sub(modern_config("vlm")["config"])
    config = Qwen3VLConfig(**cfg)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        return Qwen3VLForConditionalGeneration(config).to(dtype).eval()


def build_inpaint(dtype: torch.dtype = torch.float16) -> dict[str, torch.nn.Module]:
    """SDXL inpainting 0.1's UNet, VAE and two text encoders (diffusers / transformers classes) on meta."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = modern_config("inpaint")
    with torch.device("meta"):
        return {
            "unet": UNet2DConditionModel.from_config(dict(cfg["unet"])).to(dtype).eval(),
            "vae": AutoencoderKL.from_config(dict(cfg["vae"])).to(dtype).eval(),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])).to(dtype).eval(),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoder_2"])).to(dtype).eval(),
        }


def build_segmenter(dtype: torch.dtype = torch.float16) -> torch.nn.Module:
    """SAM 2.1 hiera-large (transformers ``Sam2Model``) on meta as ``segment_sam2.load`` keeps it:
    float32, then the image encoder in ``dtype`` with float32 LayerNorms (``half_encoder``)."""
    from transformers import Sam2Config, Sam2Model

    from ..backends.segment_sam2 import half_encoder

    config = Sam2Config(**_sub(modern_config("segmenter")["config"]))
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = Sam2Model(config).eval().requires_grad_(False)
    if dtype != torch.float32:
        half_encoder(model, dtype)
    return model


def build_concept() -> torch.nn.Module:
    """SAM 3 (transformers ``Sam3Model``) on meta, float32 weights as ``segment_sam3.load`` keeps
    them (it runs them under autocast)."""
    from transformers import Sam3Config, Sam3Model

    config = Sam3Config(**_sub(modern_config("concept")["config"]))
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        return Sam3Model(config).eval().requires_grad_(False)


def build(role: str, dtype: torch.dtype = torch.float16) -> torch.nn.Module | dict[str, torch.nn.Module]:
    """The role's modules on meta (GroundingDINO and CLIP: the paper lineup's, ``models.real``)."""
    if role == "vlm":
        return build_vlm(dtype)
    if role == "inpaint":
        return build_inpaint(dtype)
    if role == "segmenter":
        return build_segmenter(dtype)
    if role == "concept":
        return build_concept()
    if role == "detector":
        with torch.device("meta"):
            return real.build_detector()
    if role == "clip":
        return real.build_clip(dtype)
    raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")


parameter_count = real.parameter_count
