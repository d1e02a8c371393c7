"""The engine's model calls at the paper's real sizes, run without weights: FLOPs and activation bytes.

Each role's modules come from ``int_engine.models.real`` (meta tensors, or FakeTensors for
GroundingDINO) and run the forward passes the backends run, at the shapes the engine sends them:
LLaVA-1.5-13B at 336 px with 576 image tokens and the prompts' lengths in LLaVA-1.5's template,
SD2 inpainting at 512 px, SAM ViT-H at 1024 px, GroundingDINO at 800 x 1333, CLIP at 224 px. A
shape or dtype error at real size fails here, on CPU, as it would on the first GPU run.

``measure`` counts FLOPs with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions
and attention; elementwise work and GroundingDINO's deformable sampling are not counted) and the
peak bytes of the tensors the pass makes (its activations, not the weights or inputs) with
``LiveBytes``. Attention is measured as the GPU's memory-efficient kernel runs it: no score
matrix is made (the CPU's math fallback would make one).
"""

from __future__ import annotations

import os
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from ..models import real

IMAGE_TOKENS = 576  # LLaVA-1.5: (336 / 14)² patches
# LLaVA-1.5's conversation (the authors' llava_v1) around P_B / P_A, in LLaMA tokens: the LLaMA
# tokenizer is not available offline, so these count words and punctuation marks, about one token
# each for plain English (BOS included).
SYSTEM_TOKENS = 32
PROMPT_TOKENS = {"box": 30, "name": 19}
ANSWER_TOKENS = 3  # a candidate name and the end of sequence
TEMPLATES = 85  # CLIP's prompt ensemble (backends.clip_open.PROMPT_TEMPLATES)


@dataclass(frozen=True)
class Cost:
    """One forward pass: FLOPs and the peak bytes of the tensors it made."""

    flops: float
    activation_bytes: int


class LiveBytes(TorchDispatchMode):
    """The bytes of the tensors made under it that are still alive, and their peak: every new
    storage an op returns counts until its tensor is freed (views and in-place results do not)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flags = returns_alias(func)
        outputs = list(out) if isinstance(out, tuple) or len(flags) > 1 else [out]
        for value, aliased in zip(outputs, flags):
            for t in value if isinstance(value, (list, tuple)) else [value]:
                if not isinstance(t, torch.Tensor) or aliased:
                    continue
                nbytes = t.untyped_storage().nbytes()
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, nbytes)
        return out


def returns_alias(func) -> list[bool]:
    """Per return of the ATen op ``func``, whether it aliases an input (a view, an in-place or
    ``out=`` result): its schema's alias annotation. The one use of ``OpOverload._schema``, a
    private name of torch's (pinned by ``tests/models/test_realsize.py``)."""
    schema = getattr(func, "_schema", None)
    if schema is None:
        raise RuntimeError(f"torch {torch.__version__}: {func} has no _schema; update int_engine.bench.realsize.returns_alias")
    return [r.alias_info is not None for r in schema.returns]


def _efficient_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """``F.scaled_dot_product_attention`` as the GPU's memory-efficient kernel computes it: the same
    output, no [L, S] score matrix (a boolean mask becomes the additive bias that kernel takes)."""
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device)
    if attn_mask is not None:
        attn_mask = attn_mask.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
    out = torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, attn_mask, False, 0.0, is_causal, scale=scale)
    return out[0]


@contextmanager
def real_size_run() -> Iterator[None]:
    """What a pass at real size needs: the fused attention above, and transformers' data-dependent
    input checks off (``TRANSFORMERS_DISABLE_TORCH_CHECK``; FakeTensors have no values to check)."""
    before = os.environ.get("TRANSFORMERS_DISABLE_TORCH_CHECK")
    os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = "1"
    original, F.scaled_dot_product_attention = F.scaled_dot_product_attention, _efficient_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original
        if before is None:
            os.environ.pop("TRANSFORMERS_DISABLE_TORCH_CHECK", None)
        else:
            os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = before


def measure(forward: Callable[[], object]) -> Cost:
    """Run ``forward`` (inputs made beforehand) counting its FLOPs and peak new tensor bytes."""
    tracker = LiveBytes()
    with real_size_run(), torch.no_grad(), FlopCounterMode(display=False) as flops, tracker:
        forward()
    return Cost(float(flops.get_total_flops()), tracker.peak)


def meta(*shape: int, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype, device="meta")


# ---- the calls, role by role, at the engine's shapes --------------------------------------------


