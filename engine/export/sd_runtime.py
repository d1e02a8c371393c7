"""Stand-ins for the diffusers UNet and VAE that run exported graphs.

They answer exactly what ``StableDiffusionInpaintPipeline`` asks of ``pipe.unet`` / ``pipe.vae``
(``config``, ``dtype``, ``device``, the call / ``encode`` / ``decode`` signatures), so the
pipeline, its scheduler, text encoder and image processing run unchanged around them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from ..models.zoo import checksum
from .onnx_sd import ROLE, UNET, UNET_IO, VAE_DECODER, VAE_DECODER_IO, VAE_ENCODER, VAE_ENCODER_IO
from .runtime import Runner, compile_module, compile_options, open_runner


def attach_sd_graphs(pipe, runtime: str, artifacts: str | Path, model_dir: Path, device: str) -> None:
    """Replace ``pipe.unet`` and ``pipe.vae`` by stand-ins running the ``runtime`` ("onnx" |
    "tensorrt") artifacts from ``artifacts``, checked against the checkpoint in ``model_dir``.
    The eager UNet and VAE are dropped (their weights live in the graphs)."""
    sha = checksum(Path(model_dir))
    unet, enc, dec = (open_runner(ROLE, m, runtime, artifacts, model_dir, device, sha) for m in (UNET, VAE_ENCODER, VAE_DECODER))
    pipe.unet = GraphUNet(unet, pipe.unet)
    pipe.vae = GraphVae(enc, dec, pipe.vae)


def compile_sd(pipe, artifacts: str | Path | None, model_dir: Path) -> None:
    """Wrap the UNet and the VAE encoder/decoder (the modules the graphs hold) with ``torch.compile``, in place."""
    compile_pipeline(pipe, artifacts, model_dir, "unet", (UNET, VAE_ENCODER, VAE_DECODER))


def compile_pipeline(pipe, artifacts: str | Path | None, model_dir: Path, denoiser: str, modules: tuple[str, ...]) -> None:
    """Wrap ``pipe.<denoiser>`` ("unet" | "transformer") and the VAE's decoder, and its encoder when
    ``modules`` names it, with ``torch.compile``, in place; the options are those the "compile"
    manifest in ``artifacts`` recorded for ``modules`` (checked against ``model_dir``), or torch's
    defaults without one (``runtime.compile_options``)."""
    options = compile_options(ROLE, artifacts, model_dir, modules)
    setattr(pipe, denoiser, compile_module(getattr(pipe, denoiser), options))
    if VAE_ENCODER in modules:
        pipe.vae.encoder = compile_module(pipe.vae.encoder, options)
    pipe.vae.decoder = compile_module(pipe.vae.decoder, options)


class _GraphModule(torch.nn.Module):
    """An ``nn.Module`` (so the pipeline counts it as a component) with the original's config,
    dtype and device but no weights: those live in the graph."""

    def __init__(self, config: Any, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.config = config
        self._dtype, self._device = dtype, torch.device(device)

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, *args, **kwargs) -> "_GraphModule":
        # The graph's placement is its runner's; nothing here to move.
        return self


class GraphUNet(_GraphModule):
    """``UNet2DConditionModel.__call__`` on the UNet graph."""

    def __init__(self, runner: Runner, unet: torch.nn.Module) -> None:
        super().__init__(unet.config, unet.dtype, unet.device)
        self.runner = runner

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        timestep_cond: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
        **unused: Any,
    ) -> UNet2DConditionOutput | tuple[torch.Tensor]:
        extras = (timestep_cond, cross_attention_kwargs, added_cond_kwargs, *unused.values())
        if any(v is not None and not (isinstance(v, dict) and not v) for v in extras):
            raise NotImplementedError("the exported UNet graph takes sample, timestep and encoder_hidden_states only")
        # The graph's timestep is float32 [1 or B]; the UNet casts integer steps to float the same way.
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1)
        names, _ = UNET_IO
        noise = self.runner(dict(zip(names, (sample, t, encoder_hidden_states))))[0].to(sample.device, sample.dtype)
        return UNet2DConditionOutput(sample=noise) if return_dict else (noise,)


class GraphVae(_GraphModule):
    """``AutoencoderKL.encode`` / ``decode`` on the VAE encoder and decoder graphs."""

    def __init__(self, encoder: Runner, decoder: Runner, vae: torch.nn.Module) -> None:
        super().__init__(vae.config, vae.dtype, vae.device)
        self.encoder_runner, self.decoder_runner = encoder, decoder

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        (name,), _ = VAE_ENCODER_IO
        moments = self.encoder_runner({name: x})[0].to(x.device, x.dtype)
        posterior = DiagonalGaussianDistribution(moments)  # sampled later with the caller's generator
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator: Any = None) -> DecoderOutput | tuple:
        (name,), _ = VAE_DECODER_IO
        image = self.decoder_runner({name: z})[0].to(z.device, z.dtype)
        return DecoderOutput(sample=image) if return_dict else (image,)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("GraphVae is used through encode() and decode()")
