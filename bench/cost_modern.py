"""The ``modern`` lineup's memory plan at real size: ``python -m int_engine.bench.cost_modern``.

Qwen3-VL-8B-Instruct, SDXL inpainting 0.1, GroundingDINO, SAM 2.1 hiera-large, CLIP ViT-B/16 and
the optional concept role SAM 3, built without weights (``models.real_modern``) and run at the
engine's batch bounds for their backends (``bench.realsize_modern``): per role its parameters,
its weights in the precision its backend keeps them in (float16 / bfloat16: the same bytes;
GroundingDINO and SAM 3 in float32, SAM 2.1's prompt side in float32), its activation peak at
those bounds, and the total against one 80 GB GPU. A figure that could not be measured without
weights is printed as "not measured", never estimated.

The VLM's language model runs the paper lineup's rows x tokens (``vlm_batch_tokens`` // the name
prompt's length, with 576 image tokens: a 768 px view for Qwen3-VL's 16 px patches merged 2 x 2),
its KV cache counted in the prefill's peak; its vision tower sees one view per row.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import torch

from ..models import real_modern as rm
from . import realsize as rs
from . import realsize_modern as rsm
from .cost import GB, GPUS, Model, Settings, _bytes, markdown, parse_settings

NOT_MEASURED = "not measured"
CHECKPOINTS = {
    "vlm": "Qwen/Qwen3-VL-8B-Instruct",
    "inpaint": "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
    "detector": "IDEA-Research/grounding-dino-base",
    "segmenter": "facebook/sam2.1-hiera-large",
    "clip": "ViT-B/16 (OpenAI)",
    "concept": "facebook/sam3",
}


def _default(fn, name: str) -> Any:
    return inspect.signature(fn).parameters[name].default


def modern_bounds() -> dict[str, int]:
    """The modern backends' batch bounds on CUDA, read from their code (GroundingDINO's and CLIP's
    are the paper lineup's, in ``Settings``)."""
    from ..backends import inpaint_diffusers, segment_sam2, segment_sam3, vlm_qwen

    sam2, sam3 = segment_sam2.Sam2Segmenter.load, segment_sam3.Sam3ConceptSegmenter.load
    return {
        "vlm_batch_tokens": vlm_qwen.DEFAULT_MAX_BATCH_TOKENS,
        "inpaint_jobs": inpaint_diffusers.CUDA_MAX_BATCH,
        "steps": _default(inpaint_diffusers.DiffusersInpainter.load, "steps"),
        "sam_batch": _default(sam2, "batch_size"),
        "sam_decode_batch": _default(sam2, "decode_batch"),
        "concept_image_batch": _default(sam3, "image_batch"),
        "concept_max_batch": _default(sam3, "max_batch"),
    }


def _peak(calls: dict[str, rs.Cost]) -> int:
    return max(c.activation_bytes for c in calls.values())


