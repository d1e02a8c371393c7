"""``int-engine profile``: where one image's time goes, per iteration and stage.

Runs the eager pipeline under ``torch.profiler`` (CPU, and CUDA when the models are on a
GPU; every model call is a ``record_function`` range and, on GPU, an NVTX range), then
writes a Chrome trace, a stacked-bar PNG and prints the iteration x stage table.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import pipeline
from .errors import ConfigError
from .trace import STAGES, ImageTrace

COLOURS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
]


def stage_table(trace: ImageTrace) -> tuple[list[str], list[list[float]]]:
    """Stages that took time, and seconds [iteration][stage] (CUDA-synchronised on GPU)."""
    used = [s for s in STAGES if any(it.seconds.get(s, 0.0) > 0 for it in trace.iterations)]
    return used, [[it.seconds.get(s, 0.0) for s in used] for it in trace.iterations]


def format_table(stages: list[str], rows: list[list[float]]) -> str:
    head = f"{'iteration':>9s} " + " ".join(f"{s:>9s}" for s in stages) + f" {'total':>9s}"
    lines = [head, "-" * len(head)]
    for i, row in enumerate(rows):
        lines.append(f"{i + 1:>9d} " + " ".join(f"{v:9.3f}" for v in row) + f" {sum(row):9.3f}")
    cols = np.array(rows).sum(axis=0) if rows else np.zeros(len(stages))
    lines.append(f"{'all':>9s} " + " ".join(f"{v:9.3f}" for v in cols) + f" {cols.sum():9.3f}")
    return "\n".join(lines)


def stacked_bars(stages: list[str], rows: list[list[float]], path: str | Path, title: str = "") -> None:
    """A PNG of one bar per iteration, stacked by stage, with a legend (seconds)."""
    w, h, left, bottom, top = 640, 400, 60, 40, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    peak = max((sum(r) for r in rows), default=1.0) or 1.0
    plot_h = h - bottom - top
    bar_w = max(8, (w - left - 170) // max(1, len(rows)) - 10)
    d.text((left, 10), title or "seconds per iteration by stage", fill="black")
    d.line([(left, top), (left, h - bottom), (w - 160, h - bottom)], fill="black")
    for frac in (0.0, 0.5, 1.0):
        y = h - bottom - frac * plot_h
        d.text((4, y - 6), f"{peak * frac:.2f}s", fill="black")
    for i, row in enumerate(rows):
        x0 = left + 10 + i * (bar_w + 10)
        y = h - bottom
        for k, v in enumerate(row):
            dy = v / peak * plot_h
            d.rectangle([x0, y - dy, x0 + bar_w, y], fill=COLOURS[k % len(COLOURS)])
            y -= dy
        d.text((x0, h - bottom + 6), str(i + 1), fill="black")
    for k, s in enumerate(stages):
        y = top + 18 * k
        d.rectangle([w - 150, y, w - 138, y + 12], fill=COLOURS[k % len(COLOURS)])
        d.text((w - 132, y), s, fill="black")
    img.save(path)


def profile(engine, image_path: str | Path, out: str | Path) -> tuple[str, ImageTrace]:
    """Profile one image; writes ``out/trace.json`` (Chrome trace), ``out/stages.png``,
    ``out/stages.json``; returns the printed table and the image's trace."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if engine.config.models.sync_device == "cuda" and torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    image = engine.read(image_path)
    # the eager pipeline on this thread: the profiler records the thread it is started on, and
    # engine.segment would run the image on the engine core's thread
    with torch.profiler.profile(activities=activities, record_shapes=False) as prof:
        result = pipeline.segment_image(image, engine.models, engine.config)
    prof.export_chrome_trace(str(out / "trace.json"))
    stages, rows = stage_table(result.trace)
    stacked_bars(stages, rows, out / "stages.png", f"{Path(image_path).name}: seconds per iteration by stage")
    (out / "stages.json").write_text(json.dumps({"stages": stages, "seconds": rows}, indent=2) + "\n", encoding="utf-8")
    return format_table(stages, rows), result.trace
