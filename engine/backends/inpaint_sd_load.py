"""Loading a diffusers SD-inpainting directory for ``inpaint_sd.SDInpainter``: its files and
options checked before anything is read, the pipeline built offline (scheduler, dtype, variant),
the working size chosen, attention and VAE slicing set, and the runtime that runs the UNet and
the VAE attached (``SDInpainter.load``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from ..errors import ConfigError, ModelLoadError

ROLE = "inpaint"
FORMAT = "diffusers StableDiffusionInpaintPipeline"
_WEIGHTS = "diffusion_pytorch_model.safetensors|diffusion_pytorch_model.bin|diffusion_pytorch_model.fp16.safetensors"
EXPECTED = (
    "model_index.json",
    "unet/config.json",
    f"unet/{_WEIGHTS.replace('|', '|unet/')}",
    "vae/config.json",
    f"vae/{_WEIGHTS.replace('|', '|vae/')}",
    "text_encoder/config.json",
    "text_encoder/model.safetensors|text_encoder/pytorch_model.bin|text_encoder/model.fp16.safetensors",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "scheduler/scheduler_config.json",
)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Alternatives to the checkpoint's own scheduler (PNDM for SD2-inpainting), by short name.
SCHEDULERS = {
    "pndm": "PNDMScheduler",
    "ddim": "DDIMScheduler",
    "dpmsolver++": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
}


def check_options(
    dtype: str, fit: str, steps: int, dilate: int, max_batch: int, scheduler: str | None, enable_xformers: bool
) -> None:
    """``SDInpainter.load``'s options refused before anything loads (``ConfigError``); ``max_batch``
    as ``inpaint_sd.memory_bounds`` resolved it."""
    if dtype not in DTYPES:
        raise ConfigError(f"{ROLE}: dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if fit not in ("pad", "stretch"):
        raise ConfigError(f"{ROLE}: fit must be 'pad' or 'stretch', got {fit!r}")
    if steps < 1 or dilate < 0 or max_batch < 0:
        raise ConfigError(f"{ROLE}: need steps >= 1, dilate >= 0, max_batch >= 0, got {steps}, {dilate}, {max_batch}")
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise ConfigError(f"{ROLE}: scheduler must be one of {sorted(SCHEDULERS)} or None, got {scheduler!r}")
    if enable_xformers and importlib.util.find_spec("xformers") is None:
        raise ConfigError(f"{ROLE}: enable_xformers=True but the xformers package is not installed")


def build_pipeline(p: Path, device: str, dtype: str, scheduler: str | None, variant: str | None):
    """The diffusers pipeline of directory ``p``, offline and without safety checker, with the
    ``scheduler`` named (None: the checkpoint's own), on ``device``; any library failure, or a
    UNet that is not an inpainting one, is a ``ModelLoadError``."""
    try:
        import diffusers
        from diffusers import StableDiffusionInpaintPipeline

        pipe = StableDiffusionInpaintPipeline.from_pretrained(
            p,
            dtype=DTYPES[dtype],
            variant=variant,
            local_files_only=True,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        if scheduler is not None:
            pipe.scheduler = getattr(diffusers, SCHEDULERS[scheduler]).from_config(pipe.scheduler.config)
        pipe = pipe.to(device)
    except Exception as err:  # any library failure is a load failure of this path
        raise ModelLoadError(f"{ROLE}: cannot load {FORMAT} from {p}: {err}") from err
    if pipe.unet.config.in_channels != 9:
        raise ModelLoadError(
            f"{ROLE}: cannot load {FORMAT} from {p}: unet has {pipe.unet.config.in_channels} input channels, "
            "expected 9 (an inpainting UNet)"
        )
    return pipe


def denoiser(pipe) -> torch.nn.Module:
    """The pipeline's denoising network: its ``unet``, else its ``transformer``."""
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def working_size(pipe, size: int | None, p: Path) -> int:
    """The working square's side: ``size``, or None for the checkpoint's native one (denoiser
    sample_size x VAE scale: 512 for SD2, 1024 for SDXL and SD3); refused unless a positive
    multiple of the VAE's scale times the transformer's patch size (1 for a UNet: the pipeline
    needs whole latents, the UNet itself copes with odd latent sizes)."""
    config = denoiser(pipe).config
    multiple = pipe.vae_scale_factor * int(getattr(config, "patch_size", None) or 1)
    if size is None:
        size = int(config.sample_size) * pipe.vae_scale_factor
    if size < multiple or size % multiple:
        raise ConfigError(f"{ROLE}: size must be a positive multiple of {multiple} for {p}, got {size}")
    return size


def configure_pipeline(pipe, enable_xformers: bool, vae_slicing: bool) -> None:
    """Attention (xformers when asked), VAE slicing, no progress bar."""
    if enable_xformers:
        pipe.enable_xformers_memory_efficient_attention()
    if vae_slicing:
        pipe.vae.enable_slicing()
    # diffusers' default processors already use torch SDPA (AttnProcessor2_0).
    pipe.set_progress_bar_config(disable=True)


def attach_runtime(pipe, runtime: str, artifacts: str | Path | None, p: Path, device: str) -> None:
    """What runs the UNet and the VAE: eager as loaded, the exported ONNX / TensorRT graphs from
    ``artifacts``, or ``torch.compile`` (``export.sd_runtime``)."""
    if runtime in ("onnx", "tensorrt"):
        from ..export.sd_runtime import attach_sd_graphs

        attach_sd_graphs(pipe, runtime, artifacts, p, device)
    elif runtime == "compile":
        from ..export.sd_runtime import compile_sd

        compile_sd(pipe, artifacts, p)
