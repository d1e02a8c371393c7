"""Throughput: the engine (scheduler, batched calls) against a faithful sequential reference.

The reference runs the same algorithm (the same step generator) the way the authors'
ProMaC-style code does: one VLM generate per view per prompt, one inpainting per view, one
scoring pass per (view, image, candidate), one SAM call per view — nothing batched, nothing
in flight together. Both run on the same models and images in one process, and must give the
same masks. Prints images/s of each, the ratio, model calls per image-iteration per role,
and peak RSS.

    python -m int_engine.bench.throughput --images 8 --in-flight 8 [--zoo tiny|small] [--json F]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from ..calls import ModelCall, run_each, run_model
from ..config import EngineConfig, apply_overrides
from ..io import mask_to_uint8
from ..models.load import load_models
from ..pipeline import drive, image_steps
from ..scheduler import Scheduler
from .synthetic import make_scene


def _calls_per_image_iteration(counts: dict[str, int], n_images: int, iterations: int) -> dict[str, float]:
    return {k: v / (n_images * iterations) for k, v in sorted(counts.items())}


def run_reference(models, cfg: EngineConfig, images: list[np.ndarray]) -> tuple[list, dict[str, int], float]:
    """Each image alone, each request its own model call."""
    counts: dict[str, int] = {}

    def one_by_one(models, call: ModelCall):
        name = f"{call.role}.{call.method}"
        counts[name] = counts.get(name, 0) + (1 if call.role == "mine" else call.size)
        return run_model(models, call) if call.role == "mine" else run_each(models, call)

    t0 = time.perf_counter()
    results = [drive(image_steps(im, cfg), models, one_by_one) for im in images]
    return results, counts, time.perf_counter() - t0


def run_engine(models, cfg: EngineConfig, images: list[np.ndarray]) -> tuple[list, dict[str, int], float]:
    """All images through the scheduler."""
    scheduler = Scheduler(models, cfg)
    t0 = time.perf_counter()
    out = dict(scheduler.run((i, (lambda im=im: image_steps(im, cfg))) for i, im in enumerate(images)))
    elapsed = time.perf_counter() - t0
    for i, r in out.items():
        if isinstance(r, Exception):
            raise r
    counts = dict(scheduler.stats.calls)
    return [out[i] for i in range(len(images))], counts, elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--in-flight", type=int, default=8)
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"))
    p.add_argument("--zoo", default="tiny", help="tiny (built on first use) or a models directory")
    p.add_argument("--repeats", type=int, default=1, help="timed repeats of each side; medians are reported")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)

    from ..models.cache import ensure_tiny_zoo

    zoo = ensure_tiny_zoo() if args.zoo == "tiny" else Path(args.zoo)
    cfg = apply_overrides(EngineConfig(iterations=args.iterations, max_in_flight=args.in_flight, max_new_tokens=16),
                          ["models.inpaint.options.steps=4", *args.set])
    models = load_models(cfg.models, zoo)
    images = [make_scene(s, *args.size)[0] for s in range(args.images)]
    run_engine(models, cfg, images[:1])  # warm-up: first-call costs are not throughput

    ref_t, eng_t = [], []
    for _ in range(args.repeats):
        ref, ref_calls, t = run_reference(models, cfg, images)
        ref_t.append(t)
        eng, eng_calls, t = run_engine(models, cfg, images)
        eng_t.append(t)
    # soft masks are continuous, so batched rounding (~1e-6) can move a pixel across an 8-bit
    # level or the binary threshold; the figures say how far the two sides are apart
    max_diff = max(float(np.abs(a.soft - b.soft).max()) for a, b in zip(ref, eng))
    max_levels = max(int(np.abs(mask_to_uint8(a.soft).astype(int) - mask_to_uint8(b.soft)).max()) for a, b in zip(ref, eng))
    binary_same = all(np.array_equal(a.binary, b.binary) for a, b in zip(ref, eng))
    ref_ips, eng_ips = args.images / statistics.median(ref_t), args.images / statistics.median(eng_t)
    # Each repeat runs the two sides back to back: their ratio is immune to the machine's speed
    # drifting between repeats, which the ratio of the two medians is not.
    paired = statistics.median(r / e for r, e in zip(ref_t, eng_t))
    figures = {
        "zoo": str(zoo), "images": args.images, "in_flight": args.in_flight, "iterations": args.iterations,
        "image_size": list(args.size), "repeats": args.repeats,
        "engine_images_per_s": eng_ips, "reference_images_per_s": ref_ips, "ratio": eng_ips / ref_ips,
        "ratio_paired_median": paired,
        "engine_seconds": eng_t, "reference_seconds": ref_t,
        "max_8bit_level_difference": max_levels, "binary_identical": binary_same, "max_soft_mask_difference": max_diff,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "calls_per_image_iteration": {
            "engine": _calls_per_image_iteration(eng_calls, args.images, args.iterations),
            "reference": _calls_per_image_iteration(ref_calls, args.images, args.iterations),
        },
    }
    print(f"zoo {zoo}: {args.images} images {args.size[0]}x{args.size[1]}, {args.iterations} iterations, {args.in_flight} in flight")
    print(f"reference {ref_ips:8.3f} images/s   engine {eng_ips:8.3f} images/s   ratio {eng_ips / ref_ips:.2f}x (medians of {args.repeats})")
    print(f"ratio per repeat (sides back to back): median {paired:.2f}x of {', '.join(f'{r / e:.2f}' for r, e in zip(ref_t, eng_t))}")
    print(f"binary masks identical: {binary_same}; 8-bit masks within {max_levels} level(s); max soft-mask difference "
          f"{max_diff:.2e}; peak RSS {figures['peak_rss_mb']:.0f} MB")
    print(f"{'model calls per image-iteration':34s} {'engine':>8s} {'reference':>10s}")
    c = figures["calls_per_image_iteration"]
    for name in sorted(set(c["engine"]) | set(c["reference"])):
        print(f"  {name:32s} {c['engine'].get(name, 0):8.3f} {c['reference'].get(name, 0):10.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0 if max_diff < 1e-4 else 1  # the engine and the reference compute the same masks


if __name__ == "__main__":
    sys.exit(main())
