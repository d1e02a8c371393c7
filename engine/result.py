"""What INT returns for one image: ``Result``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from . import outputs
from .trace import ImageTrace


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
        self, folder: str | Path, what: Iterable[str] | str = ("soft", "binary", "overlay"), image: np.ndarray | None = None
    ) -> list[Path]:
        """Write the files ``int-engine segment`` writes per image into ``folder``: ``what`` from
        soft, binary, overlay, rle, iterations, and ``trace.json``; ``image`` uint8 [H, W, 3] (the
        original pixels) for the overlay, else ``trace.source`` is read. Returns the paths written."""
        return outputs.save_result(self, folder, what, image)

    def to_rle(self) -> dict:
        """COCO RLE of ``binary``: ``{"size": [H, W], "counts": str}`` (pycocotools' encoding)."""
        return outputs.to_rle(self.binary)

    def overlay(self, image: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3]: ``image`` (uint8 [H, W, 3], original size) with the mask, the kept
        iteration's boxes and its picked name drawn on it."""
        return outputs.result_overlay(self, image)
