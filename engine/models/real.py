"""The paper's five checkpoints at their real sizes, without their weights.

``models/real_configs/<role>.json`` holds each checkpoint's architecture as data (the public
``config.json`` fields of llava-hf/llava-1.5-13b-hf, stable-diffusion-2-inpainting's UNet, VAE
and text encoder, SAM's vit_h, IDEA-Research/grounding-dino-base, and open_clip's ViT-B-16 with
OpenAI's QuickGELU; written down by us). ``build(role)`` makes the role's modules from it with
no memory behind their tensors: on the meta device, or, for GroundingDINO (whose forward builds
CPU tensors of its own), under a ``FakeTensorMode`` the caller holds. This is the ``real`` zoo
scale: the same classes as the tiny zoo, at the shapes the engine will meet on a GPU, so that a
shape or dtype error at real size fails on CPU, and FLOPs and activation bytes can be counted
(``int_engine.bench.realsize``).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).parent / "real_configs"
ROLES = ("vlm", "inpaint", "detector", "segmenter", "clip")


@lru_cache(maxsize=None)
def real_config(role: str) -> dict[str, Any]:
    """The checkpoint's architecture for ``role`` (a fresh copy is the caller's to change)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    return json.loads((ROOT / f"{role}.json").read_text(encoding="utf-8"))


def build_vlm(dtype: torch.dtype = torch.float16) -> torch.nn.Module:
    """LLaVA-1.5-13B (transformers ``LlavaForConditionalGeneration``) on the meta device."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    cfg = {k: v for k, v in real_config("vlm")["config"].items() if k != "model_type"}
    with torch.device("meta"):
        return LlavaForConditionalGeneration(LlavaConfig(**json.loads(json.dumps(cfg)))).to(dtype).eval()


def build_inpaint(dtype: torch.dtype = torch.float16) -> dict[str, torch.nn.Module]:
    """SD2 inpainting's UNet, VAE and text encoder (diffusers / transformers classes) on meta."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = real_config("inpaint")
    with torch.device("meta"):
        return {
            "unet": UNet2DConditionModel.from_config(dict(cfg["unet"])).to(dtype).eval(),
            "vae": AutoencoderKL.from_config(dict(cfg["vae"])).to(dtype).eval(),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])).to(dtype).eval(),
        }


def build_segmenter(dtype: torch.dtype = torch.float16) -> torch.nn.Module:
    """SAM ViT-H as the engine builds it (``segment_sam.build_sam``: SDPA attention) on meta; the
    image encoder in ``dtype``, the prompt side in float32, as ``segment_sam.load_sam`` does."""
    from ..backends.segment_sam import PUBLISHED, build_sam

    with torch.device("meta"):
        sam = build_sam(PUBLISHED[real_config("segmenter")["model_type"]])
    sam.image_encoder.to(dtype)
    return sam


def build_detector() -> torch.nn.Module:
    """GroundingDINO with Swin-B (transformers ``GroundingDinoForObjectDetection``), float32
    weights as the backend keeps them. Call it under a ``FakeTensorMode``: its forward makes CPU
    tensors of its own (position embeddings), which meta inputs would not meet."""
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection

    cfg = {k: v for k, v in real_config("detector")["config"].items() if k != "model_type"}
    return GroundingDinoForObjectDetection(GroundingDinoConfig(**json.loads(json.dumps(cfg)))).eval()


def build_clip(dtype: torch.dtype = torch.float16) -> torch.nn.Module:
    """open_clip's ``CLIP`` ViT-B/16 with QuickGELU (OpenAI's weights) on meta."""
    from open_clip.model import CLIP

    cfg = json.loads(json.dumps(real_config("clip")["model_cfg"]))
    with torch.device("meta"):
        return CLIP(**cfg).to(dtype).eval()


def parameter_count(module: torch.nn.Module | dict[str, torch.nn.Module]) -> int:
    modules = module.values() if isinstance(module, dict) else [module]
    return sum(p.numel() for m in modules for p in m.parameters())
