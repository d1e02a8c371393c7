"""The first-GPU-day check: every role, runtime and kernel the engine uses on one GPU, with pass/fail bounds.

    python -m int_engine.bench.gpu_check [--models DIR | --zoo DIR] [--json FILE] [--no-compile]

Checks (each figure and its bound in one JSON; exit 1 when a check fails its bound or raises):
- ``dtypes``: every role loaded in float16 and bfloat16 against float32 on the same image;
- ``runtimes``: SAM and SD inpainting eager against ``torch.compile``, ONNX and TensorRT (where
  installed), each in float32 and float16 (TensorRT also bfloat16);
- ``vllm``: the VLM's scores under vLLM against transformers, when vLLM is installed;
- ``mining``: the Triton kernel against ``mining.mine`` in the engine's own dtypes (float32
  scores, float64 history: ``kernels.miner.mining_dtypes``);
- ``sdpa``: which fused attention kernel SAM's image encoder ran (profiler kernel names);
- ``memory``: the device memory in use beyond torch's allocator after loading every role (NVML,
  else ``torch.cuda.mem_get_info``): CUDA context, onnxruntime pools, cuDNN workspaces;
- ``engine``: one image through the whole engine: seconds per stage, peak memory.

``--models DIR`` runs the real checkpoints (offline; ``models check`` first); by default the
small real-shaped zoo is built. Without CUDA the checks that have a CPU form run in it (the tiny
zoo, bfloat16 against float32, ONNX on the CPU provider, the kernel under TRITON_INTERPRET, the
engine in float32), and the others are reported as skipped with the reason.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from int_engine.bench.mine_kernel import make_tick
from int_engine.bench.synthetic import make_scene
from int_engine.config import ROLES, EngineConfig, apply_overrides
from int_engine.models.load import load_role, offline
from int_engine.protocols import SegmentRequest

NAME_PROMPT = "Output the name of the camouflaged animal and its environment in one word."
FAST_INPAINT = ["models.inpaint.options.steps=4"]

# Per figure, the bound a check must meet: ("<", x) the figure must stay below x, (">", x) above.
BOUNDS: dict[str, tuple[str, float]] = {
    "vlm.scores": ("<", 0.25),  # log-probability, half precision against float32
    "inpaint.mean_levels": ("<", 4.0),  # 8-bit levels, on average over the image
    "detector.scores": ("<", 0.35),
    "segmenter.disagreement": ("<", 0.02),  # share of pixels whose binary mask differs
    "clip.similarity": ("<", 0.02),
    "clip.map_correlation": (">", 0.95),
    "runtime.float32": ("<", 1e-3),  # largest difference against eager
    "runtime.half_disagreement": ("<", 0.01),  # SAM's binary mask in half precision
    "runtime.half_levels": ("<", 4.0),  # SD's output in half precision
    "mining.max_difference": ("<", 1e-6),
    "vllm.scores": ("<", 0.05),
    "memory.outside_torch_gib": ("<", 4.0),
}
FUSED_KERNELS = ("fmha", "efficient", "cudnn", "flash")  # kernel-name parts of SDPA's fused kernels


def probe(role: str, model: Any, image: np.ndarray) -> dict[str, np.ndarray]:
    """The outputs of one role on ``image`` (uint8 [H, W, 3]), as float arrays to compare."""
    if role == "vlm":
        return {"scores": model.score([image, image[: image.shape[0] // 2]], [NAME_PROMPT] * 2, ["frog", "bark"])}
    if role == "inpaint":
        mask = np.zeros(image.shape[:2], np.float32)
        mask[image.shape[0] // 4 : image.shape[0] // 2, image.shape[1] // 4 : image.shape[1] // 2] = 1
        return {"image": model.inpaint([image], [mask], ["bark"], ["frog"], [0])[0].astype(np.float32)}
    if role == "detector":
        found = model.detect([image], ["animal"], 0.0, 0.0)[0]
        top = np.argsort(-found.scores)[:5]
        return {"scores": found.scores[top], "boxes": found.boxes[top]}
    if role == "segmenter":
        h, w = image.shape[:2]
        box = np.array([[w * 0.2, h * 0.2, w * 0.7, h * 0.6]], np.float32)
        return {"probability": model.segment([SegmentRequest(image, boxes=box)])[0]}
    sims = model.image_text_similarity([image], ["frog"])
    return {"similarity": sims, "map": model.similarity_maps([image], ["frog"], [["bark"]])[0]}


def largest_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    return {
        k: float(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)).max()) if np.size(a[k]) else 0.0 for k in a
    }


def compared(role: str, ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, float]:
    """The figures ``BOUNDS`` names for ``role``: how far ``got`` is from ``ref``."""
    if role == "segmenter":
        return {"segmenter.disagreement": float(np.mean((ref["probability"] > 0.5) != (got["probability"] > 0.5)))}
    if role == "inpaint":
        return {"inpaint.mean_levels": float(np.abs(ref["image"] - got["image"]).mean())}
    if role == "clip":
        corr = float(np.corrcoef(ref["map"].ravel(), got["map"].ravel())[0, 1])
        return {"clip.similarity": largest_difference(ref, got)["similarity"], "clip.map_correlation": corr}
    return {f"{role}.scores": largest_difference(ref, got)["scores"]}


def judged(figures: dict[str, float]) -> list[str]:
    """The figures that miss their bound, as sentences."""
    failures = []
    for name, value in figures.items():
        if name in BOUNDS:
            op, bound = BOUNDS[name]
            if not (value < bound if op == "<" else value > bound) or not np.isfinite(value):
                failures.append(f"{name} = {value:.4g}, bound {op} {bound:g}")
    return failures


class Context:
    """What the checks share: the device, the models folder, the image, a work folder."""

    def __init__(self, device: str, models: Path, work: Path) -> None:
        self.device, self.models, self.work = device, models, work
        self.cuda = device.startswith("cuda")
        self.image = make_scene(0, 256, 320)[0] if self.cuda else make_scene(0, 64, 80)[0]

    def config(self, *overrides: str) -> EngineConfig:
        return apply_overrides(EngineConfig(), [f"models.device={self.device}", *overrides])

    def load(self, role: str, *overrides: str) -> Any:
        return load_role(self.config(*overrides).models, role, self.models)


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_dtypes(ctx: Context) -> dict[str, Any]:
    """Every role in half precision against float32 (on CPU: bfloat16 only)."""
    figures: dict[str, Any] = {}
    halves = ("float16", "bfloat16") if ctx.cuda else ("bfloat16",)
    for role in ROLES:
        extra = FAST_INPAINT if role == "inpaint" else []
        ref = probe(role, ctx.load(role, "models.dtype=float32", *extra), ctx.image)
        release()
        for dtype in halves:
            got = probe(role, ctx.load(role, f"models.dtype={dtype}", *extra), ctx.image)
            for name, value in compared(role, ref, got).items():
                figures[f"{name}@{dtype}"] = value
            release()
    return figures


def check_runtimes(ctx: Context, compile_too: bool) -> dict[str, Any]:
    """SAM and SD inpainting: eager against the compiled and exported runtimes, per precision."""
    from int_engine.export import trt_engine
    from int_engine.export.build import export_models

    runs = [("onnx", "float32")]
    if ctx.cuda:
        runs += [("onnx", "float16")]
        runs += [("compile", p) for p in ("float32", "float16")] if compile_too else []
        runs += [("tensorrt", p) for p in ("float32", "float16", "bfloat16")] if trt_engine.available() else []
    figures: dict[str, Any] = {"runs": [f"{f}/{p}" for f, p in runs]}
    roles = ("segmenter", "inpaint") if ctx.cuda else ("segmenter",)
    for role in roles:
        extra = FAST_INPAINT if role == "inpaint" else []
        eager = {p: probe(role, ctx.load(role, f"models.dtype={p}", *extra), ctx.image) for p in {p for _, p in runs}}
        for fmt, precision in runs:
            folder = ctx.work / f"{fmt}-{precision}"
            if not (folder / "manifest.json").exists():
                started = time.perf_counter()
                export_models(ctx.models, fmt, folder, roles=roles, device=ctx.device, precision=precision)
                figures[f"export_seconds.{fmt}/{precision}"] = time.perf_counter() - started
            model = ctx.load(
                role,
                f"models.dtype={precision}",
                f"models.{role}.options.runtime={fmt}",
                f"models.{role}.options.artifacts={folder}",
                *extra,
            )
            got = probe(role, model, ctx.image)
            ref = eager[precision]
            if precision == "float32":
                figures[f"runtime.float32@{role}/{fmt}"] = max(largest_difference(ref, got).values())
            elif role == "segmenter":
                figures[f"runtime.half_disagreement@{role}/{fmt}/{precision}"] = compared(role, ref, got)[
                    "segmenter.disagreement"
                ]
            else:
                figures[f"runtime.half_levels@{role}/{fmt}/{precision}"] = compared(role, ref, got)["inpaint.mean_levels"]
            release()
    return figures


def check_mining(ctx: Context) -> dict[str, Any]:
    """The fused kernel against ``mine`` on a [256, 16, 64] tick in the dtypes the engine gives it."""
    from int_engine.kernels import mine_fused, uses_triton
    from int_engine.kernels.miner import mining_dtypes
    from int_engine.mining import mine

    s_dtype, h_dtype = mining_dtypes(torch.device(ctx.device))
    b = 256 if ctx.cuda else 8
    sb, sa, hist = make_tick(b, 16, 64, torch.float64, ctx.device)
    ref = mine(sb, sa, hist)
    got = mine_fused(sb.to(s_dtype), sa.to(s_dtype), hist.to(h_dtype))
    return {
        "shape": [b, 16, 64],
        "dtypes": [str(s_dtype), str(h_dtype)],
        "kernel": "triton" if uses_triton(sb.device) else "torch reference",
        "mining.max_difference": max(float((g.double() - r).abs().max()) for g, r in zip(got[1:], ref[1:])),
        "picks_equal": bool(torch.equal(got[0].cpu(), ref[0].cpu())),
    }


def check_vllm(ctx: Context) -> dict[str, Any]:
    """The VLM's scores under vLLM against the transformers backend, same image and answers."""
    ref = probe("vlm", ctx.load("vlm", "models.vlm.backend=hf"), ctx.image)
    release()
    model = ctx.load("vlm", "models.vlm.backend=vllm")
    try:
        got = probe("vlm", model, ctx.image)
    finally:
        model.close()
    return {"vllm.scores": largest_difference(ref, got)["scores"]}


