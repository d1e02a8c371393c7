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
from .inpaint_jobs import binary_mask, check_jobs

ROLE = "inpaint"


class TeleaInpainter:
    """``cv2.inpaint(..., cv2.INPAINT_TELEA)`` per job. Build with :meth:`load`."""

    def __init__(self, radius: float, dilate: int) -> None:
        self.radius = radius
        self.dilate = dilate
        self.work = {"unet_latent_pixels": 0, "inpaint_jobs": 0}  # int_engine.work: no UNet, ever

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
        check_jobs(ROLE, images, masks, prompts, negative_prompts, seeds)
        out = []
        for im, mk in zip(images, masks):
            m = binary_mask(mk, self.dilate).astype(np.uint8)
            if not m.any():
                out.append(np.array(im, copy=True))
                continue
            filled = cv2.inpaint(np.ascontiguousarray(im), m, self.radius, cv2.INPAINT_TELEA)
            self.work["inpaint_jobs"] += 1
            # cv2.inpaint leaves unmasked pixels alone already; the where() makes it a guarantee.
            out.append(np.where(m[..., None] > 0, filled, im))
        return out
