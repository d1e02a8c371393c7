"""Scripted models implementing the engine's protocols from what a ColourWorld sees.

They are deterministic functions of the pixels: remove an object's pixels (by inpainting)
and every model stops seeing it.
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from ..protocols import Detections, Models, SegmentRequest
from .world import ColourWorld, box_of


class ScriptedVLM:
    """A VLM that names what it sees, with priors and confusions (``Thing.bias``/``confusions``).

    - P_B (a prompt mentioning "bounding box"): the normalised box of the largest region of
      any object's own pixels, or a refusal; ``gives_boxes=False`` always refuses, as VLMs often do.
    - P_A (a prompt asking for "the name"): "<object>, <environment>" where the object has the
      highest score below and the environment the most pixels.
    - score: s(c | X) = log(δ + evidence(c)) + bias(c): the share of pixels showing c (plus
      confused pixels), so removing c's pixels lowers it.
    """

    def __init__(self, world: ColourWorld, delta: float = 1e-3, gives_boxes: bool = True) -> None:
        self.world = world
        self.delta = delta
        self.gives_boxes = gives_boxes

    def _log_score(self, fractions: dict[str, float], name: str) -> float:
        t = self.world.thing(name)
        bias = t.bias if t else 0.0
        return math.log(self.delta + self.world.evidence(fractions, name)) + bias

    def _answer_box(self, image: np.ndarray) -> str:
        if not self.gives_boxes:
            return "Sorry, I cannot give coordinates."
        regions = [c for t in self.world.objects for c in self.world.components(image, t.name)[:1]]
        if not regions:
            return "There is none in this image."
        x0, y0, x1, y1 = box_of(max(regions, key=lambda r: r.sum()))
        h, w = image.shape[:2]
        return f"[{x0 / w:.3f}, {y0 / h:.3f}, {x1 / w:.3f}, {y1 / h:.3f}]"

    def _answer_name(self, image: np.ndarray) -> str:
        fr = self.world.fractions(image)
        seen = [t for t in self.world.objects if self.world.evidence(fr, t.name) > 0]
        if not seen:
            return "I cannot see one."
        fore = max(seen, key=lambda t: self._log_score(fr, t.name)).name
        backs = [t for t in self.world.backgrounds if fr[t.name] > 0]
        back = max(backs, key=lambda t: fr[t.name]).name if backs else "background"
        return f"{fore}, {back}"

    def generate(self, images: Sequence[np.ndarray], prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        out = []
        for image, prompt in zip(images, prompts):
            if "bounding box" in prompt:
                out.append(self._answer_box(image))
            elif "name of the" in prompt:
                out.append(self._answer_name(image))
            else:
                out.append("I do not know.")
        return out

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        cache: dict[int, dict[str, float]] = {}
        out = []
        for image, answer in zip(images, answers):
            fr = cache.setdefault(id(image), self.world.fractions(image))
            out.append(self._log_score(fr, answer))
        return np.asarray(out, np.float32)


class ScriptedDetector:
    """Finds the regions whose colour is the named thing's (no confusions), score ``confidence``."""

    def __init__(self, world: ColourWorld, confidence: float = 0.9, min_area: int = 6) -> None:
        self.world = world
        self.confidence = confidence
        self.min_area = min_area

    def detect(self, images: Sequence[np.ndarray], texts: Sequence[str], box_threshold: float, text_threshold: float) -> list[Detections]:
        out = []
        for image, text in zip(images, texts):
            regions = self.world.components(image, text, self.min_area) if self.confidence >= box_threshold else []
            if not regions:
                out.append(Detections.empty())
                continue
            boxes = np.array([box_of(r) for r in regions], np.float32)
            out.append(Detections(boxes, np.full(len(boxes), self.confidence, np.float32)))
        return out


class ScriptedSegmenter:
    """SAM-like: a box gives its dominant thing's pixels inside it; a positive point gives the
    connected region of the thing under it, minus regions under negative points."""

    def __init__(self, world: ColourWorld) -> None:
        self.world = world

    def segment(self, requests: Sequence[SegmentRequest]) -> list[np.ndarray]:
        return [self._one(r) for r in requests]

    def _one(self, r: SegmentRequest) -> np.ndarray:
        labels = self.world.labels(r.image)
        h, w = labels.shape
        out = np.zeros((h, w), bool)
        for x0, y0, x1, y1 in np.asarray(r.boxes).reshape(-1, 4):
            xa, ya, xb, yb = int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))
            inside = labels[ya:yb, xa:xb]
            known = inside[inside >= 0]
            if known.size:
                dominant = np.bincount(known).argmax()
                out[ya:yb, xa:xb] |= inside == dominant
        if len(r.boxes) == 0:
            for (x, y), label in zip(np.asarray(r.points).reshape(-1, 2), np.asarray(r.labels).reshape(-1)):
                region = self._region_at(labels, int(min(max(x, 0), w - 1)), int(min(max(y, 0), h - 1)))
                out = out | region if label == 1 else out & ~region
        return out.astype(np.float32)

    @staticmethod
    def _region_at(labels: np.ndarray, x: int, y: int) -> np.ndarray:
        if labels[y, x] < 0:
            return np.zeros(labels.shape, bool)
        _, comp = cv2.connectedComponents((labels == labels[y, x]).astype(np.uint8), connectivity=8)
        return comp == comp[y, x]


class ScriptedClip:
    """CLIP-like: similarity = 0.15 + 0.15 x (share of the visible pixels showing the text's
    thing, confusions weighted); the map is that per pixel, slightly blurred."""

    def __init__(self, world: ColourWorld) -> None:
        self.world = world

    def _per_pixel(self, image: np.ndarray, text: str) -> np.ndarray:
        t = self.world.thing(text)
        labels = self.world.labels(image)
        m = np.zeros(labels.shape, np.float32)
        if t is None:
            return m
        weights = {t.name: 1.0, **t.confusions}
        for i, thing in enumerate(self.world.things):
            if thing.name in weights:
                m[labels == i] = weights[thing.name]
        return m

    def image_text_similarity(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> np.ndarray:
        out = []
        for image, text in zip(images, texts):
            visible = image.astype(np.float32).mean(axis=-1) >= self.world.min_brightness
            share = float(self._per_pixel(image, text)[visible].mean()) if visible.any() else 0.0
            out.append(0.15 + 0.15 * share)
        return np.asarray(out, np.float32)

    def similarity_maps(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> list[np.ndarray]:
        return [cv2.GaussianBlur(self._per_pixel(image, text), (0, 0), 1.0) for image, text in zip(images, texts)]


def scripted_models(world: ColourWorld, gives_boxes: bool = True, inpaint_radius: float = 3.0) -> Models:
    """The four scripted roles over ``world``, with real OpenCV Telea inpainting for removal."""
    from ..backends.inpaint_telea import TeleaInpainter

    return Models(
        vlm=ScriptedVLM(world, gives_boxes=gives_boxes),
        inpainter=TeleaInpainter.load(None, radius=inpaint_radius),
        detector=ScriptedDetector(world),
        segmenter=ScriptedSegmenter(world),
        clip=ScriptedClip(world),
    )
