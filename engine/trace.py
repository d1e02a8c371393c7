"""What happened to one image, per iteration and stage, with wall-clock timings."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import torch

STAGES = ("patches", "propose", "inpaint", "score", "mine", "detect", "segment", "weight", "fuse")


@dataclass
class IterationTrace:
    """One iteration of INT for one image; every field is JSON-serialisable."""

    iteration: int
    views: list[dict[str, Any]] = field(default_factory=list)
    answers_reused: bool = False  # step 2's answers are iteration 1's: the same greedy requests on the original views
    candidates: list[str] = field(default_factory=list)
    view_picks: list[str | None] = field(default_factory=list)
    view_gains: list[float] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    weights_before: dict[str, float] = field(default_factory=dict)
    pick: str = ""
    pick_source: str = ""
    inpaint_jobs: int = 0  # eq 4's inpainting jobs (1 per image-iteration with inpaint_scope "image")
    boxes: list[list[float]] = field(default_factory=list)
    box_scores: list[float] = field(default_factory=list)
    clip_backgrounds: list[str] = field(default_factory=list)  # the names whose map eq 9's Spatial CLIP subtracts
    mask_similarity: list[float | None] = field(default_factory=list)
    mask_weights: list[float] = field(default_factory=list)
    selected_views: list[str] = field(default_factory=list)  # the views whose masks make M_i^bin (SPEC step 9)
    mask_area: float = 0.0  # mean of the soft map M_i
    soft_max: float = 0.0  # max of M_i: 0 means nothing was segmented in this iteration
    binary_area: float = 0.0  # share of pixels in the segmentation M_i^bin
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class ImageTrace:
    """The whole run for one image."""

    source: str
    original_size: tuple[int, int]
    working_size: tuple[int, int]
    conversions: list[str]
    task: str
    iterations: list[IterationTrace] = field(default_factory=list)
    final_iteration: int = -1
    stopped_early: bool = False
    seconds_total: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def call_range(call) -> Iterator[None]:
    """A named range around a model call: ``record_function`` for torch.profiler traces, and an
    NVTX range on GPU for Nsight (``stage:role.method[n requests]``)."""
    name = f"{call.stage}:{call.role}.{call.method}[{call.size}]"
    nvtx = torch.cuda.is_available()
    if nvtx:
        torch.cuda.nvtx.range_push(name)
    try:
        with torch.profiler.record_function(name):
            yield
    finally:
        if nvtx:
            torch.cuda.nvtx.range_pop()


def cuda_sync(device: str) -> None:
    """Wait for queued GPU work, so that a timer charges it to the stage that launched it."""
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()