def check_sdpa(ctx: Context) -> dict[str, Any]:
    """Which attention kernel SAM's image encoder runs (half precision, the profiler's kernel names)."""
    from torch.profiler import ProfilerActivity, profile

    sam = ctx.load("segmenter", "models.dtype=float16").sam
    size = sam.image_encoder.img_size
    x = torch.zeros(1, 3, size, size, device=ctx.device, dtype=torch.float16)
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        sam.image_encoder(x)
        torch.cuda.synchronize()
    names = sorted({e.name for e in prof.events() if "attention" in e.name.lower() or "fmha" in e.name.lower()})
    fused = [n for n in names if any(k in n.lower() for k in FUSED_KERNELS)]
    return {"attention_kernels": names, "fused": bool(fused)}


def check_memory(ctx: Context) -> dict[str, Any]:
    """Device memory in use beyond torch's allocator once every role is loaded."""
    models = [ctx.load(role) for role in ROLES]
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    used, source = total - free, "torch.cuda.mem_get_info"
    if importlib.util.find_spec("pynvml") is not None:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        used, source = pynvml.nvmlDeviceGetMemoryInfo(handle).used, "NVML"
    reserved = torch.cuda.memory_reserved()
    del models
    return {
        "source": source,
        "device_used_gib": used / 2**30,
        "torch_reserved_gib": reserved / 2**30,
        "memory.outside_torch_gib": (used - reserved) / 2**30,
    }


