"""Tiny Stable Diffusion 3: the real diffusers classes, tiny configs, random weights, no T5.

The directory written here has the layout of ``stabilityai/stable-diffusion-3-medium-diffusers``
loaded without its T5 encoder (diffusers' documented ``text_encoder_3=None, tokenizer_3=None``)::

    model_index.json                      StableDiffusion3Pipeline, text_encoder_3 / tokenizer_3 null
    transformer/config.json + diffusion_pytorch_model.safetensors   SD3Transformer2DModel, 16 channels
    vae/config.json + diffusion_pytorch_model.safetensors           AutoencoderKL, 16 latent channels
                                          (SD3's scaling 1.5305, shift 0.0609, no quant convs)
    text_encoder/, text_encoder_2/        CLIPTextModelWithProjection (config.json + model.safetensors)
    tokenizer/, tokenizer_2/              vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json
    scheduler/scheduler_config.json       FlowMatchEulerDiscreteScheduler (shift 3), as the real one

SD3 has no inpainting checkpoint of its own: ``AutoPipelineForInpainting`` maps this
text-to-image directory to ``StableDiffusion3InpaintPipeline``, which keeps the unmasked latents
(16-channel transformer) rather than feeding the mask to the model. Without T5 the pipeline uses
zeros for T5's tokens. Only the sizes differ from the real checkpoint: a 2-layer MMDiT of width
32 (4 heads of 8), patch 2, a 2-block VAE (latent scale 2 instead of 8), two 2-layer CLIP text
encoders of width 32 (their concatenated hidden states, 64 wide, are the joint attention
width; their pooled projections, 32 + 32, the pooled width), and the CLIP BPE vocabulary
trained on the engine's corpus by ``tiny_inpaint``.
"""

from __future__ import annotations

from pathlib import Path

from .tiny_inpaint import SCALES, TINY_TEXT, clip_text_config, save_pipeline, start_pipeline_dir, tiny_vae

FORMAT = "diffusers-sd3"


def build(out_dir: Path, seed: int = 0, scale: str = "tiny") -> dict:
    """Write a randomly initialised SD3 pipeline without T5 to ``out_dir`` (``scale``: "tiny" only).

    Deterministic in ``seed``. Returns ``{"format": "diffusers-sd3", "params": N}`` with N the
    parameter count of transformer + VAE + both text encoders.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    if scale != "tiny":
        raise ValueError(f"inpaint: unknown SD3 zoo scale {scale!r}; scales are tiny")
    tokenizers = start_pipeline_dir(out_dir, seed, ("tokenizer", "tokenizer_2"))
    tokenizer, tokenizer_2 = tokenizers.load()
    # SD3's CLIP pair: CLIP ViT-L (quick GELU) and OpenCLIP bigG (GELU), both with projections.
    text_encoder = CLIPTextModelWithProjection(clip_text_config(tokenizers.vocab, "quick_gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(tokenizers.vocab, "gelu"))

    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=2 * TINY_TEXT["hidden_size"],  # the CLIP pair's hidden states (T5's width when present)
        caption_projection_dim=32,  # = heads x head width, as SD3's 1536
        pooled_projection_dim=2 * TINY_TEXT["projection_dim"],
        pos_embed_max_size=32,
    )
    vae = tiny_vae(
        SCALES["tiny"]["vae"],
        latent_channels=16,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
        force_upcast=True,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    return save_pipeline(pipe, tokenizers, (transformer, vae, text_encoder, text_encoder_2), FORMAT)
