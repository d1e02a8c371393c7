"""Generated scenes for the scripted world: textured backgrounds with placed objects and
exact ground truth."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .world import ColourWorld


@dataclass
class Scene:
    """image uint8 [H, W, 3]; masks: name -> bool [H, W] of each placed object instance set."""

    image: np.ndarray
    masks: dict[str, np.ndarray]

    def gt(self, *names: str) -> np.ndarray:
        """bool [H, W]: the union of the named objects' masks."""
        out = np.zeros(self.image.shape[:2], bool)
        for n in names:
            out |= self.masks[n]
        return out


def _texture(rng: np.random.Generator, h: int, w: int, colour: tuple[int, int, int], amount: float) -> np.ndarray:
    """The colour with a multiplicative brightness texture (chromaticity unchanged)."""
    small = rng.standard_normal((max(1, h // 6), max(1, w // 6))).astype(np.float32)
    noise = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) + 0.3 * rng.standard_normal((h, w)).astype(np.float32)
    scale = np.clip(1.0 + amount * noise, 0.6, 1.4)[..., None]
    return np.clip(np.array(colour, np.float32)[None, None] * scale, 0, 255)


def ellipse(h: int, w: int, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
    """bool [h, w]: a filled ellipse centred at (cx, cy) pixels."""
    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, (int(round(cx)), int(round(cy))), (int(round(rx)), int(round(ry))), angle, 0, 360, 1, -1)
    return m.astype(bool)


def compose(
    world: ColourWorld,
    background: str,
    objects: list[tuple[str, np.ndarray]],
    h: int,
    w: int,
    seed: int = 0,
    texture: float = 0.12,
) -> Scene:
    """A background thing's texture with each (name, mask) object painted in its own texture."""
    rng = np.random.default_rng(seed)
    image = _texture(rng, h, w, world.by_name[background].colour, texture)
    masks: dict[str, np.ndarray] = {}
    for name, mask in objects:
        image[mask] = _texture(rng, h, w, world.by_name[name].colour, texture)[mask]
        masks[name] = masks.get(name, np.zeros((h, w), bool)) | mask
    return Scene(image.astype(np.uint8), masks)
