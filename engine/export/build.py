"""``export_models``: the segmenter and inpainter of a models folder as compiled artifacts + manifest.

Formats:
  onnx      SAM image encoder + prompt decoder, SD UNet + VAE encoder + VAE decoder as ONNX
            graphs (float32, dynamic batch), run by onnxruntime.
  tensorrt  the same graphs, then one TensorRT engine each (fp16/bf16/fp32), for a CUDA machine
            with the ``tensorrt`` package; each engine's profile is sized by ``axis_ranges``.
  compile   no files: manifest entries telling the backends to wrap the same modules with
            ``torch.compile`` (with the recorded options), checked for staleness like files.
"""

from __future__ import annotations

import inspect
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
    max_batch: int | None = None,
    sam_batch_size: int | None = None,
    sam_decode_batch: int | None = None,
    ranges: dict[str, dict[str, tuple[int, int, int]]] | None = None,
    compile_mode: str | None = None,
    compile_backend: str | None = None,
) -> dict[str, Any]:
    """Export ``roles`` (a subset of segmenter, inpaint) in ``fmt`` (onnx | tensorrt | compile)
    to ``out_dir`` and return the updated ``out_dir/manifest.json``.

    A role's model is ``paths[role]`` if given, else ``models_dir/<role>`` (the zoo layout).
    device: where the models are traced ("cpu" is fine for ONNX; TensorRT builds on the GPU).
    size: the SD working square the example inputs use (default: the checkpoint's native size;
    the graphs' batch and spatial axes are dynamic anyway). precision: TensorRT's (float16,
    bfloat16, float32). The TensorRT profiles' batch bounds (``axis_ranges``): max_batch is the
    inpainter's jobs per pass (its ``max_batch``; the UNet's bound is twice that, for
    classifier-free guidance), sam_batch_size / sam_decode_batch the segmenter's ``batch_size`` /
    ``decode_batch``; None takes the backends' defaults on CUDA. ranges: ``{module: {axis: (min,
    opt, max)}}`` over the result, e.g. a spatial axis such as the UNet's "height".
    compile_mode / compile_backend: ``torch.compile``'s ``mode`` / ``backend`` recorded for the
    backends (None: torch's defaults, inductor). Entries of other formats already in the manifest are kept.
    """
    roles = tuple(roles)
    if fmt not in FORMATS:
        raise ConfigError(f"export: format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise ConfigError(f"export: roles must be a non-empty subset of {', '.join(ROLES)}, got {list(roles)}")
    table = None
    if fmt == "tensorrt":  # refuse before spending minutes on the ONNX graphs
        from .trt_engine import MISSING, PRECISIONS, available

        if not available():
            raise ModelLoadError(f"export: format 'tensorrt': {MISSING}")
        if precision not in PRECISIONS:
            raise ConfigError(f"export: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        table = axis_ranges(sam_batch_size, sam_decode_batch, max_batch, ranges)
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
    return write_manifest(out, _build_engines(onnx_entries, out, precision, table), "tensorrt", roles)


def _build_engines(
    onnx_entries: list[dict], out: Path, precision: str, table: dict[str, dict[str, tuple[int, int, int]]]
) -> list[dict]:
    """One TensorRT engine per ONNX graph, next to it; returns their manifest entries, each with
    its profile (per input: [min, opt, max] shapes) and the axis ranges it came from."""
    from .trt_engine import build_engine

    entries = []
    for e in onnx_entries:
        file = Path(e["file"]).with_name(f"model.{precision}.plan").as_posix()
        axes = table[e["module"]]
        shapes = _profile(e, axes)
        start = time.perf_counter()
        built = build_engine(out / e["file"], out / file, shapes, precision, where=f"{e['role']}/{e['module']}")
        entries.append(
            artifact_entry(
                e["role"],
                e["module"],
                "tensorrt",
                file,
                e["source"],
                dtype=precision,
                onnx=e["file"],
                parsed_onnx=Path(built["parsed"]).relative_to(out).as_posix(),
                tensorrt=built["tensorrt"],
                strongly_typed=built["strongly_typed"],
                axis_ranges={axis: list(r) for axis, r in axes.items()},
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


def _default(function: Any, name: str) -> int:
    return int(inspect.signature(function).parameters[name].default)


def axis_ranges(
    sam_batch_size: int | None = None,
    sam_decode_batch: int | None = None,
    inpaint_batch: int | None = None,
    overrides: dict[str, dict[str, tuple[int, int, int]]] | None = None,
) -> dict[str, dict[str, tuple[int, int, int]]]:
    """The TensorRT profile range (min, opt, max) of each graph's named dynamic axes, by module.

    Each graph's batch axis is bounded by what its backend hands it in one call, so that no
    engine is built (and tuned) for batches it never sees; an axis not listed (spatial axes,
    the text length) stays at the traced example's size. Opt is the full batch: the size a
    busy engine runs at.

      image_encoder   batch          SamSegmenter's batch_size (images per encoder call; 4)
      prompt_decoder  num_prompts    SamSegmenter's decode_batch (prompts per decoder pass; 64)
                      mask_batch     as num_prompts (mask inputs are 1 or one per prompt)
                      num_points     1..16: a prompt's points plus its box corners or padding point
      unet            batch          2 x the inpainter's jobs per pass (max_batch, 8 on CUDA):
                                     classifier-free guidance runs each job twice
                      timestep_batch as batch (the timestep is 1 or one per row)
      vae_encoder     batch          the inpainter's VAE_ENCODE_BATCH (8), at most its jobs per pass
      vae_decoder     batch          the inpainter's jobs per pass (the pipeline decodes a pass at once)

    sam_batch_size / sam_decode_batch / inpaint_batch replace those backend values (None: the
    backends' defaults on CUDA); ``overrides`` ({module: {axis: (min, opt, max)}}) then replaces
    or adds single axes. Raises ConfigError for a bound below 1 or an unordered range.
    """
    from ..backends.inpaint_sd import CUDA_MAX_BATCH, VAE_ENCODE_BATCH
    from ..backends.segment_sam import SamSegmenter

    encode = _default(SamSegmenter.load, "batch_size") if sam_batch_size is None else sam_batch_size
    decode = _default(SamSegmenter.load, "decode_batch") if sam_decode_batch is None else sam_decode_batch
    jobs = CUDA_MAX_BATCH if inpaint_batch is None else inpaint_batch
    for name, n in (("sam_batch_size", encode), ("sam_decode_batch", decode), ("max_batch", jobs)):
        if n < 1:
            raise ConfigError(f"export: {name} bounds a TensorRT profile and must be >= 1, got {n}")
    vae = min(VAE_ENCODE_BATCH, jobs)
    table = {
        "image_encoder": {"batch": (1, encode, encode)},
        "prompt_decoder": {"num_prompts": (1, decode, decode), "mask_batch": (1, 1, decode), "num_points": (1, 4, 16)},
        "unet": {"batch": (1, 2 * jobs, 2 * jobs), "timestep_batch": (1, 1, 2 * jobs)},
        "vae_encoder": {"batch": (1, vae, vae)},
        "vae_decoder": {"batch": (1, jobs, jobs)},
    }
    for module, axes in (overrides or {}).items():
        if module not in table:
            raise ConfigError(f"export: ranges name unknown module {module!r} (expected one of {', '.join(table)})")
        for axis, r in axes.items():
            r = tuple(int(n) for n in r)
            if len(r) != 3 or not 1 <= r[0] <= r[1] <= r[2]:
                raise ConfigError(
                    f"export: range of {module}/{axis} must be (min, opt, max) with 1 <= min <= opt <= max, got {r}"
                )
            table[module][axis] = r
    return table


def _profile(entry: dict[str, Any], axes: dict[str, tuple[int, int, int]]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """A graph's profile from its manifest entry: per input, its (min, opt, max) shapes, each
    named dynamic axis from ``axes`` and every other axis at the traced example's size."""
    shapes = {}
    for spec in entry["inputs"]:
        example = entry["example_shapes"][spec["name"]]
        lo, opt, hi = [], [], []
        for dim, n in zip(spec["shape"], example):
            r = axes.get(dim, (n, n, n)) if isinstance(dim, str) else (n, n, n)
            lo.append(r[0])
            opt.append(r[1])
            hi.append(r[2])
        shapes[spec["name"]] = (tuple(lo), tuple(opt), tuple(hi))
    return shapes
