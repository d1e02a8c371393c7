"""What every inpainting backend does to its jobs before filling: check them, binarise the masks."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np


def check_jobs(
    role: str,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    prompts: Sequence[str],
    negative_prompts: Sequence[str],
    seeds: Sequence[int],
) -> None:
    """One entry per job in every list; each image uint8 [H, W, 3] with an [H, W] mask."""
    n = len(images)
    if not (len(masks) == len(prompts) == len(negative_prompts) == len(seeds) == n):
        raise ValueError(
            f"{role}: images, masks, prompts, negative_prompts, seeds must have one entry per job, got lengths "
            f"{n}, {len(masks)}, {len(prompts)}, {len(negative_prompts)}, {len(seeds)}"
        )
    for j, (im, mk) in enumerate(zip(images, masks)):
        if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8 or mk.shape != im.shape[:2]:
            raise ValueError(
                f"{role}: job {j}: need a uint8 [H, W, 3] image and an [H, W] mask, got {im.shape} {im.dtype} and {mk.shape}"
            )


def binary_mask(mask: np.ndarray, dilate: int) -> np.ndarray:
    """float [H, W] -> bool [H, W]: > 0.5, then grown by ``dilate`` pixels."""
    m = mask > 0.5
    if dilate and m.any():
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1, 2 * dilate + 1))
        m = cv2.dilate(m.astype(np.uint8), k) > 0
    return m
