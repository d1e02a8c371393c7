"""A world of named colours: which pixels show which thing.

Pixels are matched by chromaticity (r, g, b) / (r + g + b), which eq 12's reweighting
(a brightness scale) leaves unchanged, so a thing stays the same thing in every iteration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np


@dataclass(frozen=True)
class Thing:
    """A named thing. ``kind`` is "object" (a foreground name the VLM may propose) or
    "background" (an environment). ``bias`` is the VLM's prior for the name (added to its
    log-score); ``confusions`` maps another thing's name to the weight with which that
    thing's pixels also count as evidence for this name (a snake "seen" in bark texture)."""

    name: str
    colour: tuple[int, int, int]
    kind: str = "object"
    bias: float = 0.0
    confusions: dict[str, float] = field(default_factory=dict)


@dataclass
class ColourWorld:
    """The things of a world, and how pixels are matched to them. ``seed`` varies the scripted
    models' errors: they draw them from what they see in a request (its labels, not its
    brightness, so eq 12's reweighting does not redraw them) and this seed, so two worlds that
    differ only in ``seed`` see the same scene through different errors."""

    things: list[Thing]
    tolerance: float = 0.05
    min_brightness: float = 12.0
    seed: int = 0

    def __post_init__(self) -> None:
        self.by_name = {t.name: t for t in self.things}
        chroma = np.array([t.colour for t in self.things], np.float64)
        self._chroma = chroma / chroma.sum(axis=1, keepdims=True)

    def thing(self, name: str) -> Thing | None:
        """The thing a (possibly sentence-like) name refers to, e.g. "frog." -> frog."""
        return self.by_name.get(name.strip().strip(".").strip().lower())

    @property
    def objects(self) -> list[Thing]:
        return [t for t in self.things if t.kind == "object"]

    @property
    def backgrounds(self) -> list[Thing]:
        return [t for t in self.things if t.kind == "background"]

    def labels(self, image: np.ndarray) -> np.ndarray:
        """int [H, W]: the index of the thing whose chromaticity is nearest each pixel within
        ``tolerance``, or -1 (no thing; also for near-black pixels)."""
        rgb = image.astype(np.float64)
        total = rgb.sum(axis=-1, keepdims=True)
        chroma = rgb / np.maximum(total, 1e-6)
        dist = np.linalg.norm(chroma[..., None, :] - self._chroma[None, None], axis=-1)
        best = dist.argmin(axis=-1)
        ok = (dist.min(axis=-1) <= self.tolerance) & (total[..., 0] / 3.0 >= self.min_brightness)
        return np.where(ok, best, -1)

    def mask(self, image: np.ndarray, name: str) -> np.ndarray:
        """bool [H, W]: the pixels showing ``name``."""
        t = self.thing(name)
        if t is None:
            return np.zeros(image.shape[:2], bool)
        return self.labels(image) == self.things.index(t)

    def fractions(self, image: np.ndarray) -> dict[str, float]:
        """The share of the image's pixels showing each thing."""
        lab = self.labels(image)
        return {t.name: float((lab == i).mean()) for i, t in enumerate(self.things)}

    def evidence(self, fractions: dict[str, float], name: str) -> float:
        """How much of the image looks like ``name``: its own pixels plus confused ones."""
        t = self.thing(name)
        if t is None:
            return 0.0
        return fractions[t.name] + sum(w * fractions.get(other, 0.0) for other, w in t.confusions.items())

    def components(self, image: np.ndarray, name: str, min_area: int = 4) -> list[np.ndarray]:
        """The connected regions of ``name``'s pixels (bool [H, W] each), largest first."""
        m = self.mask(image, name).astype(np.uint8)
        n, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        order = sorted(range(1, n), key=lambda i: -stats[i, cv2.CC_STAT_AREA])
        return [lab == i for i in order if stats[i, cv2.CC_STAT_AREA] >= min_area]


def box_of(mask: np.ndarray) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) pixel box enclosing a non-empty bool mask (x1, y1 exclusive)."""
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
