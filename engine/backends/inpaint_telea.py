"""Classical inpainting (OpenCV, Telea's fast-marching method) as an ``Inpainter``.

No model and no randomness: prompts, negative prompts and seeds are accepted for the
protocol's sake and ignored. Used by tests and as a fast mode; it fills the masked
region from its border inward, which removes a small object but paints no new content.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self, Sequence

import cv2
import numpy as np

from ..errors import ConfigError

ROLE = "inpaint"


class TeleaInpainter:
    """``cv2.inpaint(..., cv2.INPAINT_TELEA)`` per job. Build with :meth:`load`."""

    def __init__(self, radius: float, dilate: int) -> None:
        self.radius = radius
        self.dilate = dilate

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        *,
        radius: float = 5.0,
        dilate: int = 0,
    ) -> Self:
        """No weights: ``path`` must be None (or empty); device/dtype are accepted and unused.

        radius: neighbourhood (pixels) each filled pixel is estimated from.
        dilate: grow each mask by this many pixels first (0 = the caller's mask as is).
        """
        if path not in (None, ""):
            raise ConfigError(f"{ROLE}: the telea backend takes no model path, got {path!r}")
        if radius <= 0 or dilate < 0:
            raise ConfigError(f"{ROLE}: need radius > 0 and dilate >= 0, got radius={radius}, dilate={dilate}")
        return cls(float(radius), int(dilate))

    def inpaint(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        prompts: Sequence[str],
        negative_prompts: Sequence[str],
        seeds: Sequence[int],
    ) -> list[np.ndarray]:
        """uint8 [H, W, 3] images, float32 [H, W] masks (> 0.5 = fill) -> uint8 [H, W, 3] each.

        Pixels outside the (dilated) mask are exactly the input's; an empty mask returns
        a copy of the input.
        """
        n = len(images)
        if not (len(masks) == len(prompts) == len(negative_prompts) == len(seeds) == n):
            raise ValueError(
                f"{ROLE}: images, masks, prompts, negative_prompts, seeds must have one entry per job, got lengths "
                f"{n}, {len(masks)}, {len(prompts)}, {len(negative_prompts)}, {len(seeds)}"
            )
        out = []
        for j, (im, mk) in enumerate(zip(images, masks)):
            if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8 or mk.shape != im.shape[:2]:
                raise ValueError(
                    f"{ROLE}: job {j}: need a uint8 [H, W, 3] image and an [H, W] mask, "
                    f"got {im.shape} {im.dtype} and {mk.shape}"
                )
            m = (mk > 0.5).astype(np.uint8)
            if self.dilate and m.any():
                k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * self.dilate + 1, 2 * self.dilate + 1))
                m = cv2.dilate(m, k)
            if not m.any():
                out.append(np.array(im, copy=True))
                continue
            filled = cv2.inpaint(np.ascontiguousarray(im), m, self.radius, cv2.INPAINT_TELEA)
            # cv2.inpaint leaves unmasked pixels alone already; the where() makes it a guarantee.
            out.append(np.where(m[..., None] > 0, filled, im))
        return out
