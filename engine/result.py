"""What INT returns for one image: ``Result``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from . import outputs
from .trace import ImageTrace, IterationTrace


@dataclass
class Result:
    """The output for one image, at its original size: ``binary`` bool [H, W], the segmentation
    M_{i*}^bin that eq 13 chose, and ``soft`` float32 [H, W] in [0, 1], that iteration's soft map
    M_{i*}; per iteration, at working size, the soft maps (``iteration_masks``, float32) and the
    segmentations (``iteration_segmentations``, bool); and the trace."""

    soft: np.ndarray
    binary: np.ndarray
    iteration_masks: list[np.ndarray]
    trace: ImageTrace
    iteration_segmentations: list[np.ndarray] = field(default_factory=list)

    def save(
        self,
        folder: str | Path,
        what: Iterable[str] | str = ("soft", "binary", "overlay"),
        image: np.ndarray | None = None,
        already: Iterable[str] = (),
    ) -> list[Path]:
        """Write the files ``int-engine segment`` writes per image into ``folder``: ``what`` from
        soft, binary, overlay, rle, iterations, and ``trace.json``; ``image`` uint8 [H, W, 3] (the
        original pixels) for the overlay, else ``trace.source`` is read; ``already``: outputs written
        as the run went (``IterationUpdate.save``), not rewritten. Returns the paths written."""
        return outputs.save_result(self, folder, what, image, already)

    def to_rle(self) -> dict:
        """COCO RLE of ``binary``: ``{"size": [H, W], "counts": str}`` (pycocotools' encoding)."""
        return outputs.to_rle(self.binary)

    def overlay(self, image: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3]: ``image`` (uint8 [H, W, 3], original size) with the mask, the kept
        iteration's boxes and its picked name drawn on it."""
        return outputs.result_overlay(self, image)


@dataclass
class IterationUpdate:
    """One iteration of one image as it lands (``IntEngine.submit(on_iteration=...)``,
    ``IntEngine.iterations``): ``soft`` float32 [H, W] in [0, 1], the iteration's soft map M_i,
    and ``binary`` bool [H, W], its segmentation M_i^bin, both at the image's original size;
    ``trace`` the image's trace so far (this iteration is ``trace.iterations[iteration]``)."""

    iteration: int
    soft: np.ndarray
    binary: np.ndarray
    trace: ImageTrace

    @property
    def step(self) -> IterationTrace:
        """This iteration's own trace: its pick, candidates, boxes, weights, seconds."""
        return self.trace.iterations[self.iteration]

    @property
    def pick(self) -> str:
        """A_i^u, the name this iteration segmented."""
        return self.step.pick

    def boxes(self) -> np.ndarray:
        """float32 [N, 4] (x0, y0, x1, y1): this iteration's detections in original pixels."""
        return outputs.trace_boxes(self.trace, self.binary.shape, self.iteration)[0]

    def to_rle(self) -> dict:
        """COCO RLE of ``binary``: ``{"size": [H, W], "counts": str}``."""
        return outputs.to_rle(self.binary)

    def save(self, folder: str | Path) -> None:
        """Write this iteration's ``iterations/<k>.png`` and ``<k>_binary.png`` into ``folder``
        (the first iteration empties ``iterations/``), as ``Result.save(what="iterations")`` does."""
        if self.iteration == 0:
            outputs.clear_iterations(folder)
        outputs.save_iteration(folder, self.iteration, self.soft, self.binary)
