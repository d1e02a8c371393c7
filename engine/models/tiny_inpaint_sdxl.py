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

import shutil
from pathlib import Path

import torch

from .tiny_inpaint import BOS, EOS, MAX_LEN, train_clip_bpe, write_tokenizer

FORMAT = "diffusers-sdxl-inpaint"
_TIME_DIM = 8  # SDXL: addition_time_embed_dim 256 per micro-conditioning number, 6 numbers
_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)


def _text_encoders(vocab: dict[str, int]):
    """SDXL's pair: CLIP ViT-L's text model (quick GELU) and OpenCLIP bigG's with its projection (GELU)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def config(act: str) -> CLIPTextConfig:
        ids = dict(bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab["!"])
        return CLIPTextConfig(vocab_size=len(vocab), max_position_embeddings=MAX_LEN, hidden_act=act, **_TEXT, **ids)

    return CLIPTextModel(config("quick_gelu")), CLIPTextModelWithProjection(config("gelu"))


def _unet_vae():
    """SDXL's 9-channel inpainting UNet with "text_time" micro-conditioning and its VAE, tiny."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = UNet2DConditionModel(
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
        cross_attention_dim=2 * _TEXT["hidden_size"],  # both encoders' hidden states, concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=_TIME_DIM,
        # 6 micro-conditioning numbers (original size, crop, target size) + the pooled text embedding
        projection_class_embeddings_input_dim=6 * _TIME_DIM + _TEXT["projection_dim"],
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=32,
        scaling_factor=0.13025,
        force_upcast=True,
    )
    return unet, vae


def build(out_dir: Path, seed: int = 0, scale: str = "tiny") -> dict:
    """Write a randomly initialised SDXL-inpainting pipeline to ``out_dir`` (``scale``: "tiny" only).

    Deterministic in ``seed``. Returns ``{"format": "diffusers-sdxl-inpaint", "params": N}`` with
    N the parameter count of UNet + VAE + both text encoders.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLInpaintPipeline
    from transformers import CLIPTokenizer

    if scale != "tiny":
        raise ValueError(f"inpaint: unknown SDXL zoo scale {scale!r}; scales are tiny")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    vocab, merges = train_clip_bpe(n_merges=600)
    for name in ("tokenizer", "tokenizer_2"):
        write_tokenizer(out_dir / name, vocab, merges)
    tokenizer = CLIPTokenizer.from_pretrained(out_dir / "tokenizer", local_files_only=True)
    tokenizer_2 = CLIPTokenizer.from_pretrained(out_dir / "tokenizer_2", local_files_only=True)
    text_encoder, text_encoder_2 = _text_encoders(vocab)

    unet, vae = _unet_vae()
    # The real checkpoint's scheduler (scheduler/scheduler_config.json of SDXL inpainting 0.1).
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        interpolation_type="linear",
        use_karras_sigmas=False,
        prediction_type="epsilon",
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
    pipe.save_pretrained(out_dir, safe_serialization=True)
    # save_pretrained rewrites the tokenizers (adding tokenizer.json); put back the real layout.
    for name in ("tokenizer", "tokenizer_2"):
        shutil.rmtree(out_dir / name)
        write_tokenizer(out_dir / name, vocab, merges)

    params = sum(p.numel() for m in (unet, vae, text_encoder, text_encoder_2) for p in m.parameters())
    return {"format": FORMAT, "params": int(params)}