def check_engine(ctx: Context) -> dict[str, Any]:
    from int_engine import IntEngine

    cfg = apply_overrides(ctx.config("iterations=2", *FAST_INPAINT), [])
    with IntEngine(cfg, models_dir=ctx.models) as engine:
        engine.segment(ctx.image)  # warm-up: kernels chosen, caches filled
        if ctx.cuda:
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        result = engine.segment(ctx.image)
        seconds = time.perf_counter() - started
    stages: dict[str, float] = {}
    for it in result.trace.iterations:
        for stage, s in it.seconds.items():
            stages[stage] = stages.get(stage, 0.0) + s
    peak = torch.cuda.max_memory_allocated() / 2**20 if ctx.cuda else None
    return {"seconds": seconds, "peak_mib": peak, "seconds_by_stage": stages, "soft_max": float(result.soft.max())}


def plan(ctx: Context, compile_too: bool) -> dict[str, tuple[Callable[[], dict], str | None]]:
    """Every check, with the reason it is skipped here (None: it runs)."""
    has_vllm = importlib.util.find_spec("vllm") is not None
    return {
        "dtypes": (lambda: check_dtypes(ctx), None),
        "runtimes": (lambda: check_runtimes(ctx, compile_too), None),
        "mining": (lambda: check_mining(ctx), None),
        "vllm": (
            lambda: check_vllm(ctx),
            None if has_vllm and ctx.cuda else "needs vLLM on CUDA (CPU: tests/backends/test_vlm_vllm.py)",
        ),
        "sdpa": (lambda: check_sdpa(ctx), None if ctx.cuda else "needs CUDA (which fused kernel ran)"),
        "memory": (lambda: check_memory(ctx), None if ctx.cuda else "needs CUDA (device memory)"),
        "engine": (lambda: check_engine(ctx), None),
    }


