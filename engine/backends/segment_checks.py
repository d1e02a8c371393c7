"""The request checks the SAM backends share (``segment_sam``, ``segment_sam2``, ``segment_sam3``):
a uint8 RGB image, boxes [N, 4], points [P, 2] with one label each. Each raises ``ValueError``
with the backend's role in front."""

from __future__ import annotations

import numpy as np

from ..protocols import SegmentRequest


def check_rgb_image(role: str, image: object) -> None:
    """``image`` is a uint8 [H, W, 3] numpy array."""
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        got = getattr(image, "shape", type(image).__name__), getattr(image, "dtype", None)
        raise ValueError(f"{role}: expected a uint8 [H, W, 3] RGB image, got {got}")


def check_segment_request(role: str, req: SegmentRequest, *, point_shapes: bool = True) -> None:
    """``req``'s image (``check_rgb_image``), its boxes [N, 4], its points [P, 2] (unless
    ``point_shapes`` is False: ``segment_sam`` leaves them to its prompt flattening) and one
    label per point."""
    check_rgb_image(role, req.image)
    boxes = np.asarray(req.boxes)
    if len(boxes) and (boxes.ndim != 2 or boxes.shape[1] != 4):
        raise ValueError(f"{role}: boxes must be [N, 4], got {boxes.shape}")
    if point_shapes:
        points = np.asarray(req.points)
        if len(points) and (points.ndim != 2 or points.shape[1] != 2):
            raise ValueError(f"{role}: points must be [P, 2], got {points.shape}")
    if len(req.points) != len(req.labels):
        raise ValueError(f"{role}: {len(req.points)} points but {len(req.labels)} labels")
