"""What INT costs at the paper's settings, from the real models' shapes: ``python -m int_engine.bench.cost``.

Every figure comes from running the engine's model calls at real size without weights
(``bench.realsize``): FLOPs per stage per image-iteration, each role's weights and its activations
at the engine's batch bounds, and a lower bound on the seconds per image on a GPU given its peak
FLOP/s and memory bandwidth (each stage the slower of its arithmetic and of reading its weights
once per forward pass, passes shared by the images in flight). ``--json FILE`` writes the same
figures, with per role its ``flops_per_item``: segmenter one image through SAM's encoder, inpaint
one UNet evaluation, vlm one prefill token of the language model, detector and clip one view.

The counts per image-iteration follow the pipeline at the paper's settings (``Settings``): K
views, the VLM's greedy answers asked once per image (``pipeline.propose``), one scoring pass per
distinct view image (shared prefix; the original views' once per image) with the candidates'
answers, one inpainting job, GroundingDINO,
Spatial CLIP, SAM and eq 10's CLIP on every view, CLIP's prompt ensembles encoded once per name.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..models import real
from . import realsize as rs

GB = 1e9


def _default(cls, name: str) -> Any:
    """A backend's own default for an option (its ``load``'s keyword default)."""
    return inspect.signature(cls.load).parameters[name].default


def _backend_bounds() -> dict[str, int]:
    """The engine's batch bounds on CUDA, read from the backends, so the plan follows the code."""
    from ..backends import clip_open, detect_gdino, inpaint_sd, segment_sam, vlm_hf

    return {
        "sam_batch": _default(segment_sam.SamSegmenter, "batch_size"),
        "sam_decode_batch": _default(segment_sam.SamSegmenter, "decode_batch"),
        "detector_batch": detect_gdino.CUDA_MAX_BATCH,
        "clip_batch": _default(clip_open.OpenClipModel, "batch_size"),
        "inpaint_jobs": inpaint_sd.CUDA_MAX_BATCH,
        "vlm_batch_tokens": vlm_hf.DEFAULT_MAX_BATCH_TOKENS,
        "steps": _default(inpaint_sd.SDInpainter, "steps"),
    }


GPUS = {"H100": (989e12, 3.35e12, 80), "A100": (312e12, 2.04e12, 80)}  # dense bf16 FLOP/s, HBM bytes/s, GB


@dataclass
class Settings:
    """The paper's run: views, iterations, candidates per view, the engine's batch bounds."""

    views: int = 9
    iterations: int = 4
    candidates: int = 3
    answer_tokens: int = 16  # generated per P_B / P_A answer (the bound is max_new_tokens, 48)
    points: int = 16  # Spatial CLIP's points per SAM prompt (n positives + n negatives)
    background_names: int = 1
    in_flight: int = 8  # images whose calls share each batch (EngineConfig.max_in_flight)
    dtype: str = "float16"
    # the backends' own bounds on CUDA (``_backend_bounds``), filled in when left at 0
    steps: int = 0
    sam_batch: int = 0
    sam_decode_batch: int = 0
    detector_batch: int = 0
    clip_batch: int = 0
    inpaint_jobs: int = 0
    vlm_batch_tokens: int = 0

    def __post_init__(self) -> None:
        for name, value in _backend_bounds().items():
            if not getattr(self, name):
                setattr(self, name, value)


@dataclass
class Stage:
    """One SPEC stage per image-iteration: its FLOPs and the weight bytes its passes read."""

    name: str
    role: str
    items: float
    flops: float
    weight_reads: float
    notes: str = ""


@dataclass
class Model:
    stages: list[Stage] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)  # role -> bytes
    activations: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> {batch, bytes}
    flops_per_item: dict[str, float] = field(default_factory=dict)


def _bytes(module, dtype_bytes: int | None = None) -> float:
    modules = module.values() if isinstance(module, dict) else [module]
    return float(sum(p.numel() * (dtype_bytes or p.element_size()) for m in modules for p in m.parameters()))


