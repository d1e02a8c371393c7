"""Early stop measured, not assumed: each setting's masks against the fixed-iteration run.

For every (``stop_iou``, ``min_iterations``) setting the same images run twice through the
engine's loop, with ``early_stop`` off (every iteration, as the authors' code) and on, and the
table gives per setting: the IoU of each image's final mask with the fixed run's (median and
worst), the iterations run per image (mean and histogram) and the model work per image (model
requests, and the backends' work counters where they have them).

    python -m int_engine.bench.early_stop                     # scripted world, errors on (default)
    python -m int_engine.bench.early_stop --zoo tiny-zoo      # the synthetic bench set, tiny zoo

The scripted world's scenes are the cases users meet most: one object large or small, central
or off-centre, several instances, a look-alike distractor; the scripted models make their usual
errors (``testing.ModelErrors``). ``tests/scenarios/early_stop_table.py`` runs the same
comparison over every scenario of the test suite.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..api import IntEngine
from ..config import EngineConfig, preset_config
from ..protocols import Models
from ..work import work_delta, work_of

SETTINGS = [(stop_iou, min_iterations) for min_iterations in (1, 2) for stop_iou in (0.9, 0.95, 0.98)]


@dataclass
class Run:
    """One pass over the images: final binary masks, iterations run, requests and work per image."""

    binaries: list[np.ndarray]
    iterations: list[int]
    requests: float
    work: dict[str, float]


def run_all(models: Models, cfg: EngineConfig, images: list[np.ndarray]) -> Run:
    """Every image through an ``IntEngine`` on ``models`` under ``cfg`` (``segment_many``:
    ``max_in_flight`` at once, the engine's own loop)."""
    engine = IntEngine(cfg, models=models)
    before = work_of(models)
    try:
        out = dict(engine.segment_many((str(i), im) for i, im in enumerate(images)))
    finally:
        engine.core.close()  # the models stay open: the next setting runs on them
    failed = {k: r for k, r in out.items() if isinstance(r, Exception)}
    if failed:
        key = min(failed, key=int)
        raise RuntimeError(f"early-stop bench: image {key} failed: {failed[key]}")
    results = [out[str(i)] for i in range(len(images))]
    n = len(images)
    work = {k: v / n for k, v in work_delta(before, work_of(models)).items()}
    requests = sum(engine.last_stats.request_counts.values()) / n
    return Run([r.binary for r in results], [len(r.trace.iterations) for r in results], requests, work)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return float((a & b).sum() / union) if union else 1.0


def compare(models: Models, base: EngineConfig, images: list[np.ndarray], settings=SETTINGS) -> list[dict]:
    """The fixed run, then one row per setting: IoU against it, iterations, requests, work."""
    fixed = run_all(models, replace(base, early_stop=False), images)
    rows = [_row("fixed", fixed, fixed)]
    for stop_iou, min_iterations in settings:
        cfg = replace(base, early_stop=True, stop_iou=stop_iou, min_iterations=min_iterations)
        rows.append(_row(f"stop_iou {stop_iou:g}, min_iterations {min_iterations}", run_all(models, cfg, images), fixed))
    return rows


def _row(name: str, run: Run, fixed: Run) -> dict:
    ious = [iou(a, b) for a, b in zip(run.binaries, fixed.binaries)]
    return {
        "setting": name,
        "iou_median": float(np.median(ious)),
        "iou_worst": float(min(ious)),
        "iterations_mean": float(np.mean(run.iterations)),
        "iterations_histogram": dict(sorted(Counter(run.iterations).items())),
        "fewer_iterations": 1.0 - sum(run.iterations) / sum(fixed.iterations),
        "requests_per_image": run.requests,
        "work_per_image": run.work,
    }


def table(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    lines = [
        "| setting | IoU vs fixed, median | worst | iterations / image | histogram | fewer iterations | model requests / image |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        hist = " ".join(f"{k}:{v}" for k, v in r["iterations_histogram"].items())
        lines.append(
            f"| {r['setting']} | {r['iou_median']:.4f} | {r['iou_worst']:.4f} | {r['iterations_mean']:.2f} | {hist} "
            f"| {100 * r['fewer_iterations']:.0f}% | {r['requests_per_image']:.1f} |"
        )
    return "\n".join(lines)


def scripted_images(
    count: int, seed: int = 0, size: tuple[int, int] = (96, 128)
) -> tuple[Callable[[], Models], list[np.ndarray]]:
    """``count`` scenes of the scripted world (one frog large or small, central or not, two frogs,
    or a frog beside a look-alike snake) and a maker of its scripted models, errors on."""
    from ..testing import ColourWorld, Thing, scripted_models
    from ..testing.scenes import compose, ellipse

    world = ColourWorld(
        [
            Thing("bark", (120, 80, 40), kind="background"),
            Thing("frog", (70, 140, 50)),
            Thing("snake", (150, 40, 150), confusions={"bark": 0.08}),
        ]
    )
    h, w = size
    rng = np.random.default_rng(seed)
    images = []
    for k in range(count):
        kind = k % 4
        r = rng.uniform(0.3, 0.45) if kind == 0 else rng.uniform(0.1, 0.2)
        cx, cy = (w / 2, h / 2) if kind == 0 else (rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h)
        objects = [("frog", ellipse(h, w, cx, cy, r * w, r * h * 0.8, rng.uniform(0, 180)))]
        if kind == 2:
            objects.append(("frog", ellipse(h, w, w - cx, h - cy, r * w * 0.8, r * h * 0.7)))
        if kind == 3:
            objects.append(("snake", ellipse(h, w, w - cx, h - cy, 0.12 * w, 0.08 * h)))
        images.append(compose(world, "bark", objects, h, w, seed=seed * 1000 + k).image)
    return (lambda: scripted_models(world)), images


def zoo_images(zoo: str, count: int, seed: int = 0) -> tuple[Callable[[], Models], list[np.ndarray]]:
    """The synthetic bench set's scenes (``bench.synthetic``) and a loader of the zoo at ``zoo``."""
    from ..models.load import load_models
    from .synthetic import make_scene

    cfg = EngineConfig()
    return (lambda: load_models(cfg.models, zoo)), [make_scene(seed + k, 96, 128)[0] for k in range(count)]


def throughput_with_and_without(
    models: Models, cfg: EngineConfig, images: list[np.ndarray], repeats: int = 1, json_path: str | None = None
) -> int:
    """``bench.throughput --early-stop``: the engine on the same images with early stop off and on,
    the two back to back in each repeat; images/s (medians), iterations and work per image."""
    import statistics
    import time

    sides = {"off": replace(cfg, early_stop=False), "on": replace(cfg, early_stop=True)}
    for side in sides.values():
        run_all(models, side, images[:1])  # warm-up: first-call costs are not throughput
    seconds: dict[str, list[float]] = {k: [] for k in sides}
    runs: dict[str, Run] = {}
    for _ in range(repeats):
        for name, side in sides.items():
            t0 = time.perf_counter()
            runs[name] = run_all(models, side, images)
            seconds[name].append(time.perf_counter() - t0)
    figures = {
        name: {
            "images_per_s": len(images) / statistics.median(seconds[name]),
            "seconds": seconds[name],
            "iterations_per_image": float(np.mean(runs[name].iterations)),
            "requests_per_image": runs[name].requests,
            "work_per_image": runs[name].work,
        }
        for name in sides
    }
    figures["iou_on_vs_off"] = [iou(a, b) for a, b in zip(runs["on"].binaries, runs["off"].binaries)]
    print(
        f"{len(images)} images, {cfg.iterations} iterations, early stop stop_iou {cfg.stop_iou:g}, min_iterations {cfg.min_iterations}"
    )
    for name in sides:
        f = figures[name]
        print(
            f"early stop {name:3s}: {f['images_per_s']:.3f} images/s (median of {repeats}), "
            f"{f['iterations_per_image']:.2f} iterations/image, {f['requests_per_image']:.1f} model requests/image"
        )
    for key in sorted(set(figures["off"]["work_per_image"]) | set(figures["on"]["work_per_image"])):
        off, on = figures["off"]["work_per_image"].get(key, 0.0), figures["on"]["work_per_image"].get(key, 0.0)
        print(f"  {key:32s} off {off:12.6g}  on {on:12.6g}  ({on / off:.2f}x)" if off else f"  {key:32s} off 0  on {on:.6g}")
    print(f"IoU of each image's mask, on vs off: worst {min(figures['iou_on_vs_off']):.4f}")
    if json_path:
        Path(json_path).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", help="a model zoo (e.g. the tiny zoo): the synthetic bench set through it")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--preset", default="cod", help="the fixed run's preset (cod: 4 iterations)")
    parser.add_argument("--iterations", type=int, help="override the preset's iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args(argv)
    make_models, images = zoo_images(args.zoo, args.images, args.seed) if args.zoo else scripted_images(args.images, args.seed)
    base = preset_config(args.preset, EngineConfig(max_in_flight=8))
    if args.iterations:
        base = replace(base, iterations=args.iterations)
    rows = compare(make_models(), base, images)
    where = f"tiny zoo {args.zoo}, synthetic set" if args.zoo else "scripted world, errors on"
    print(f"early stop vs {base.iterations} fixed iterations, {len(images)} images ({where}), preset {args.preset}\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
