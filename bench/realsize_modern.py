"""The ``modern`` lineup's model calls at real size, run without weights: FLOPs and activation bytes.

As ``bench.realsize`` does for the paper's models (``measure``: FLOPs counted by torch's
``FlopCounterMode``, the peak bytes of the tensors a pass makes by ``LiveBytes``, attention as the
GPU's memory-efficient kernel runs it), for the modules ``models.real_modern`` builds: Qwen3-VL-8B's
vision tower on 768 px views and its language model's prefill with the KV cache it keeps for
generation, SDXL inpainting at 1024 px (its VAE in float32, as diffusers upcasts SDXL's VAE),
SAM 2.1 hiera-large at 1024 px and SAM 3's vision backbone at 1008 px.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F

from ..models import real_modern as rm
from .realsize import Cost, measure, meta


@contextmanager
def grouped_kv() -> Iterator[None]:
    """Grouped-query attention through ``realsize``'s kernel stand-in (which takes as many key /
    value heads as query heads): the key and value heads broadcast to the query's, as views."""
    inner = F.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if k.shape[1] != q.shape[1]:
            n = q.shape[1] // k.shape[1]
            k, v = (x[:, :, None].expand(x.shape[0], x.shape[1], n, *x.shape[2:]).flatten(1, 2) for x in (k, v))
        return inner(q, k, v, attn_mask, dropout_p, is_causal, scale)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = inner


def vlm_vision(model: torch.nn.Module, images: int, side: int) -> Cost:
    """Qwen3-VL's vision tower (patch embedding, 27 blocks, merger and DeepStack mergers) on
    ``images`` views of ``side`` px. Its grid-dependent inputs (position interpolation, rotary
    positions, sequence boundaries) are computed from the grid on CPU beforehand, as the tower
    would compute them; the boundaries stay on CPU (the tower splits its attention by them)."""
    from transformers.vision_utils import (
        get_vision_cu_seqlens,
        get_vision_interpolation_indices_and_weights,
        get_vision_position_ids,
    )

    visual = model.model.visual
    cfg = visual.config
    patches = side // cfg.patch_size
    grid = torch.tensor([[1, patches, patches]] * images)
    indices, weights = get_vision_interpolation_indices_and_weights(
        grid,
        num_grid_per_side=visual.num_grid_per_side,
        mode=visual.interpolation_mode,
        align_corners=visual.interpolation_align_corners,
        spatial_merge_size=cfg.spatial_merge_size,
    )
    given = {
        "interp_indices": indices.to("meta"),
        "interp_weights": weights.to("meta"),
        "position_ids": get_vision_position_ids(grid, cfg.spatial_merge_size).to("meta"),
        "cu_seqlens": get_vision_cu_seqlens(grid),
    }
    dtype = visual.patch_embed.proj.weight.dtype
    pixels = meta(images * patches * patches, cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size**2, dtype=dtype)
    return measure(lambda: visual(pixels, grid_thw=grid.to("meta"), **dict(given)))


def vlm_calls(model: torch.nn.Module, images: int, side: int, rows: int, tokens: int) -> dict[str, Cost]:
    """Qwen3-VL-8B: ``images`` views through the vision tower; ``rows`` prefills of ``tokens``
    tokens through the language model with the KV cache that ``generate`` keeps (counted in the
    prefill's activations), its default 3-axis rotary positions; the LM head in float32 on one
    answer position per row (the engine scores answers in float32)."""
    from transformers import DynamicCache

    lm = model.model.language_model
    text = model.config.text_config
    embeds = meta(rows, tokens, text.hidden_size, dtype=lm.embed_tokens.weight.dtype)
    answer = meta(rows, text.hidden_size, dtype=torch.float32)
    head = model.lm_head.weight

    def prefill():
        with grouped_kv():
            return lm(inputs_embeds=embeds, use_cache=True, past_key_values=DynamicCache(config=text))

    return {
        "vision": vlm_vision(model, images, side),
        "prefill": measure(prefill),
        "head": measure(lambda: torch.log_softmax(answer @ head.float().t(), dim=-1)),
    }


