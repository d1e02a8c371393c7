"""What happened to one image, per iteration and stage, with wall-clock timings."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Generator, Iterator, Sequence

import torch

if TYPE_CHECKING:
    from .calls import ModelCall, Reply

STAGES = ("patches", "propose", "inpaint", "score", "mine", "detect", "segment", "weight", "fuse")


@dataclass
class IterationTrace:
    """One iteration of INT for one image; every field is JSON-serialisable."""

    iteration: int
    views: list[dict[str, Any]] = field(default_factory=list)
    before_scores_reused: int = 0  # step 4's s(c | X_k) taken from an earlier iteration (same view, same answer)
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
    concept_negatives: list[str] = field(default_factory=list)  # the rejected names whose boxes SAM 3 got as negatives
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
    stop_reason: str = ""  # why it stopped before ``iterations`` (SPEC "Early stop"); empty if it ran them all
    seconds_total: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StepRecorder:
    """One iteration's trace and clock: every second of it charged to a SPEC stage.

    The steps' own compute between model calls is charged to the stage of the call it prepares
    (``ask``), or to a named stage (``charge``); a model call's seconds (its share of the batch,
    ``Reply.seconds``) to its own stage. ``trace`` is the ``IterationTrace`` the steps fill in.
    """

    def __init__(self, iteration: int) -> None:
        self.trace = IterationTrace(iteration=iteration)
        self.mark = time.perf_counter()

    def charge(self, stage: str) -> None:
        """The host time since the last mark to ``stage``."""
        now = time.perf_counter()
        seconds = self.trace.seconds
        seconds[stage] = seconds.get(stage, 0.0) + now - self.mark
        self.mark = now

    def ask(self, call: "ModelCall") -> Generator["ModelCall", "Reply", Any]:
        """Yield ``call`` from a step generator and return its result, charging the time since
        the last mark and the call's own seconds to its stage."""
        self.charge(call.stage)
        reply = yield call
        self.trace.seconds[call.stage] += reply.seconds
        self.mark = time.perf_counter()
        return reply.result


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


def cuda_sync(devices: str | Sequence[str]) -> None:
    """Wait for the GPU work queued on each of ``devices`` (one name or several, e.g.
    ``ModelsConfig.cuda_devices``), so that a timer charges it to the stage that launched it:
    ``torch.cuda.synchronize()`` alone waits for the current device only, and a role on another
    GPU would charge its work to the next stage. Non-CUDA names are skipped."""
    names = [devices] if isinstance(devices, str) else list(devices)
    cuda = [d for d in names if d.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        for device in cuda:
            torch.cuda.synchronize(device)