def _measure_vlm(out: Model, params: dict[str, int], s: Settings, b: dict[str, int], dtype: torch.dtype) -> None:
    vlm = rm.build_vlm(dtype)
    tokens = int(rs.SYSTEM_TOKENS + rs.IMAGE_TOKENS + rs.PROMPT_TOKENS["name"])
    rows = max(1, b["vlm_batch_tokens"] // tokens)
    side = rm.modern_config("vlm")["image_size"]
    calls = rsm.vlm_calls(vlm, images=rows, side=side, rows=rows, tokens=tokens)
    params["vlm"], out.weights["vlm"] = rm.parameter_count(vlm), _bytes(vlm)
    out.flops_per_item["vlm"] = calls["prefill"].flops / (rows * tokens)
    out.flops_per_item["vlm_vision_per_view"] = calls["vision"].flops / rows
    out.activations["vlm"] = {
        "batch": f"{rows} rows x {tokens} tokens (+ {rows} views of {side} px)",
        "bytes": _peak(calls),
        "parts": {k: c.activation_bytes for k, c in calls.items()},
        "kv_cache_bytes": rsm.kv_cache_bytes(vlm, rows * tokens, dtype.itemsize),
    }


def _measure_inpaint(out: Model, params: dict[str, int], s: Settings, b: dict[str, int], dtype: torch.dtype) -> None:
    parts = rm.build_inpaint(dtype)
    jobs = b["inpaint_jobs"]
    calls = rsm.inpaint_calls(parts, b["steps"], jobs=jobs)
    params["inpaint"], out.weights["inpaint"] = rm.parameter_count(parts), _bytes(parts)
    out.flops_per_item["inpaint"] = calls["unet"].flops / b["steps"] / (2 * jobs)
    out.activations["inpaint"] = {
        "batch": f"{jobs} jobs (UNet batch {2 * jobs}, VAE float32)",
        "bytes": _peak(calls),
        "parts": {k: c.activation_bytes for k, c in calls.items()},
        "components": {k: rm.parameter_count(m) for k, m in parts.items()},
    }


def _measure_sam(out: Model, params: dict[str, int], s: Settings, b: dict[str, int], dtype: torch.dtype) -> None:
    sam = rm.build_segmenter(dtype)
    calls = rsm.segmenter_calls(sam, b["sam_batch"], b["sam_decode_batch"], s.points)
    params["segmenter"], out.weights["segmenter"] = rm.parameter_count(sam), _bytes(sam)
    out.flops_per_item["segmenter"] = calls["encoder"].flops / b["sam_batch"]
    out.activations["segmenter"] = {
        "batch": f"{b['sam_batch']} images / {b['sam_decode_batch']} prompts",
        "bytes": _peak(calls),
        "parts": {k: c.activation_bytes for k, c in calls.items()},
    }
    del sam
    sam3 = rm.build_concept()
    vision = rsm.concept_calls(sam3, b["concept_image_batch"])["vision"]
    params["concept"], out.weights["concept"] = rm.parameter_count(sam3), _bytes(sam3)
    out.flops_per_item["concept"] = vision.flops / b["concept_image_batch"]
    out.activations["concept"] = {
        "batch": f"{b['concept_image_batch']} images, vision backbone, float32 (heads at {b['concept_max_batch']} requests: {NOT_MEASURED})",
        "bytes": vision.activation_bytes,
        "parts": {"vision": vision.activation_bytes, "heads": NOT_MEASURED},
    }


def _paper_roles(out: Model, params: dict[str, int], s: Settings, dtype: torch.dtype) -> None:
    """GroundingDINO and CLIP: the paper lineup's models and bounds (``bench.cost``'s way)."""
    from ..models import real

    det_batch = rs.detector_calls(s.detector_batch, 4, dtype)["forward"]
    with torch.device("meta"):
        det = real.build_detector()
    params["detector"], out.weights["detector"] = rm.parameter_count(det), _bytes(det, 4)
    out.activations["detector"] = {"batch": f"{s.detector_batch} views", "bytes": det_batch.activation_bytes}
    clip = real.build_clip(dtype)
    cb = rs.clip_calls(clip, s.clip_batch, 2 + s.background_names)
    params["clip"], out.weights["clip"] = rm.parameter_count(clip), _bytes(clip)
    out.activations["clip"] = {"batch": f"{s.clip_batch} images", "bytes": _peak(cb)}


def modern_model(s: Settings) -> tuple[Model, dict[str, int], dict[str, int]]:
    """Every modern role measured at real size: the model, parameter counts, the bounds used."""
    dtype = getattr(torch, s.dtype)
    out, params, bounds = Model(), {}, modern_bounds()
    _measure_vlm(out, params, s, bounds, dtype)
    _measure_inpaint(out, params, s, bounds, dtype)
    _measure_sam(out, params, s, bounds, dtype)
    _paper_roles(out, params, s, dtype)
    return out, params, bounds


def memory_rows(model: Model, params: dict[str, int]) -> list[list[str]]:
    """Per role: checkpoint, parameters, weights, activation peak at its bound, both; then the
    five roles together, and with the concept role, against one 80 GB GPU."""
    rows = []
    for role in rm.ROLES:
        w, a = model.weights[role], model.activations[role]
        act = f"{a['bytes'] / GB:.2f}" if isinstance(a["bytes"], (int, float)) else NOT_MEASURED
        together = f"{(w + a['bytes']) / GB:.2f}" if act != NOT_MEASURED else NOT_MEASURED
        rows.append([role, CHECKPOINTS[role], f"{params[role] / 1e9:.3f} B", f"{w / GB:.2f}", a["batch"], act, together])
    capacity = GPUS["H100"][2]
    for label, roles in (("all five", rm.ROLES[:-1]), ("all six (concept: backbone only)", rm.ROLES)):
        w = sum(model.weights[r] for r in roles)
        a = sum(model.activations[r]["bytes"] for r in roles)
        p = sum(params[r] for r in roles)
        rows.append(
            [
                label,
                f"vs one {capacity} GB GPU: {(w + a) / (capacity * GB):.0%}",
                f"{p / 1e9:.3f} B",
                f"{w / GB:.2f}",
                "each role's bound at once",
                f"{a / GB:.2f}",
                f"{(w + a) / GB:.2f}",
            ]
        )
    return rows


MEMORY_HEADER = ["role", "checkpoint", "parameters", "weights GB", "activations at", "activations GB", "together GB"]


def run(s: Settings, json_path: str | None = None) -> int:
    """Print the modern lineup's memory table (and write every figure to ``json_path``)."""
    model, params, bounds = modern_model(s)
    print(f"INT's modern lineup at real size, {s.dtype} weights where the backend keeps half precision")
    print()
    print(markdown(MEMORY_HEADER, memory_rows(model, params)))
    if json_path:
        data = {
            "lineup": "modern",
            "settings": {"points": s.points, "dtype": s.dtype, "detector_batch": s.detector_batch, "clip_batch": s.clip_batch}
            | bounds,
            "checkpoints": CHECKPOINTS,
            "parameters": params,
            "weights_bytes": model.weights,
            "activations": model.activations,
            "flops_per_item": model.flops_per_item,
            "gpu_capacity_gb": GPUS["H100"][2],
        }
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    s, json_path = parse_settings(argv, "python -m int_engine.bench.cost_modern", __doc__.split("\n\n")[0])
    return run(s, json_path)


if __name__ == "__main__":
    raise SystemExit(main())
