"""Tiny SDXL inpainting: the real diffusers classes, tiny configs, random weights.

The directory written here has the layout of ``diffusers/stable-diffusion-xl-1.0-inpainting-0.1``::

    model_index.json                      StableDiffusionXLInpaintPipeline
    unet/config.json + diffusion_pytorch_model.safetensors   UNet2DConditionModel, 9 input channels,
                                          "text_time" added conditioning (SDXL's micro-conditioning)
    vae/config.json + diffusion_pytorch_model.safetensors    AutoencoderKL (SDXL's scaling 0.13025)
    text_encoder/config.json + model.safetensors             CLIPTextModel
    text_encoder_2/config.json + model.safetensors           CLIPTextModelWithProjection
    tokenizer/, tokenizer_2/              vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json
    scheduler/scheduler_config.json       EulerDiscreteScheduler, as the real one

so ``DiffusersInpainter.load`` (through ``AutoPipelineForInpainting``) reads both with one code
path. Only the sizes differ from the real checkpoint: a 2-level UNet (32, 64) with one layer per
block and cross-attention on the deeper level (SDXL: no attention in the first level), a 2-block
VAE (latent scale 2 instead of 8), two 2-layer CLIP text encoders of width 32 whose
penultimate hidden states are concatenated (cross-attention width 64), and the CLIP BPE
vocabulary trained on the engine's corpus by ``tiny_inpaint``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .tiny_inpaint import (
    SCALES,
    SD_NOISE_SCHEDULE,
    TINY_TEXT,
    clip_text_config,
    save_pipeline,
    start_pipeline_dir,
    tiny_vae,
)

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel

FORMAT = "diffusers-sdxl-inpaint"
_TIME_DIM = 8  # SDXL: addition_time_embed_dim 256 per micro-conditioning number, 6 numbers


def _unet() -> UNet2DConditionModel:
    """SDXL's 9-channel inpainting UNet with "text_time" micro-conditioning, tiny."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16,
        in_channels=9,  # 4 noisy latents + 1 mask + 4 masked-image latents
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 1),
        use_linear_projection=True,
        norm_num_groups=32,
        cross_attention_dim=2 * TINY_TEXT["hidden_size"],  # both encoders' hidden states, concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=_TIME_DIM,
        # 6 micro-conditioning numbers (original size, crop, target size) + the pooled text embedding
        projection_class_embeddings_input_dim=6 * _TIME_DIM + TINY_TEXT["projection_dim"],
    )


def build(out_dir: Path, seed: int = 0, scale: str = "tiny") -> dict:
    """Write a randomly initialised SDXL-inpainting pipeline to ``out_dir`` (``scale``: "tiny" only).

    Deterministic in ``seed``. Returns ``{"format": "diffusers-sdxl-inpaint", "params": N}`` with
    N the parameter count of UNet + VAE + both text encoders.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLInpaintPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if scale != "tiny":
        raise ValueError(f"inpaint: unknown SDXL zoo scale {scale!r}; scales are tiny")
    tokenizers = start_pipeline_dir(out_dir, seed, ("tokenizer", "tokenizer_2"))
    tokenizer, tokenizer_2 = tokenizers.load()
    # SDXL's pair: CLIP ViT-L's text model (quick GELU) and OpenCLIP bigG's with its projection (GELU).
    text_encoder = CLIPTextModel(clip_text_config(tokenizers.vocab, "quick_gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(tokenizers.vocab, "gelu"))

    unet = _unet()
    vae = tiny_vae(SCALES["tiny"]["vae"], latent_channels=4, scaling_factor=0.13025, force_upcast=True)
    # The real checkpoint's scheduler (scheduler/scheduler_config.json of SDXL inpainting 0.1).
    scheduler = EulerDiscreteScheduler(
        **SD_NOISE_SCHEDULE, timestep_spacing="leading", interpolation_type="linear", use_karras_sigmas=False
    )
    pipe = StableDiffusionXLInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    return save_pipeline(pipe, tokenizers, (unet, vae, text_encoder, text_encoder_2), FORMAT)
