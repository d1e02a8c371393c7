"""Throughput: the engine (scheduler, batched calls) against a faithful sequential reference.

The reference runs the same algorithm with the same settings (the same step generator and
config, ``inpaint_scope`` included) the way the authors' ProMaC-style code does: one VLM
generate per view per prompt, one inpainting per request (per view, or with
``--inpaint-scope image`` one whole-image job per image-iteration, as the released code), one
scoring pass per (view, image, candidate), one SAM call per view — nothing batched, nothing
in flight together. Both run on the same models and images in one process, and must give the
same masks. Prints images/s of each, the ratio, model calls and model work
(``int_engine.work``: UNet evaluations x latent pixels, VLM prefill tokens, SAM encoder images,
CLIP images, ...) per image-iteration, and peak RSS. A third side runs the engine with the other
``inpaint_scope`` to give the cost of ``view`` scope against ``image`` scope (speed and work).

    python -m int_engine.bench.throughput --images 8 --in-flight 8 [--inpaint-scope image|view]
        [--zoo tiny|small] [--json F]
    python -m int_engine.bench.throughput --ray --images 16    # Ray Data actor pool, 1 and 2 workers
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from ..calls import ModelCall, run_each
from ..config import EngineConfig, apply_overrides
from ..io import mask_to_uint8
from ..loop import EngineLoop
from ..models.load import load_models
from ..pipeline import drive, image_steps
from ..work import per_unit, work_delta, work_of
from .synthetic import make_scene


def _calls_per_image_iteration(counts: dict[str, int], n_images: int, iterations: int) -> dict[str, float]:
    return {k: v / (n_images * iterations) for k, v in sorted(counts.items())}


def image_iterations(results: list) -> int:
    """Iterations run over all images (each image's trace)."""
    return sum(len(r.trace.iterations) for r in results)


def run_reference(models, cfg: EngineConfig, images: list[np.ndarray]) -> tuple[list, dict[str, int], float, dict[str, float]]:
    """Each image alone, each request its own model call. Returns the results, the model
    calls by role.method, the seconds, and the models' work (``int_engine.work``) it added."""
    counts: dict[str, int] = {}

    def one_by_one(models, call: ModelCall):
        name = f"{call.role}.{call.method}"
        counts[name] = counts.get(name, 0) + call.size
        return run_each(models, call)

    before = work_of(models)
    t0 = time.perf_counter()
    results = [drive(image_steps(im, cfg), models, one_by_one) for im in images]
    elapsed = time.perf_counter() - t0
    return results, counts, elapsed, work_delta(before, work_of(models))


def run_engine(models, cfg: EngineConfig, images: list[np.ndarray]) -> tuple[list, dict[str, int], float, dict[str, float]]:
    """All images through the scheduler (returns as ``run_reference``)."""
    loop = EngineLoop(models, cfg)
    before = work_of(models)
    t0 = time.perf_counter()
    out = dict(loop.run((i, (lambda im=im: image_steps(im, cfg))) for i, im in enumerate(images)))
    elapsed = time.perf_counter() - t0
    for i, r in out.items():
        if isinstance(r, Exception):
            raise r
    counts = dict(loop.stats.calls)
    return [out[i] for i in range(len(images))], counts, elapsed, work_delta(before, work_of(models))


def _work_line(name: str, work: dict[str, dict[str, float]], sides: list[str]) -> str:
    return f"  {name:32s}" + "".join(f" {work[side].get(name, 0.0):>14.6g}" for side in sides)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--in-flight", type=int, default=8)
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"))
    p.add_argument("--zoo", default="tiny", help="tiny (built on first use) or a models directory")
    p.add_argument("--repeats", type=int, default=1, help="timed repeats of each side; medians are reported")
    p.add_argument(
        "--inpaint-scope",
        choices=("image", "view"),
        default=EngineConfig().inpaint_scope,
        help="eq 4's inpainting per view or per image (both sides); the other scope is run "
        "on the engine too, for the cost of view scope (default: EngineConfig's)",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", help="write the figures here")
    p.add_argument(
        "--early-stop",
        action="store_true",
        help="instead: images/s and work per image of the engine with early stop off and on, same images",
    )
    p.add_argument(
        "--ray",
        action="store_true",
        help="instead: images/s of a Ray Data actor pool (bench --ray) with 1 and 2 workers, same images",
    )
    args = p.parse_args(argv)

    from ..models.cache import ensure_tiny_zoo

    zoo = ensure_tiny_zoo() if args.zoo == "tiny" else Path(args.zoo)
    cfg = apply_overrides(
        EngineConfig(
            iterations=args.iterations, max_in_flight=args.in_flight, max_new_tokens=16, inpaint_scope=args.inpaint_scope
        ),
        ["models.inpaint.options.steps=4", *args.set],
    )
    if args.ray:  # before loading any model here: the actors load their own (bench/ray_bench.py)
        from .ray_bench import ray_throughput

        return ray_throughput(cfg, zoo, args.images, tuple(args.size), json_path=args.json)
    scope, other = cfg.inpaint_scope, "view" if cfg.inpaint_scope == "image" else "image"
    other_cfg = dataclasses.replace(cfg, inpaint_scope=other)
    models = load_models(cfg.models, zoo)
    images = [make_scene(s, *args.size)[0] for s in range(args.images)]
    if args.early_stop:
        from .early_stop import throughput_with_and_without

        return throughput_with_and_without(models, cfg, images, args.repeats, args.json)
    run_engine(models, cfg, images[:1])  # warm-up: first-call costs are not throughput
    run_engine(models, other_cfg, images[:1])

    # each repeat runs the three sides back to back: reference, engine, engine in the other scope
    ref_t, eng_t, oth_t = [], [], []
    for _ in range(args.repeats):
        ref, ref_calls, t, ref_work = run_reference(models, cfg, images)
        ref_t.append(t)
        eng, eng_calls, t, eng_work = run_engine(models, cfg, images)
        eng_t.append(t)
        oth, _, t, oth_work = run_engine(models, other_cfg, images)
        oth_t.append(t)
    # soft masks are continuous, so batched rounding (~1e-6) can move a pixel across an 8-bit
    # level or the binary threshold; the figures say how far the two sides are apart
    max_diff = max(float(np.abs(a.soft - b.soft).max()) for a, b in zip(ref, eng))
    max_levels = max(int(np.abs(mask_to_uint8(a.soft).astype(int) - mask_to_uint8(b.soft)).max()) for a, b in zip(ref, eng))
    binary_same = all(np.array_equal(a.binary, b.binary) for a, b in zip(ref, eng))
    ref_ips, eng_ips = args.images / statistics.median(ref_t), args.images / statistics.median(eng_t)
    oth_ips = args.images / statistics.median(oth_t)
    # Each repeat runs the sides back to back: their ratio is immune to the machine's speed
    # drifting between repeats, which the ratio of the two medians is not.
    paired = statistics.median(r / e for r, e in zip(ref_t, eng_t))
    view_t, image_t = (eng_t, oth_t) if scope == "view" else (oth_t, eng_t)
    view_slower = statistics.median(v / i for v, i in zip(view_t, image_t))
    n_ref, n_eng, n_oth = image_iterations(ref), image_iterations(eng), image_iterations(oth)
    work = {
        "engine": per_unit(eng_work, n_eng),
        "reference": per_unit(ref_work, n_ref),
        f"{other}_scope": per_unit(oth_work, n_oth),
    }
    jobs = {
        "engine": sum(it.inpaint_jobs for r in eng for it in r.trace.iterations) / n_eng,
        "reference": sum(it.inpaint_jobs for r in ref for it in r.trace.iterations) / n_ref,
        f"{other}_scope": sum(it.inpaint_jobs for r in oth for it in r.trace.iterations) / n_oth,
    }
    unet = "inpaint.unet_latent_pixels"
    view_work, image_work = (work["engine"], work["image_scope"]) if scope == "view" else (work["view_scope"], work["engine"])
    work_ratio = view_work.get(unet, 0.0) / image_work[unet] if image_work.get(unet) else None
    figures = {
        "zoo": str(zoo),
        "images": args.images,
        "in_flight": args.in_flight,
        "iterations": args.iterations,
        "image_size": list(args.size),
        "repeats": args.repeats,
        "inpaint_scope": scope,
        "engine_images_per_s": eng_ips,
        "reference_images_per_s": ref_ips,
        "ratio": eng_ips / ref_ips,
        "ratio_paired_median": paired,
        "engine_seconds": eng_t,
        "reference_seconds": ref_t,
        "max_8bit_level_difference": max_levels,
        "binary_identical": binary_same,
        "max_soft_mask_difference": max_diff,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "calls_per_image_iteration": {
            "engine": _calls_per_image_iteration(eng_calls, args.images, args.iterations),
            "reference": _calls_per_image_iteration(ref_calls, args.images, args.iterations),
        },
        # int_engine.work counters over the image-iterations each side ran
        "work_per_image_iteration": work,
        "inpaint_jobs_per_image_iteration": jobs,
        # the engine run again with the other inpaint_scope: what view scope costs over image scope
        "scope_comparison": {
            "inpaint_scope": other,
            "images_per_s": oth_ips,
            "seconds": oth_t,
            "view_images_per_s": eng_ips if scope == "view" else oth_ips,
            "image_images_per_s": oth_ips if scope == "view" else eng_ips,
            "view_slower_paired_median": view_slower,  # view seconds / image seconds, per repeat
            "view_unet_work_ratio": work_ratio,  # view / image UNet evaluations x latent pixels
        },
    }
    print(
        f"zoo {zoo}: {args.images} images {args.size[0]}x{args.size[1]}, {args.iterations} iterations, "
        f"{args.in_flight} in flight, inpaint_scope {scope}"
    )
    print(
        f"reference {ref_ips:8.3f} images/s   engine {eng_ips:8.3f} images/s   ratio {eng_ips / ref_ips:.2f}x (medians of {args.repeats})"
    )
    print(
        f"ratio per repeat (sides back to back): median {paired:.2f}x of {', '.join(f'{r / e:.2f}' for r, e in zip(ref_t, eng_t))}"
    )
    sc = figures["scope_comparison"]
    print(
        f"view scope: {sc['view_images_per_s']:.3f} images/s ({view_slower:.2f} x slower than image scope, "
        f"{sc['image_images_per_s']:.3f} images/s; engine, per-repeat median), inpainting work "
        + (f"{work_ratio:.2f} x" if work_ratio is not None else "n/a (no UNet work counted)")
    )
    print(
        f"binary masks identical: {binary_same}; 8-bit masks within {max_levels} level(s); max soft-mask difference "
        f"{max_diff:.2e}; peak RSS {figures['peak_rss_mb']:.0f} MB"
    )
    print(f"{'model calls per image-iteration':34s} {'engine':>8s} {'reference':>10s}")
    c = figures["calls_per_image_iteration"]
    for name in sorted(set(c["engine"]) | set(c["reference"])):
        print(f"  {name:32s} {c['engine'].get(name, 0):8.3f} {c['reference'].get(name, 0):10.1f}")
    sides = ["engine", "reference", f"{other}_scope"]
    print(f"{'model work per image-iteration':34s}" + "".join(f" {side:>14s}" for side in sides))
    for name in sorted(set().union(*work.values())):
        print(_work_line(name, work, sides))
    print(f"  {'inpaint jobs (trace)':32s}" + "".join(f" {jobs[side]:>14.6g}" for side in sides))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0 if max_diff < 1e-4 else 1  # the engine and the reference compute the same masks


if __name__ == "__main__":
    sys.exit(main())
