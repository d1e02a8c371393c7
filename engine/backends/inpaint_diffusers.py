"""Any diffusers inpainting pipeline as an ``Inpainter``, loaded through ``AutoPipelineForInpainting``.

A local diffusers directory (``model_index.json`` + one folder per component) is loaded offline
by ``AutoPipelineForInpainting``, which maps the class ``model_index.json`` names to its
inpainting pipeline: an inpainting checkpoint's own class (``StableDiffusionInpaintPipeline``,
``StableDiffusionXLInpaintPipeline``, ...) or a text-to-image one's inpainting sibling
(``StableDiffusion3Pipeline`` -> ``StableDiffusion3InpaintPipeline``, ``FluxPipeline`` ->
``FluxInpaintPipeline``). A class the mapping lacks (``FluxFillPipeline`` in diffusers 0.42) is
loaded as itself when its ``__call__`` takes ``image`` and ``mask_image``.

Jobs run as in ``inpaint_sd`` (``inpaint_square``): each view fitted into one working square,
bounded batches of ``max_batch`` jobs, one CPU ``torch.Generator`` per job seeded with its seed
(the pipelines draw every job's noise and VAE samples from its own generator, so a job's output
does not depend on its batch-mates), the result composited so that pixels outside the mask are
the input's. The pipeline is called as documented (``prompt``, ``negative_prompt``, ``image``,
``mask_image``, ``strength``, ``generator``, ...), keeping only the arguments its ``__call__``
takes (Flux has no negative prompt). For ``StableDiffusionInpaintPipeline`` with a 9-channel
UNet at strength 1 the masked images go through the VAE in batches (``inpaint_sd.prepared_latents``),
as the ``sd`` backend does; other pipelines encode them one job at a time, as diffusers does
with a list of generators.

``runtime="compile"`` wraps the denoiser (``unet``, or SD3's / Flux's ``transformer``) and the
VAE decoder with ``torch.compile``, as the ``sd`` backend's "compile" runtime does
(``export.sd_runtime.compile_pipeline``; mode / backend from an ``artifacts`` manifest, else
torch's defaults). Every call then runs ``max_batch`` jobs, the shorter ones filled up
(``SquareInpainter.pad_to``), so the compiled graphs see one batch shape and are compiled once.
The exported-graph runtimes ("onnx", "tensorrt") are the ``sd`` backend's only.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Self

import torch

from ..errors import ConfigError, ModelLoadError
from ..models.checks import require_files
from .inpaint_sd import memory_bounds, prepared_latents
from .inpaint_sd_load import DTYPES, SCHEDULERS, check_options, configure_pipeline, denoiser, working_size
from .inpaint_square import SquareInpainter

ROLE = "inpaint"
FORMAT = "diffusers inpainting pipeline (AutoPipelineForInpainting)"
_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
)
EXPECTED = (
    "model_index.json",
    "unet/config.json|transformer/config.json",
    "|".join(f"{d}/{w}" for d in ("unet", "transformer") for w in _WEIGHTS),
    "vae/config.json",
    "|".join(f"vae/{w}" for w in _WEIGHTS),
    "scheduler/scheduler_config.json",
)
# Jobs per pipeline call on CUDA by default: SDXL / SD3 work at 1024 px (128 x 128 latents), 4x
# the latent pixels of SD2's 512 px, with a 2.6B UNet (SDXL) or a 2B MMDiT (SD3 medium); two
# jobs (4 rows with guidance) is SD2's 8 jobs scaled by the latent area. Not measured on a GPU.
CUDA_MAX_BATCH = 2
RUNTIMES = ("eager", "compile")


def read_index(p: Path) -> tuple[str, dict[str, list]]:
    """``model_index.json``'s pipeline class and components, name -> [library, class] (nulls for
    an absent one); ``ModelLoadError`` if it does not parse or names no class."""
    try:
        index = json.loads((p / "model_index.json").read_text())
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{ROLE}: {p}/model_index.json is not a diffusers pipeline index: {err}") from err
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        raise ModelLoadError(f"{ROLE}: {p}/model_index.json names no pipeline class (_class_name)")
    return index["_class_name"], {k: v for k, v in index.items() if isinstance(v, list) and len(v) == 2}


def check_components(p: Path) -> None:
    """Every component ``model_index.json`` names (not null) has its folder under ``p``."""
    _, components = read_index(p)
    missing = [f"{name}/" for name, (lib, _) in components.items() if lib is not None and not (p / name).is_dir()]
    if missing:
        raise ModelLoadError(f"{ROLE}: {p} is not a complete {FORMAT} directory: missing {', '.join(missing)}")


def from_pretrained(p: Path, dtype: str, variant: str | None):
    """The inpainting pipeline of directory ``p``, offline: ``AutoPipelineForInpainting``, or where
    its mapping lacks the class ``model_index.json`` names, that class itself (``DiffusionPipeline``)."""
    import diffusers

    name, components = read_index(p)
    options = dict(dtype=DTYPES[dtype], variant=variant, local_files_only=True)
    # components the index leaves out (SD3 without T5: text_encoder_3 / tokenizer_3 null) are
    # passed as None, as diffusers documents for loading SD3 without T5
    options.update({name: None for name, (lib, _) in components.items() if lib is None})
    if "safety_checker" in components:  # SD 1.x / 2.x: no safety checker, as the sd backend
        options.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    try:
        return diffusers.AutoPipelineForInpainting.from_pretrained(p, **options)
    except ValueError as err:
        if "can't find a pipeline linked to" not in str(err):
            raise
    cls = getattr(diffusers, name, None)
    if cls is None or "mask_image" not in inspect.signature(cls.__call__).parameters:
        raise ModelLoadError(f"{ROLE}: {p}: AutoPipelineForInpainting maps no inpainting pipeline to {name}")
    return cls.from_pretrained(p, **options)


def build_pipeline(p: Path, device: str, dtype: str, scheduler: str | None, variant: str | None):
    """The pipeline of ``p`` on ``device`` with the ``scheduler`` named (None: the checkpoint's),
    no watermark; any library failure, or a pipeline that takes no mask, is a ``ModelLoadError``."""
    try:
        import diffusers

        pipe = from_pretrained(p, dtype, variant)
        if scheduler is not None:
            pipe.scheduler = getattr(diffusers, SCHEDULERS[scheduler]).from_config(pipe.scheduler.config)
        pipe = pipe.to(device)
    except ModelLoadError:
        raise
    except Exception as err:  # any library failure is a load failure of this path
        raise ModelLoadError(f"{ROLE}: cannot load {FORMAT} from {p}: {err}") from err
    if "mask_image" not in inspect.signature(pipe.__call__).parameters:
        raise ModelLoadError(f"{ROLE}: {p}: {type(pipe).__name__} is not an inpainting pipeline (no mask_image)")
    if getattr(pipe, "watermark", None) is not None:  # SDXL's invisible watermark, when installed
        pipe.watermark = None
    vae = getattr(pipe, "vae", None)
    if dtype == "float32" and vae is not None and getattr(vae.config, "force_upcast", False):
        # SDXL's VAE asks to be upcast to float32 around every decode; already float32, that is two
        # no-op casts per call, each logging a diffusers warning
        vae.register_to_config(force_upcast=False)
    return pipe


def check_runtime(runtime: str, max_batch: int) -> None:
    """``ConfigError`` unless ``runtime`` is one of ``RUNTIMES`` and, for "compile", ``max_batch``
    (as resolved) bounds the calls: the batch shape the graphs are compiled for."""
    choices = ", ".join(RUNTIMES)
    if runtime in ("onnx", "tensorrt"):
        raise ConfigError(
            f"{ROLE}: runtime={runtime!r} is not supported by the diffusers backend (exported graphs are the sd "
            f"backend's); runtime must be one of {choices}"
        )
    if runtime not in RUNTIMES:
        raise ConfigError(f"{ROLE}: runtime must be one of {choices}, got {runtime!r}")
    if runtime == "compile" and max_batch < 1:
        raise ConfigError(
            f"{ROLE}: runtime='compile' needs max_batch >= 1 (the jobs every call is compiled for), got {max_batch}"
        )


def compile_pipeline(pipe, artifacts: str | Path | None, p: Path) -> None:
    """``torch.compile`` the denoiser and the VAE decoder of ``pipe``, in place (``export.sd_runtime``)."""
    from ..export.onnx_sd import UNET, VAE_DECODER
    from ..export.sd_runtime import compile_pipeline as compile_sd_pipeline

    name = "unet" if denoiser(pipe) is getattr(pipe, "unet", None) else "transformer"
    compile_sd_pipeline(pipe, artifacts, p, name, (UNET, VAE_DECODER))


class DiffusersInpainter(SquareInpainter):
    """Batched inpainting with any diffusers inpainting pipeline. Build with :meth:`load`; call :meth:`inpaint`."""

    RUNTIMES = RUNTIMES  # no exported graphs (the sd backend's): what ``models check`` accepts

    def __init__(
        self,
        pipe,
        device: str,
        size: int,
        steps: int,
        guidance_scale: float,
        strength: float,
        dilate: int,
        fit: str,
        max_batch: int,
        runtime: str = "eager",
    ) -> None:
        super().__init__(pipe, device, size, steps, guidance_scale, dilate, fit, max_batch)
        self.strength = strength
        self.runtime = runtime  # eager | compile: what runs the denoiser and the VAE decoder
        if runtime == "compile":
            self.pad_to = max_batch  # one batch shape for the compiled graphs
        self.accepts = set(inspect.signature(pipe.__call__).parameters)  # what its __call__ takes

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
        strength: float = 1.0,
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
        """Load a diffusers pipeline directory as its inpainting pipeline, offline.

        size: side of the working square in pixels, a multiple of the VAE's scale (times the
        transformer's patch size); None takes the checkpoint's native size (denoiser sample_size x
        VAE scale). steps: denoising steps. guidance_scale: classifier-free guidance (<= 1 turns
        it and the negative prompt off; Flux's distilled guidance for Flux pipelines). strength:
        how much of the masked region is noised, 1.0 = from pure noise (the diffusers defaults,
        0.9999 for SDXL and 0.6 for SD3, keep some of the masked content). dilate, fit: as the
        ``sd`` backend. max_batch: at most this many jobs per pipeline call (0 = all; results do
        not depend on it); None = ``CUDA_MAX_BATCH`` on CUDA, all on CPU. vae_slicing: decode one
        image at a time (None = on CUDA). scheduler: None keeps the checkpoint's, else one of
        pndm / ddim / dpmsolver++ / euler (UNet pipelines). variant: e.g. "fp16".
        enable_xformers: xformers attention instead of SDPA. runtime: "eager", or "compile": the
        denoiser and the VAE decoder wrapped with ``torch.compile`` (options from ``artifacts``'
        "compile" manifest when given, as the ``sd`` backend), every call run with ``max_batch``
        jobs (None = ``CUDA_MAX_BATCH`` on any device; 0 refused) so that it compiles once.
        """
        p = require_files(ROLE, path, EXPECTED, FORMAT)
        check_components(p)
        if runtime == "compile" and max_batch is None:
            max_batch = CUDA_MAX_BATCH
        max_batch, vae_slicing = memory_bounds(device, max_batch, vae_slicing, CUDA_MAX_BATCH)
        check_runtime(runtime, max_batch)
        check_options(dtype, fit, steps, dilate, max_batch, scheduler, enable_xformers)
        if not 0.0 < strength <= 1.0:
            raise ConfigError(f"{ROLE}: strength must be in (0, 1], got {strength}")
        pipe = build_pipeline(p, device, dtype, scheduler, variant)
        size = working_size(pipe, size, p)
        configure_pipeline(pipe, enable_xformers, vae_slicing)
        if runtime == "compile":
            compile_pipeline(pipe, artifacts, p)
        return cls(pipe, device, size, steps, guidance_scale, strength, dilate, fit, max_batch, runtime)

    def _call_args(self, args: dict, image: torch.Tensor, mask: torch.Tensor, generators: list[torch.Generator]) -> dict:
        """``args`` with ``strength``, and SD's batched masked-image VAE encode
        (``inpaint_sd.prepared_latents``) where it is the pipeline's own computation:
        ``StableDiffusionInpaintPipeline``, 9-channel UNet, strength 1; only the arguments the
        pipeline's ``__call__`` takes."""
        from diffusers import StableDiffusionInpaintPipeline

        args = {**args, "strength": self.strength}
        pipe = self.pipe
        if type(pipe) is StableDiffusionInpaintPipeline and pipe.unet.config.in_channels == 9 and self.strength == 1.0:
            args.update(prepared_latents(pipe, image, mask, generators, self.size))
        return {k: v for k, v in args.items() if k in self.accepts}
