"""Check the engine on one GPU in one command, with the small real-shaped zoo (no download).

    python -m int_engine.bench.gpu_check [--zoo DIR] [--json FILE] [--no-compile]

1. each role in float16 and bfloat16 against float32 (largest output difference), its CUDA time
   and peak memory;
2. each runtime of SAM and SD inpainting: eager, ``torch.compile``, ONNX on the CUDA provider
   with IO binding, TensorRT where installed, against eager;
3. the Triton mining kernel against ``mining.mine`` on a [256, 16, 64] tick;
4. one image through the whole engine in float16: seconds per stage and peak memory.

A check that raises is recorded with its error and the script exits 1; without CUDA it prints
one line and exits 0. Sized to finish in a few minutes on one H100/H200.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from int_engine.bench.mine_kernel import make_tick, median_ms
from int_engine.bench.synthetic import make_scene
from int_engine.config import ROLES, EngineConfig, apply_overrides
from int_engine.models.load import load_role, offline
from int_engine.protocols import SegmentRequest

NAME_PROMPT = "Output the name of the camouflaged animal and its environment in one word."


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
    return {"similarity": sims, "map": model.similarity_maps([image], ["frog"])[0]}


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """fn()'s result, its CUDA wall time in seconds and the peak memory it allocated in MiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0, (torch.cuda.max_memory_allocated() - base) / 2**20


def largest_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    return {
        k: float(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)).max()) if np.size(a[k]) else 0.0 for k in a
    }


def release() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def measure(role: str, cfg: EngineConfig, zoo: Path, image: np.ndarray, reference: dict | None) -> tuple[dict, dict, Any]:
    """Load ``role`` with ``cfg``, probe it once to warm up (kernels chosen, torch.compile compiled)
    and once timed; returns its outputs, its figures (against ``reference`` when given) and the model."""
    model, _, weights = timed(lambda: load_role(cfg.models, role, zoo))
    probe(role, model, image)
    result, seconds, peak = timed(lambda: probe(role, model, image))
    row: dict[str, Any] = {"seconds": seconds, "peak_mib": peak, "weights_mib": weights}
    if reference is not None:
        row["max_difference"] = largest_difference(reference, result)
    return result, row, model


def check_dtypes(zoo: Path, image: np.ndarray) -> dict[str, Any]:
    """Each role in float32, float16 and bfloat16; differences against float32."""
    out: dict[str, Any] = {}
    for role in ROLES:
        rows, reference = {}, None
        for dtype in ("float32", "float16", "bfloat16"):
            cfg = apply_overrides(
                EngineConfig(),
                ["models.device=cuda", f"models.dtype={dtype}"]
                + (["models.inpaint.options.steps=4"] if role == "inpaint" else []),
            )
            result, rows[dtype], model = measure(role, cfg, zoo, image, reference)
            reference = reference or result
            del model
            release()
        out[role] = rows
    return out


def check_runtimes(zoo: Path, image: np.ndarray, work: Path, compile_too: bool) -> dict[str, Any]:
    """SAM and SD inpainting on every runtime; differences against eager."""
    from int_engine.export import trt_engine
    from int_engine.export.build import export_models

    formats = ["onnx"] + (["compile"] if compile_too else []) + (["tensorrt"] if trt_engine.available() else [])
    out: dict[str, Any] = {"formats": formats}
    for fmt in formats:
        started = time.perf_counter()
        export_models(zoo, fmt, work, roles=("segmenter", "inpaint"), device="cuda", precision="float32")
        out[f"{fmt}_export_seconds"] = time.perf_counter() - started
    for role in ("segmenter", "inpaint"):
        rows, reference = {}, None
        for runtime in ["eager", *formats]:
            options = (
                []
                if runtime == "eager"
                else [f"models.{role}.options.runtime={runtime}", f"models.{role}.options.artifacts={work}"]
            )
            if role == "inpaint":
                options.append("models.inpaint.options.steps=4")
            cfg = apply_overrides(EngineConfig(), ["models.device=cuda", *options])
            result, rows[runtime], model = measure(role, cfg, zoo, image, reference)
            reference = reference or result
            runner = getattr(getattr(model, "encoder", None), "runner", None)
            if runner is not None:
                rows[runtime]["io_binding"] = bool(getattr(runner, "io_binding", False))
            del model
            release()
        out[role] = rows
    return out


def check_mining() -> dict[str, Any]:
    from int_engine.kernels import mine_fused
    from int_engine.mining import mine

    sb, sa, hist = make_tick(256, 16, 64, torch.float32, "cuda")
    ref, got = mine(sb, sa, hist), mine_fused(sb, sa, hist)
    return {
        "shape": [256, 16, 64],
        "max_difference": max(float((g - r).abs().max()) for g, r in zip(got[1:], ref[1:])),
        "picks_equal": bool(torch.equal(got[0], ref[0])),
        "torch_ms": median_ms(lambda: mine(sb, sa, hist), 50),
        "triton_ms": median_ms(lambda: mine_fused(sb, sa, hist), 50),
    }


def check_engine(zoo: Path, image: np.ndarray) -> dict[str, Any]:
    from int_engine import IntEngine

    cfg = apply_overrides(
        EngineConfig(iterations=2), ["models.device=cuda", "models.dtype=float16", "models.inpaint.options.steps=10"]
    )
    with IntEngine(cfg, models_dir=zoo) as engine:
        engine.segment(image)  # warm-up
        result, seconds, peak = timed(lambda: engine.segment(image))
    stages: dict[str, float] = {}
    for it in result.trace.iterations:
        for stage, s in it.seconds.items():
            stages[stage] = stages.get(stage, 0.0) + s
    return {"seconds": seconds, "peak_mib": peak, "seconds_by_stage": stages, "soft_max": float(result.soft.max())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, help="a small zoo (`int-engine models tiny --scale small`); built if omitted")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (its first calls compile for minutes)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/gpu_check.py: no CUDA device (torch.cuda.is_available() is False); nothing to check.")
        return 0
    offline()
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "errors": {}}
    with tempfile.TemporaryDirectory() as tmp:
        zoo = args.zoo
        if zoo is None:
            from int_engine.models.zoo import build_tiny_zoo

            zoo = Path(tmp) / "small"
            started = time.perf_counter()
            build_tiny_zoo(zoo, scale="small")
            report["zoo_build_seconds"] = time.perf_counter() - started
        image = make_scene(0, 256, 320)[0]
        checks: dict[str, Callable[[], Any]] = {
            "dtypes": lambda: check_dtypes(zoo, image),
            "runtimes": lambda: check_runtimes(zoo, image, Path(tmp) / "exported", not args.no_compile),
            "mining": check_mining,
            "engine": lambda: check_engine(zoo, image),
        }
        for name, check in checks.items():
            started = time.perf_counter()
            try:
                report[name] = check()
            except Exception as err:  # recorded and reported: the other checks still run
                report["errors"][name] = "".join(traceback.format_exception(err, limit=4))
                print(f"{name}: FAILED: {type(err).__name__}: {err}")
            report.setdefault("check_seconds", {})[name] = time.perf_counter() - started
            release()
    print(json.dumps({k: v for k, v in report.items() if k != "errors"}, indent=1, default=float))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