def run_checks(ctx: Context, compile_too: bool, only: list[str] | None = None) -> dict[str, Any]:
    """Run the plan; per check its figures, the bounds it failed, its error, or why it was skipped."""
    report: dict[str, Any] = {"device": torch.cuda.get_device_name() if ctx.cuda else "cpu", "torch": torch.__version__}
    report["checks"] = {}
    for name, (check, skipped) in plan(ctx, compile_too).items():
        if only and name not in only:
            continue
        if skipped:
            report["checks"][name] = {"skipped": skipped}
            print(f"{name}: skipped: {skipped}")
            continue
        started = time.perf_counter()
        try:
            figures = check()
            failures = judged(figures) + (["sdpa: SAM's attention ran no fused kernel"] if figures.get("fused") is False else [])
            failures += ["mining: picks differ"] if figures.get("picks_equal") is False else []
            entry = {"figures": figures, "failures": failures, "passed": not failures}
        except Exception as err:  # recorded and reported: the other checks still run
            entry = {"error": "".join(traceback.format_exception(err, limit=4)), "passed": False}
        entry["seconds"] = time.perf_counter() - started
        report["checks"][name] = entry
        reasons = entry.get("failures") or [line for line in entry.get("error", "").splitlines() if line.strip()][-1:]
        verdict = "ok" if entry["passed"] else "FAILED: " + "; ".join(reasons)
        print(f"{name}: {verdict}")
        release()
    report["passed"] = all(c.get("passed", True) for c in report["checks"].values())
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="real checkpoints: vlm/ inpaint/ detector/ segmenter/ clip/")
    parser.add_argument("--zoo", type=Path, help="a zoo to use (default: the small zoo on CUDA, the tiny one on CPU)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (its first calls compile for minutes)")
    parser.add_argument("--only", nargs="+", help="run only these checks")
    args = parser.parse_args(argv)
    offline()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # the kernel's CPU form
    with tempfile.TemporaryDirectory() as tmp:
        models = args.models or args.zoo
        if models is None and device == "cuda":
            from int_engine.models.zoo import build_tiny_zoo

            models = Path(tmp) / "small"
            build_tiny_zoo(models, scale="small")
        elif models is None:
            from int_engine.models.cache import ensure_tiny_zoo

            models = ensure_tiny_zoo()
        report = run_checks(
            Context(device, Path(models), Path(tmp) / "work"), not args.no_compile and device == "cuda", args.only
        )
    report["bounds"] = {k: list(v) for k, v in BOUNDS.items()}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    print("passed" if report["passed"] else "FAILED")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