def kv_cache_bytes(model: torch.nn.Module, tokens: int, dtype_bytes: int = 2) -> int:
    """The KV cache of ``tokens`` tokens: keys and values of every layer's key-value heads."""
    text = model.config.text_config
    return 2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim * dtype_bytes * tokens


def inpaint_calls(parts: dict[str, torch.nn.Module], steps: int, jobs: int = 1) -> dict[str, Cost]:
    """SDXL inpainting of ``jobs`` images at 1024 px: P_p and P_n through both text encoders,
    ``steps`` UNet evaluations at classifier-free guidance's doubled batch on 9-channel 128 x 128
    latents (SDXL's pooled text embedding and six size / crop ids as added conditions), the masked
    image's VAE encoding and the result's decoding in float32 (SDXL's VAE ``force_upcast``)."""
    cfg = rm.modern_config("inpaint")
    size, latent, length = cfg["image_size"], cfg["image_size"] // 8, cfg["text_length"]
    dtype = parts["unet"].dtype
    rows = 2 * jobs
    ids = torch.zeros(rows, length, dtype=torch.long, device="meta")
    sample, t = meta(rows, 9, latent, latent, dtype=dtype), torch.zeros(rows, device="meta")
    context = meta(rows, length, cfg["unet"]["cross_attention_dim"], dtype=dtype)
    added = {
        "text_embeds": meta(rows, cfg["text_encoder_2"]["projection_dim"], dtype=dtype),
        "time_ids": meta(rows, 6, dtype=dtype),
    }
    vae = parts["vae"].float()
    image, latents = meta(jobs, 3, size, size, dtype=torch.float32), meta(jobs, 4, latent, latent, dtype=torch.float32)
    unet = measure(lambda: parts["unet"](sample, t, encoder_hidden_states=context, added_cond_kwargs=added).sample)

    def text():
        return parts["text_encoder"](ids, output_hidden_states=True), parts["text_encoder_2"](ids, output_hidden_states=True)

    return {
        "text_encoders": measure(text),
        "unet": Cost(unet.flops * steps, unet.activation_bytes),
        "vae_encode": measure(lambda: vae.encode(image).latent_dist.mean),
        "vae_decode": measure(lambda: vae.decode(latents).sample),
    }


def segmenter_calls(sam: torch.nn.Module, images: int, prompts: int, points: int) -> dict[str, Cost]:
    """SAM 2.1: ``images`` views through the image encoder at 1024 px (``get_image_embeddings``,
    its dtype); ``prompts`` prompts of ``points`` points and a box through the prompt encoder and
    mask decoder in float32, each on its own float32 copy of its image's three feature maps (the
    copies counted, as ``segment_sam2`` makes them), three masks per prompt."""
    size = rm.modern_config("segmenter")["image_size"]
    dtype = sam.vision_encoder.backbone.patch_embed.projection.weight.dtype
    pixels = meta(images, 3, size, size, dtype=dtype)
    with torch.no_grad():
        levels = [e.float() for e in sam.get_image_embeddings(meta(1, 3, size, size, dtype=dtype))]
    rows = torch.zeros(prompts, dtype=torch.long, device="meta")
    boxes = meta(prompts, 1, 4, dtype=torch.float32)
    coords, labels = (
        meta(prompts, 1, points, 2, dtype=torch.float32),
        torch.ones(prompts, 1, points, dtype=torch.long, device="meta"),
    )

    def decode():
        embeddings = [level.index_select(0, rows) for level in levels]
        return sam(
            image_embeddings=embeddings, input_points=coords, input_labels=labels, input_boxes=boxes, multimask_output=True
        )

    return {"encoder": measure(lambda: sam.get_image_embeddings(pixels)), "decoder": measure(decode)}


def concept_calls(sam3: torch.nn.Module, images: int) -> dict[str, Cost]:
    """SAM 3's vision backbone (ViT and FPN neck) on ``images`` views at 1008 px, float32 as the
    meta run has no autocast (on the GPU the backend runs it under half-precision autocast, so
    this peak is an upper bound)."""
    size = rm.modern_config("concept")["image_size"]
    pixels = meta(images, 3, size, size, dtype=torch.float32)
    return {"vision": measure(lambda: sam3.get_vision_features(pixel_values=pixels))}
