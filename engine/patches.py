"""Step 1 (HCG, hallucination-driven candidate generation): the image's views.

The paper cuts the image "horizontally, vertically, both, or leaving it uncut" (§3.1):
the whole image, 2 horizontal halves (top, bottom), 2 vertical halves (left, right) and
4 quarters, K = 9 views. Every box or mask produced on a view is mapped back to image
coordinates with the functions below.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .io import centred_region


@dataclass(frozen=True)
class View:
    """A rectangle of the image: pixels ``[y0:y1, x0:x1]`` (x1, y1 exclusive)."""

    name: str
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)


def views(height: int, width: int, splits: tuple[str, ...]) -> list[View]:
    """The views of an ``height`` x ``width`` image for the given splits, in a fixed order:
    whole, top, bottom, left, right, then quarters row by row (SPEC step 1)."""
    if height < 2 or width < 2:
        raise ValueError(f"an image needs at least 2x2 pixels to be split, got {width}x{height}")
    ym, xm = height // 2, width // 2
    out: list[View] = []
    if "whole" in splits:
        out.append(View("whole", 0, 0, width, height))
    if "halves_h" in splits:
        out += [View("top", 0, 0, width, ym), View("bottom", 0, ym, width, height)]
    if "halves_v" in splits:
        out += [View("left", 0, 0, xm, height), View("right", xm, 0, width, height)]
    if "quarters" in splits:
        out += [
            View("top_left", 0, 0, xm, ym),
            View("top_right", xm, 0, width, ym),
            View("bottom_left", 0, ym, xm, height),
            View("bottom_right", xm, ym, width, height),
        ]
    return out


def crop(image: np.ndarray, view: View) -> np.ndarray:
    """The view's pixels of ``image`` ([H, W, ...]) as ``[view.height, view.width, ...]``."""
    return image[view.y0 : view.y1, view.x0 : view.x1]


def uint8_crops(image: np.ndarray, views: list[View]) -> list[np.ndarray]:
    """Every view's pixels of a float [H, W, 3] image as uint8 [h_k, w_k, 3] (rounded, clipped)."""
    return [np.ascontiguousarray(np.clip(np.round(crop(image, v)), 0, 255).astype(np.uint8)) for v in views]


def square_frame(height: int, width: int) -> tuple[int, int, int]:
    """(side, top, left): an ``height`` x ``width`` image padded to a ``side`` x ``side`` square,
    side = max(height, width), sits at rows ``top:top + height`` and columns ``left:left + width``.

    Centred as LLaVA's ``expand2square`` pastes it: a wide image at (0, (W - H) // 2), a tall one
    at ((H - W) // 2, 0). The VLM backends pad with it (``backends.llava_image.pad_to_square``)
    and ``normalised_box_to_view`` maps boxes back with it: one rule for both directions.
    """
    side = max(height, width)
    top, left, _, _ = centred_region(height, width, (side, side))  # the backends' rule too
    return side, top, left


def normalised_box_to_view(box: tuple[float, float, float, float], view: View) -> np.ndarray:
    """The VLM's P_B box (x0, y0, x1, y1) -> float32 [4] view pixels (x0, y0, x1, y1), clipped to
    ``[0, view.width] x [0, view.height]``; a box that lies only in the padding has no area.

    The box is normalised to the view *padded to a square* (S = max(w, h), centred; see
    ``square_frame``), not to the view itself: LLaVA-1.5 was trained on images padded that way
    (its ``expand2square``, ``image_aspect_ratio: pad``), so its normalised answers are relative
    to the padded square, and the VLM backends show it every view padded so. Hence
    x_view = x * S - left, y_view = y * S - top. Every normalised VLM box goes through here.
    """
    side, top, left = square_frame(view.height, view.width)
    x0, y0, x1, y1 = (float(c) * side for c in box)
    xs = np.clip([x0 - left, x1 - left], 0, view.width)
    ys = np.clip([y0 - top, y1 - top], 0, view.height)
    return np.array([xs[0], ys[0], xs[1], ys[1]], np.float32)


def view_boxes_to_image(boxes: np.ndarray, view: View) -> np.ndarray:
    """float [N, 4] boxes in view pixels -> the same boxes in image pixels."""
    offset = np.array([view.x0, view.y0, view.x0, view.y0], np.float32)
    return np.asarray(boxes, np.float32).reshape(-1, 4) + offset


def image_boxes_to_view(boxes: np.ndarray, view: View, min_overlap: float) -> np.ndarray:
    """The image-pixel boxes [N, 4] that lie in ``view`` for at least ``min_overlap`` of their
    area, clipped to the view and shifted into view pixels: float32 [M, 4], M <= N."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    if len(b) == 0:
        return b
    cx0 = np.clip(b[:, 0], view.x0, view.x1)
    cy0 = np.clip(b[:, 1], view.y0, view.y1)
    cx1 = np.clip(b[:, 2], view.x0, view.x1)
    cy1 = np.clip(b[:, 3], view.y0, view.y1)
    inside = np.clip(cx1 - cx0, 0, None) * np.clip(cy1 - cy0, 0, None)
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    keep = (area > 0) & (inside >= min_overlap * area) & (inside > 0)
    clipped = np.stack([cx0, cy0, cx1, cy1], axis=1)[keep]
    return clipped - np.array([view.x0, view.y0, view.x0, view.y0], np.float32)


def paste(mask: torch.Tensor, view: View, height: int, width: int) -> torch.Tensor:
    """A view's mask [view.height, view.width] placed into a zero [height, width] image mask."""
    out = mask.new_zeros((height, width))
    out[view.y0 : view.y1, view.x0 : view.x1] = mask
    return out