def cost_model(s: Settings = Settings()) -> Model:
    """Measure every role at real size and put the pipeline's counts on it."""
    dtype = getattr(torch, s.dtype)
    out = Model()
    k, it = s.views, s.iterations
    prompt = rs.SYSTEM_TOKENS + rs.IMAGE_TOKENS + (rs.PROMPT_TOKENS["box"] + rs.PROMPT_TOKENS["name"]) / 2
    name_prompt = rs.SYSTEM_TOKENS + rs.IMAGE_TOKENS + rs.PROMPT_TOKENS["name"]

    vlm = real.build_vlm(dtype)
    rows = max(1, s.vlm_batch_tokens // int(name_prompt))
    calls = rs.vlm_calls(vlm, images=1, rows=rows, tokens=int(name_prompt))
    per_token = calls["prefill"].flops / (rows * int(name_prompt))
    out.flops_per_item["vlm"] = per_token
    out.weights["vlm"] = _bytes(vlm)
    out.activations["vlm"] = {"batch": f"{rows} rows x {int(name_prompt)} tokens", "bytes": calls["prefill"].activation_bytes}
    lm_bytes = _bytes(vlm.model.language_model) + _bytes(vlm.lm_head)
    generate_rows = 2 * k / it  # P_B and P_A per view, once per image
    out.stages.append(
        Stage(
            "propose",
            "vlm",
            generate_rows,
            generate_rows * (calls["vision"].flops + per_token * (prompt + s.answer_tokens)),
            # prefill in token-budget passes, then one pass over the LM's weights per generated token
            lm_bytes * (generate_rows * prompt / s.vlm_batch_tokens + s.answer_tokens / s.in_flight),
            "greedy answers asked once per image: 2K/I requests per image-iteration",
        )
    )
    # every view after removal, each a shared prefix; before removal once per image (the same
    # original view and answers in every iteration: pipeline.select_name reuses the scores)
    score_images = k + k / it
    out.stages.append(
        Stage(
            "score",
            "vlm",
            score_images * s.candidates,
            score_images * (calls["vision"].flops + per_token * (name_prompt + s.candidates * rs.ANSWER_TOKENS))
            + calls["head"].flops / rows * score_images * s.candidates,
            lm_bytes * score_images * name_prompt / s.vlm_batch_tokens,
            "one prefix per view image (before removal: once per image), the candidates' answers against it",
        )
    )
    del vlm

    parts = real.build_inpaint(dtype)
    sd = rs.inpaint_calls(parts, s.steps, jobs=1)
    out.flops_per_item["inpaint"] = sd["unet"].flops / s.steps / 2  # one UNet evaluation of one latent
    out.weights["inpaint"] = _bytes(parts)
    batch_act = rs.inpaint_calls(parts, 1, jobs=s.inpaint_jobs)
    out.activations["inpaint"] = {
        "batch": f"{s.inpaint_jobs} jobs (UNet batch {2 * s.inpaint_jobs})",
        "bytes": max(c.activation_bytes for c in batch_act.values()),
    }
    out.stages.append(
        Stage(
            "inpaint",
            "inpaint",
            1,
            sum(c.flops for c in sd.values()),
            _bytes(parts["unet"]) * s.steps / s.in_flight + _bytes(parts["vae"]) + _bytes(parts["text_encoder"]) / s.in_flight,
            "one whole-image job per image-iteration",
        )
    )
    del parts

    det = rs.detector_calls(1, 4, dtype)["forward"]
    det_batch = rs.detector_calls(s.detector_batch, 4, dtype)["forward"]
    out.flops_per_item["detector"] = det.flops
    with torch.device("meta"):
        out.weights["detector"] = _bytes(real.build_detector(), 4)  # float32 weights under autocast
    out.activations["detector"] = {"batch": f"{s.detector_batch} views", "bytes": det_batch.activation_bytes}
    out.stages.append(Stage("detect", "detector", k, k * det.flops, out.weights["detector"] * k / s.detector_batch))

    sam = real.build_segmenter(dtype)
    one = rs.segmenter_calls(sam, 1, 1, s.points)
    bound = rs.segmenter_calls(sam, s.sam_batch, s.sam_decode_batch, s.points)
    out.flops_per_item["segmenter"] = one["encoder"].flops
    out.weights["segmenter"] = _bytes(sam)
    out.activations["segmenter"] = {
        "batch": f"{s.sam_batch} images / {s.sam_decode_batch} prompts",
        "bytes": max(c.activation_bytes for c in bound.values()),
    }
    out.stages.append(
        Stage(
            "segment (SAM)",
            "segmenter",
            k,
            k * (one["encoder"].flops + one["decoder"].flops),
            _bytes(sam.image_encoder) * k / s.sam_batch,
        )
    )
    del sam

    clip = real.build_clip(dtype)
    texts = 2 + s.background_names  # the pick, its background names and "", once per image
    c1 = rs.clip_calls(clip, 1, texts)
    cb = rs.clip_calls(clip, s.clip_batch, texts)
    out.flops_per_item["clip"] = c1["surgery"].flops
    out.weights["clip"] = _bytes(clip)
    out.activations["clip"] = {"batch": f"{s.clip_batch} images", "bytes": max(c.activation_bytes for c in cb.values())}
    visual = _bytes(clip.visual)
    out.stages.append(
        Stage("segment (Spatial CLIP)", "clip", k, k * c1["surgery"].flops + c1["text"].flops / it, visual * k / s.clip_batch)
    )
    out.stages.append(Stage("weight (eq 10)", "clip", k, k * c1["image"].flops, visual * k / s.clip_batch))
    return out


def lower_bound(model: Model, s: Settings, flops_per_s: float, bytes_per_s: float) -> dict[str, float]:
    """Seconds per image per stage on a GPU: each stage at best the slower of its arithmetic and
    of reading its weights (activations' traffic not counted), over the image's iterations."""
    return {st.name: s.iterations * max(st.flops / flops_per_s, st.weight_reads / bytes_per_s) for st in model.stages}


def memory_rows(model: Model) -> list[list[str]]:
    """The memory plan: per role its weights, its activation peak at the engine's batch bound, both."""
    rows = []
    for role in real.ROLES:
        w, a = model.weights[role], model.activations[role]
        rows.append([role, f"{w / GB:.2f}", a["batch"], f"{a['bytes'] / GB:.2f}", f"{(w + a['bytes']) / GB:.2f}"])
    total_w = sum(model.weights.values())
    total_a = sum(a["bytes"] for a in model.activations.values())
    rows.append(
        ["all five", f"{total_w / GB:.2f}", "each role's bound at once", f"{total_a / GB:.2f}", f"{(total_w + total_a) / GB:.2f}"]
    )
    return rows


MEMORY_HEADER = ["role", "weights GB", "activations at", "activations GB", "together GB"]


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def report(model: Model, s: Settings) -> dict[str, Any]:
    """Every figure, as ``--json`` writes it."""
    return {
        "settings": asdict(s),
        "stages": [asdict(st) for st in model.stages],
        "flops_per_image_iteration": sum(st.flops for st in model.stages),
        "weights_bytes": model.weights,
        "activations": model.activations,
        "flops_per_item": model.flops_per_item,
        "lower_bound_seconds_per_image": {
            gpu: lower_bound(model, s, f, b) | {"total": sum(lower_bound(model, s, f, b).values())}
            for gpu, (f, b, _) in GPUS.items()
        },
    }


def parse_settings(argv: list[str] | None, prog: str, description: str) -> tuple[Settings, str | None]:
    """``Settings`` from the command line (one option per field) and the ``--json`` file, if any."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for f in Settings.__dataclass_fields__.values():
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args(argv)
    return Settings(**{f: getattr(args, f) for f in Settings.__dataclass_fields__}), args.json


def main(argv: list[str] | None = None) -> int:
    """The paper's lineup; ``python -m int_engine.bench.cost_modern`` is the modern preset's."""
    s, json_path = parse_settings(argv, "python -m int_engine.bench.cost", __doc__.split("\n\n")[0])
    model = cost_model(s)
    data = report(model, s)
    print(f"INT at the paper's settings: {s.views} views, {s.iterations} iterations, {s.candidates} candidates, {s.dtype}")
    print()
    stage_rows = [
        [st.name, st.role, f"{st.items:g}", f"{st.flops / 1e12:.2f}", f"{st.weight_reads / GB:.2f}"] for st in model.stages
    ]
    stage_rows.append(["all", "", "", f"{data['flops_per_image_iteration'] / 1e12:.2f}", ""])
    print(markdown(["stage", "role", "items", "TFLOP / image-iteration", "weights read GB"], stage_rows))
    print(markdown(MEMORY_HEADER, memory_rows(model)))
    bound_rows = [
        [gpu, f"{f / 1e12:.0f}", f"{b / 1e12:.2f}", f"{data['lower_bound_seconds_per_image'][gpu]['total']:.2f}"]
        for gpu, (f, b, _) in GPUS.items()
    ]
    print(markdown(["GPU", "peak TFLOP/s", "HBM TB/s", "lower bound s / image"], bound_rows))
    if json_path:
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
