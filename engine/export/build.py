"""``export_models``: the segmenter and inpainter of a models folder as compiled artifacts + manifest.

Formats:
  onnx      SAM image encoder + prompt decoder, SD UNet + VAE encoder + VAE decoder as ONNX
            graphs (float32, dynamic batch), run by onnxruntime.
  tensorrt  the same graphs, then one TensorRT engine each (fp16/bf16/fp32), for a CUDA machine
            with the ``tensorrt`` package.
  compile   no files: manifest entries telling the backends to wrap the same modules with
            ``torch.compile`` (with the recorded options), checked for staleness like files.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelLoadError
from .manifest import FORMATS, artifact_entry, source_info, write_manifest
from .onnx_io import DEFAULT_OPSET

ROLES = ("segmenter", "inpaint")
MODULES = {"segmenter": ("image_encoder", "prompt_decoder"), "inpaint": ("unet", "vae_encoder", "vae_decoder")}
# What "compile" wraps, per module (the same modules the ONNX graphs hold).
COMPILE_TARGETS = {
    "image_encoder": "sam.image_encoder",
    "prompt_decoder": "PromptDecoder(sam): sam.prompt_encoder + sam.mask_decoder",
    "unet": "pipe.unet",
    "vae_encoder": "pipe.vae.encoder",
    "vae_decoder": "pipe.vae.decoder",
}


def export_models(
    models_dir: str | Path | None,
    fmt: str,
    out_dir: str | Path = "exported_models",
    roles: tuple[str, ...] = ROLES,
    *,
    paths: dict[str, str | Path] | None = None,
    device: str = "cpu",
    opset: int = DEFAULT_OPSET,
    size: int | None = None,
    precision: str = "float16",
    max_batch: int = 8,
    compile_mode: str | None = None,
    compile_backend: str | None = None,
) -> dict[str, Any]:
    """Export ``roles`` (a subset of segmenter, inpaint) in ``fmt`` (onnx | tensorrt | compile)
    to ``out_dir`` and return the updated ``out_dir/manifest.json``.

    A role's model is ``paths[role]`` if given, else ``models_dir/<role>`` (the zoo layout).
    device: where the models are traced ("cpu" is fine for ONNX; TensorRT builds on the GPU).
    size: the SD working square the example inputs use (default: the checkpoint's native size;
    the graphs' batch and spatial axes are dynamic anyway). precision: TensorRT's (float16,
    bfloat16, float32). max_batch: the largest batch a TensorRT profile accepts (the UNet's is
    twice that, for classifier-free guidance). compile_mode / compile_backend: ``torch.compile``'s
    ``mode`` / ``backend`` recorded for the backends (None: torch's defaults, inductor).
    Entries of other formats already in the manifest are kept.
    """
    roles = tuple(roles)
    if fmt not in FORMATS:
        raise ConfigError(f"export: format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise ConfigError(f"export: roles must be a non-empty subset of {', '.join(ROLES)}, got {list(roles)}")
    if fmt == "tensorrt":  # refuse before spending minutes on the ONNX graphs
        from .trt_engine import MISSING, PRECISIONS, available

        if not available():
            raise ModelLoadError(f"export: format 'tensorrt': {MISSING}")
        if precision not in PRECISIONS:
            raise ConfigError(f"export: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dirs = {role: _role_dir(role, models_dir, paths) for role in roles}
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)

    if fmt == "compile":
        options = {k: v for k, v in (("mode", compile_mode), ("backend", compile_backend)) if v}
        entries = []
        for role in roles:
            source = source_info(dirs[role])
            entries += [
                artifact_entry(role, m, "compile", None, source, target=COMPILE_TARGETS[m], compile_options=options)
                for m in MODULES[role]
            ]
        return write_manifest(out, entries, "compile", roles)

    onnx_entries = []
    for role in roles:
        onnx_entries += _export_onnx(role, dirs[role], out, device, opset, size)
    manifest = write_manifest(out, onnx_entries, "onnx", roles)
    if fmt == "onnx":
        return manifest
    return write_manifest(out, _build_engines(onnx_entries, out, precision, max_batch), "tensorrt", roles)


def _build_engines(onnx_entries: list[dict], out: Path, precision: str, max_batch: int) -> list[dict]:
    """One TensorRT engine per ONNX graph, next to it; returns their manifest entries."""
    from .trt_engine import build_engine

    entries = []
    for e in onnx_entries:
        file = Path(e["file"]).with_name(f"model.{precision}.plan").as_posix()
        shapes = _profile(e, max_batch)
        start = time.perf_counter()
        build_engine(out / e["file"], out / file, shapes, precision, where=f"{e['role']}/{e['module']}")
        entries.append(
            artifact_entry(
                e["role"],
                e["module"],
                "tensorrt",
                file,
                e["source"],
                dtype=precision,
                onnx=e["file"],
                profile={name: [list(s) for s in mm] for name, mm in shapes.items()},
                export_seconds=round(time.perf_counter() - start, 3),
                **{k: e[k] for k in ("opset", "inputs", "outputs", "example_shapes")},
            )
        )
    return entries


def _role_dir(role: str, models_dir: str | Path | None, paths: dict[str, str | Path] | None) -> Path:
    if paths and role in paths:
        path = Path(paths[role]).expanduser()
    elif models_dir is None:
        raise ConfigError(f"export: no model path for {role}: pass a models folder or paths={{'{role}': ...}}")
    else:
        path = Path(models_dir).expanduser() / role
    if not path.is_dir():
        raise ModelLoadError(f"{role}: model path {path} is not a directory (nothing to export)")
    return path


def _export_onnx(role: str, model_dir: Path, out: Path, device: str, opset: int, size: int | None) -> list[dict]:
    """Load ``role`` from ``model_dir`` through its eager backend (float32) and export its graphs."""
    if role == "segmenter":
        from ..backends.segment_sam import SamSegmenter
        from .onnx_sam import export_sam

        return export_sam(SamSegmenter.load(model_dir, device=device).sam, model_dir, out, opset)
    from ..backends.inpaint_sd import SDInpainter
    from .onnx_sd import export_sd

    return export_sd(SDInpainter.load(model_dir, device=device).pipe, model_dir, out, opset, size)


# TensorRT profile ranges of the named dynamic axes (min, opt, max); other axes stay at the
# traced example's size. Opt is the engine's common case: one image, CFG's batch of two.
def _axis_ranges(max_batch: int) -> dict[str, tuple[int, int, int]]:
    return {
        "batch": (1, 2, 2 * max_batch),
        "timestep_batch": (1, 1, 2 * max_batch),
        "num_prompts": (1, 4, 64),
        "num_points": (1, 4, 16),
        "mask_batch": (1, 1, 64),
    }


def _profile(entry: dict[str, Any], max_batch: int) -> dict[str, tuple[tuple[int, ...], ...]]:
    ranges = _axis_ranges(max_batch)
    shapes = {}
    for spec in entry["inputs"]:
        example = entry["example_shapes"][spec["name"]]
        lo, opt, hi = [], [], []
        for dim, n in zip(spec["shape"], example):
            r = ranges.get(dim, (n, n, n)) if isinstance(dim, str) else (n, n, n)
            lo.append(r[0])
            opt.append(r[1])
            hi.append(r[2])
        shapes[spec["name"]] = (tuple(lo), tuple(opt), tuple(hi))
    return shapes