def vlm_calls(model: torch.nn.Module, images: int, rows: int, tokens: int) -> dict[str, Cost]:
    """LLaVA's passes: ``images`` views through the vision tower and projector; ``rows`` prefills of
    ``tokens`` tokens (image tokens included) through the language model; the LM head in float32
    on one answer position per row (the engine scores answers in float32)."""
    hidden = model.config.text_config.hidden_size
    pixels = meta(images, 3, 336, 336)
    embeds, mask = meta(rows, tokens, hidden), torch.ones(rows, 1, tokens, tokens, dtype=torch.bool, device="meta")
    answer = meta(rows * ANSWER_TOKENS, hidden, dtype=torch.float32)
    head = model.lm_head.weight
    return {
        "vision": measure(
            lambda: model.model.get_image_features(
                pixel_values=pixels, vision_feature_layer=-2, vision_feature_select_strategy="default"
            )
        ),
        "prefill": measure(lambda: model.model.language_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False)),
        "head": measure(lambda: torch.log_softmax(answer @ head.float().t(), dim=-1)),
    }


def inpaint_calls(parts: dict[str, torch.nn.Module], steps: int, jobs: int = 1) -> dict[str, Cost]:
    """SD2 inpainting of ``jobs`` images at 512 px: P_p and P_n through the text encoder, ``steps``
    UNet evaluations at classifier-free guidance's doubled batch on 9-channel 64 x 64 latents, the
    masked image's VAE encoding and the result's decoding."""
    cfg = real.real_config("inpaint")
    size, latent = cfg["image_size"], cfg["image_size"] // 8
    ids = torch.zeros(2 * jobs, cfg["text_length"], dtype=torch.long, device="meta")
    sample, t = meta(2 * jobs, 9, latent, latent), torch.zeros(2 * jobs, device="meta")
    context = meta(2 * jobs, cfg["text_length"], cfg["unet"]["cross_attention_dim"])
    image, latents = meta(jobs, 3, size, size), meta(jobs, 4, latent, latent)
    unet = measure(lambda: parts["unet"](sample, t, encoder_hidden_states=context).sample)
    return {
        "text_encoder": measure(lambda: parts["text_encoder"](ids).last_hidden_state),
        "unet": Cost(unet.flops * steps, unet.activation_bytes),
        "vae_encode": measure(lambda: parts["vae"].encode(image).latent_dist.mean),
        "vae_decode": measure(lambda: parts["vae"].decode(latents).sample),
    }


def segmenter_calls(sam: torch.nn.Module, images: int, prompts: int, points: int) -> dict[str, Cost]:
    """SAM ViT-H: ``images`` views through the image encoder at 1024 px (its dtype), and ``prompts``
    prompts of ``points`` points and a box through the prompt decoder (float32), each with its own
    image embedding (``sam_decode.PromptDecoder``)."""
    from ..backends.sam_decode import PromptDecoder

    size = sam.image_encoder.img_size
    pixels = meta(images, 3, size, size, dtype=sam.image_encoder.patch_embed.proj.weight.dtype)
    g = sam.prompt_encoder.image_embedding_size
    decoder = PromptDecoder(sam)
    emb, coords, labels = (
        meta(prompts, 256, *g, dtype=torch.float32),
        meta(prompts, points + 2, 2, dtype=torch.float32),
        meta(prompts, points + 2, dtype=torch.float32),
    )
    no_mask = meta(1, 1, 4 * g[0], 4 * g[1], dtype=torch.float32)
    return {
        "encoder": measure(lambda: sam.image_encoder(pixels)),
        "decoder": measure(lambda: decoder(emb, coords, labels, no_mask, meta(1, dtype=torch.float32))),
    }


def detector_calls(images: int, text_tokens: int, dtype: torch.dtype = torch.float16) -> dict[str, Cost]:
    """GroundingDINO (Swin-B) on ``images`` views at 800 x 1333 with a ``text_tokens``-token name,
    float32 weights under autocast in ``dtype`` (the backend's way), built and run on FakeTensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    height, width = real.real_config("detector")["image_size"]
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = real.build_detector()
        pixels = torch.zeros(images, 3, height, width)
        pixel_mask = torch.ones(images, height, width, dtype=torch.long)
        ids = torch.ones(images, text_tokens, dtype=torch.long)

        def forward():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != torch.float32):
                return model(pixel_values=pixels, pixel_mask=pixel_mask, input_ids=ids, attention_mask=torch.ones_like(ids))

        return {"forward": measure(forward)}


def clip_calls(model: torch.nn.Module, images: int, texts: int) -> dict[str, Cost]:
    """CLIP ViT-B/16 at 224 px: ``images`` through the surgery path (Spatial CLIP's maps) and through
    the plain image tower (eq 10's scores), and ``texts`` x 85 ensemble prompts through the text tower."""
    from ..backends.clip_open import surgery_forward

    visual = model.visual
    pixels = meta(images, 3, *visual.image_size, dtype=visual.conv1.weight.dtype)
    tokens = torch.zeros(texts * TEMPLATES, 77, dtype=torch.long, device="meta")
    return {
        "surgery": measure(lambda: surgery_forward(visual, pixels, 6)),
        "image": measure(lambda: model.encode_image(pixels)),
        "text": measure(lambda: model.encode_text(tokens)),
    }
