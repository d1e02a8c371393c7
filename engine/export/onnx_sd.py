"""SD-inpainting as three ONNX graphs: the UNet, the VAE encoder and the VAE decoder.

The text encoder, tokenizer, scheduler and all pre/post-processing stay in torch: they are
cheap, and keeping them means the ONNX path differs from the eager one only inside the
three graphs. The VAE encoder graph returns the latent distribution's moments (mean and
log-variance), not a sample, so that sampling still uses the caller's ``torch.Generator``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .manifest import artifact_entry, source_info
from .onnx_io import DEFAULT_OPSET, export_onnx, module_device

ROLE = "inpaint"
UNET, VAE_ENCODER, VAE_DECODER = "unet", "vae_encoder", "vae_decoder"
UNET_IO = (["sample", "timestep", "encoder_hidden_states"], ["noise_pred"])
VAE_ENCODER_IO = (["image"], ["latent_moments"])
VAE_DECODER_IO = (["latents"], ["image"])
TEXT_LENGTH = 77  # CLIP's context length: SD pads every prompt to it


class UNetGraph(torch.nn.Module):
    """sample [B, 9, h, w] (noisy latents + mask + masked-image latents), timestep float32
    [1 or B], encoder_hidden_states [B, L, D] -> noise_pred [B, 4, h, w]."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class VaeEncoderGraph(torch.nn.Module):
    """image [B, 3, H, W] in [-1, 1] -> latent_moments [B, 2 * latent_channels, H / f, W / f]
    (``AutoencoderKL._encode`` without tiling: encoder, then quant_conv)."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.encoder, self.quant_conv = vae.encoder, vae.quant_conv

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = self.encoder(image)
        return self.quant_conv(h) if self.quant_conv is not None else h


class VaeDecoderGraph(torch.nn.Module):
    """latents [B, latent_channels, h, w] (already divided by scaling_factor) -> image [B, 3, h * f, w * f]."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.post_quant_conv, self.decoder = vae.post_quant_conv, vae.decoder

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        z = self.post_quant_conv(latents) if self.post_quant_conv is not None else latents
        return self.decoder(z)


def sd_examples(
    pipe, size: int | None = None, batch: int = 2, device: str | torch.device | None = None
) -> dict[str, tuple[torch.Tensor, ...]]:
    """Example float32 inputs of the three graphs at a ``size`` x ``size`` working square
    (default: the checkpoint's native size), for export and tests: the UNet's sample
    [batch, 9, h, h], timestep [1], text states [batch, 77, D]; the VAE encoder's image
    [1, 3, size, size]; the VAE decoder's latents [1, 4, h, h]. On ``device``, or where None,
    on the device of the module each feeds (the UNet's, the VAE's); the same values anywhere."""
    f = pipe.vae_scale_factor
    size = size or int(pipe.unet.config.sample_size) * f
    h = size // f
    # Drawn on the CPU (a generator belongs to one device), then moved.
    gen = torch.Generator().manual_seed(0)
    latent_c = pipe.vae.config.latent_channels
    unet_at, vae_at = (device or module_device(m) for m in (pipe.unet, pipe.vae))
    unet = (
        torch.randn(batch, pipe.unet.config.in_channels, h, h, generator=gen),
        torch.tensor([500.0]),
        torch.randn(batch, TEXT_LENGTH, pipe.unet.config.cross_attention_dim, generator=gen),
    )
    image = torch.rand(1, 3, size, size, generator=gen) * 2 - 1
    latents = torch.randn(1, latent_c, h, h, generator=gen)
    return {
        UNET: tuple(t.to(unet_at) for t in unet),
        VAE_ENCODER: (image.to(vae_at),),
        VAE_DECODER: (latents.to(vae_at),),
    }


def export_sd(pipe, model_dir: Path, out_dir: Path, opset: int = DEFAULT_OPSET, size: int | None = None) -> list[dict[str, Any]]:
    """Write ``inpaint/{unet,vae_encoder,vae_decoder}/model.onnx`` under ``out_dir`` from the
    float32 diffusers inpainting pipeline ``pipe`` loaded from ``model_dir``; returns their manifest entries.

    Batch and spatial axes are dynamic; h and w must stay multiples of the UNet's total
    downsampling (2 ** (len(block_out_channels) - 1)), as for the eager UNet at its fast path.
    The examples are traced on the device of the modules.
    """
    source = source_info(model_dir)
    examples = sd_examples(pipe, size)
    latent_axes = {0: "batch", 2: "height", 3: "width"}
    image_axes = {0: "batch", 2: "image_height", 3: "image_width"}
    specs = [
        (
            UNET,
            UNetGraph(pipe.unet),
            UNET_IO,
            {
                "sample": latent_axes,
                "timestep": {0: "timestep_batch"},
                "encoder_hidden_states": {0: "batch", 1: "text_length"},
                "noise_pred": latent_axes,
            },
        ),
        (VAE_ENCODER, VaeEncoderGraph(pipe.vae), VAE_ENCODER_IO, {"image": image_axes, "latent_moments": latent_axes}),
        (VAE_DECODER, VaeDecoderGraph(pipe.vae), VAE_DECODER_IO, {"latents": latent_axes, "image": image_axes}),
    ]
    entries = []
    for module, graph, (inputs, outputs), axes in specs:
        file = f"{ROLE}/{module}/model.onnx"
        where = f"{ROLE}/{module}"
        fields = export_onnx(graph.float(), examples[module], out_dir / file, inputs, outputs, axes, opset, where)
        entries.append(artifact_entry(ROLE, module, "onnx", file, source, dtype="float32", **fields))
    return entries
