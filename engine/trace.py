"""What happened to one image, per iteration and stage, with wall-clock timings."""

from __future__ import annotations

import time
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
    candidates: list[str] = field(default_factory=list)
    view_picks: list[str | None] = field(default_factory=list)
    view_gains: list[float] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    weights_before: dict[str, float] = field(default_factory=dict)
    pick: str = ""
    pick_source: str = ""
    boxes: list[list[float]] = field(default_factory=list)
    box_scores: list[float] = field(default_factory=list)
    mask_similarity: list[float | None] = field(default_factory=list)
    mask_weights: list[float] = field(default_factory=list)
    mask_area: float = 0.0
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


class StageTimer:
    """Times stages with ``perf_counter``, synchronising CUDA first so GPU work is counted
    in the stage that launched it rather than the next one."""

    def __init__(self, device: str = "cpu") -> None:
        self.sync = device.startswith("cuda") and torch.cuda.is_available()

    @contextmanager
    def stage(self, record: dict[str, float], name: str) -> Iterator[None]:
        if self.sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            record[name] = record.get(name, 0.0) + time.perf_counter() - start
