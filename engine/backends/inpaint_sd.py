"""Stable Diffusion 2 inpainting (diffusers ``StableDiffusionInpaintPipeline``) as an ``Inpainter``.

Loads a local diffusers directory laid out like ``stabilityai/stable-diffusion-2-inpainting``
(or the tiny zoo's copy of it), offline, without safety checker.

Geometry (``inpaint_square``): every job is fitted into one ``size x size`` working square so
that all jobs of a call share one batch, ``fit="pad"`` (default, aspect kept, reflected padding
the model is never asked to paint) or ``"stretch"``; the result is cropped, resized back to the
input size and composited, so that pixels outside the (binarised, optionally dilated) mask are
exactly the input's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

import torch

from ..models.checks import require_files
from .inpaint_sd_load import (
    EXPECTED,
    FORMAT,
    ROLE,
    attach_runtime,
    build_pipeline,
    check_options,
    configure_pipeline,
    working_size,
)
from .inpaint_square import SquareInpainter

# Masked images per VAE-encoder pass: diffusers encodes them one by one when every job has its
# own generator; a few at a time keeps a 512 px batch's activations near 1 GB.
VAE_ENCODE_BATCH = 8


def prepared_latents(pipe, image: torch.Tensor, mask: torch.Tensor, generators: list[torch.Generator], size: int) -> dict:
    """The pipeline's initial noise and masked-image latents, computed as
    ``StableDiffusionInpaintPipeline.__call__`` computes them (strength 1, one image per prompt)
    but with the VAE encoder run on up to ``VAE_ENCODE_BATCH`` masked images per pass; passed
    back through its public ``latents=`` and ``masked_image_latents=`` arguments.

    image: float [B, 3, S, S] in [0, 1]; mask: float [B, 1, S, S] (>= 0.5 = fill); generators: one
    per job. Returns {"latents": noise [B, 4, S/8, S/8], "masked_image_latents": scaled latents
    [B, 4, S/8, S/8]}. The pipeline draws from each job's generator first its initial noise,
    then its masked image's latent sample, then (some schedulers) the steps' noise: both draws
    happen here in that order, so the steps draw what they would have, and each job's draws come
    from its own generator (batch-mates change nothing). The masked image is the pipeline's own
    ``image_processor`` / ``mask_processor`` output, ``image * (mask < 0.5)``, in the text
    encoder's dtype (the pipeline's ``prompt_embeds.dtype``), times the VAE's ``scaling_factor``.
    """
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from diffusers.utils.torch_utils import randn_tensor

    device, dtype = pipe.device, pipe.text_encoder.dtype
    scale = pipe.vae_scale_factor
    shape = (len(image), pipe.vae.config.latent_channels, size // scale, size // scale)
    noise = randn_tensor(shape, generator=generators, device=device, dtype=dtype)
    init = pipe.image_processor.preprocess(image, height=size, width=size, crops_coords=None, resize_mode="default")
    keep = pipe.mask_processor.preprocess(mask, height=size, width=size, crops_coords=None, resize_mode="default") < 0.5
    masked = (init.to(dtype=torch.float32) * keep).to(device=device, dtype=dtype)
    step = VAE_ENCODE_BATCH
    moments = torch.cat([pipe.vae.encode(masked[s : s + step]).latent_dist.parameters for s in range(0, len(masked), step)])
    samples = [DiagonalGaussianDistribution(moments[i : i + 1]).sample(g) for i, g in enumerate(generators)]
    return {"latents": noise, "masked_image_latents": pipe.vae.config.scaling_factor * torch.cat(samples)}


# Jobs per pipeline call on CUDA by default. SD2-inpainting at 512 px in float16: the UNet's
# weights are 1.7 GB (865M parameters), the VAE's 0.17 GB, the text encoder's 0.7 GB; with
# classifier-free guidance a job is 2 UNet rows, and one row at 64 x 64 latents with SDPA needs
# ~0.6 GB of activations at its peak (the 4096-token self-attention of the first block and the
# skip connections held for the up path), so 8 jobs = 16 rows ~ 10 GB. The VAE decoder at 512 px
# holds ~1.2 GB of float16 activations per image (512 x 512 x 128-256 channels), so it decodes
# one image at a time on CUDA (vae_slicing). A tick of 8 images in flight has up to 72 jobs (9
# views each): unbounded, that is 144 UNet rows (~90 GB) and a 72-image VAE decode.
CUDA_MAX_BATCH = 8


def memory_bounds(
    device: str, max_batch: int | None, vae_slicing: bool | None, cuda_max_batch: int = CUDA_MAX_BATCH
) -> tuple[int, bool]:
    """The (max_batch, vae_slicing) a backend on ``device`` runs with: the given values, or
    where None, ``cuda_max_batch`` jobs and slicing on CUDA, one batch and no slicing on CPU (host
    memory is the bound there, and one batch is fastest)."""
    cuda = str(device).startswith("cuda")
    return (cuda_max_batch if cuda else 0) if max_batch is None else max_batch, cuda if vae_slicing is None else vae_slicing


class SDInpainter(SquareInpainter):
    """Batched SD-inpainting. Build with :meth:`load`; call :meth:`inpaint`."""

    def __init__(
        self,
        pipe,
        device: str,
        size: int,
        steps: int,
        guidance_scale: float,
        dilate: int,
        fit: str,
        max_batch: int,
        runtime: str = "eager",
    ) -> None:
        super().__init__(pipe, device, size, steps, guidance_scale, dilate, fit, max_batch)
        self.runtime = runtime  # eager | onnx | tensorrt | compile: what runs the UNet and VAE

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "cpu",
        dtype: str = "float32",
        *,
        size: int | None = None,
        steps: int = 20,
        guidance_scale: float = 7.5,
        dilate: int = 0,
        fit: str = "pad",
        max_batch: int | None = None,
        vae_slicing: bool | None = None,
        scheduler: str | None = None,
        variant: str | None = None,
        enable_xformers: bool = False,
        runtime: str = "eager",
        artifacts: str | Path | None = None,
    ) -> Self:
        """Load a diffusers SD-inpainting directory, offline.

        size: side of the working square in pixels, a multiple of the VAE's scale factor;
        None takes the checkpoint's native size, UNet sample_size x VAE scale (512 for SD2). steps: denoising steps.
        guidance_scale: classifier-free guidance (<= 1 turns it and the negative prompt off).
        dilate: grow each mask by this many input pixels before inpainting (0 = the caller's
        mask as is). fit: "pad" or "stretch" (module docstring). max_batch: at most this
        many jobs per pipeline call (0 = all jobs of a call in one batch; results do not
        depend on it); None = ``CUDA_MAX_BATCH`` on CUDA, all on CPU. vae_slicing: decode the
        VAE one image at a time (None = on CUDA); see ``CUDA_MAX_BATCH`` for the memory. scheduler: None keeps the checkpoint's, else one of
        pndm / ddim / dpmsolver++ / euler. variant: e.g. "fp16" for a directory holding only
        ``*.fp16.safetensors``. enable_xformers: use xformers attention instead of SDPA.
        runtime: "eager"; "onnx" / "tensorrt" run the UNet and the VAE from the export folder
        ``artifacts`` (``int-engine export``), refusing artifacts exported from another
        checkpoint, everything else unchanged; "compile" wraps them with ``torch.compile``
        (options from ``artifacts``' manifest when given).
        """
        if runtime != "eager":  # the export package is only needed off the eager path
            from ..export.runtime import check_runtime

            check_runtime(ROLE, runtime, artifacts)
        p = require_files(ROLE, path, EXPECTED, FORMAT)
        max_batch, vae_slicing = memory_bounds(device, max_batch, vae_slicing)
        check_options(dtype, fit, steps, dilate, max_batch, scheduler, enable_xformers)
        pipe = build_pipeline(p, device, dtype, scheduler, variant)
        size = working_size(pipe, size, p)
        configure_pipeline(pipe, enable_xformers, vae_slicing)
        attach_runtime(pipe, runtime, artifacts, p, device)
        return cls(pipe, device, size, steps, guidance_scale, dilate, fit, max_batch, runtime)

    # -- inference ----------------------------------------------------------------------------

    def _call_args(self, args: dict, image: torch.Tensor, mask: torch.Tensor, generators: list[torch.Generator]) -> dict:
        """``args`` with the initial noise and masked-image latents of ``prepared_latents``."""
        return {**args, **prepared_latents(self.pipe, image, mask, generators, self.size)}
