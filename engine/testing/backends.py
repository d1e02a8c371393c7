"""Scripted models implementing the engine's protocols from what a ColourWorld sees.

They look at the pixels of the images they are given, so removing an object (by inpainting)
makes every model stop seeing it. They are not oracles: each makes the kind of error its real
counterpart makes (``ModelErrors``), drawn from a generator seeded by the request's pixels, so a
request always gets the same answer whatever else shares its batch.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from ..protocols import Detections, Models, SegmentRequest
from .world import ColourWorld, box_of


@dataclass(frozen=True)
class ModelErrors:
    """How far each scripted model is from the truth. The defaults are what we see from the real
    models on camouflage-like scenes; ``ModelErrors.exact()`` turns every error off.

    VLM (LLaVA-1.5 boxes are coarse and often wrong):
        box_jitter: σ of each box edge's error, as a fraction of the box's width/height.
        box_wrong: probability that the box lands on another thing's region, or off the object
            (the box moved by about its own size) when nothing else is there.
        box_missing: probability that the VLM answers without a box.
    Detector (GroundingDINO): det_jitter, σ of each edge as a fraction of the box size; scores
        drawn in [0.4, 0.9] (all above the default 0.35 threshold, not all equal).
    Segmenter (SAM): edge_px, σ in pixels of a smooth displacement of the mask boundary; the
        probability is a sigmoid of the signed distance to that boundary, between 0.02 and 0.98.
    CLIP (ViT-B/16): the cosine similarity of an image and a name is 0.21 + clip_gap x (share of
        the visible pixels showing the name) + N(0, clip_noise). Real CLIP gives ~0.30 for a
        matching image-caption pair and ~0.20 for an unrelated one, and masked crops of the same
        object in different views differ by 1-3 hundredths: hence a gap of 0.08 and σ = 0.01
        (at eq 11's temperature 0.01 that noise alone changes a view's softmax weight ~e^±1).
        map_noise: amplitude of the smooth noise added to the similarity map, which is computed
        on a 14 x 14 patch grid (ViT-B/16 at 224 px) and upsampled, as CLIP Surgery's is.
    """

    box_jitter: float = 0.15
    box_wrong: float = 0.1
    box_missing: float = 0.1
    det_jitter: float = 0.04
    edge_px: float = 1.5
    clip_gap: float = 0.08
    clip_noise: float = 0.01
    map_noise: float = 0.15

    @staticmethod
    def exact() -> "ModelErrors":
        """No error at all: oracle models, for unit tests of plumbing only."""
        return ModelErrors(0.0, 0.0, 0.0, 0.0, 0.0, 0.08, 0.0, 0.0)


def request_rng(image: np.ndarray, salt: str) -> np.random.Generator:
    """A generator seeded by the request (its pixels and ``salt``): the same request, the same draw."""
    seed = zlib.crc32(np.ascontiguousarray(image).tobytes()) ^ zlib.crc32(salt.encode())
    return np.random.default_rng(seed)


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """float32 [h, w] noise of unit standard deviation, smooth over about ``cell`` pixels."""
    gh, gw = max(2, int(round(h / cell)) + 1), max(2, int(round(w / cell)) + 1)
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


class ScriptedVLM:
    """A VLM that names what it sees, with priors and confusions (``Thing.bias``/``confusions``).

    - P_B (a prompt mentioning "bounding box"): the normalised box of the largest region of any
      object's own pixels, with ``ModelErrors``' jitter, wrong boxes and refusals;
      ``gives_boxes=False`` always refuses, as VLMs often do.
    - P_A (a prompt asking for "the name"): "<object>, <environment>" where the object has the
      highest score below and the environment the most pixels.
    - score: s(c | X) = log(δ + evidence(c)) + bias(c): the share of pixels showing c (plus
      confused pixels), so removing c's pixels lowers it.
    """

    def __init__(
        self, world: ColourWorld, delta: float = 1e-3, gives_boxes: bool = True, errors: ModelErrors = ModelErrors()
    ) -> None:
        self.world = world
        self.delta = delta
        self.gives_boxes = gives_boxes
        self.errors = errors

    def _log_score(self, fractions: dict[str, float], name: str) -> float:
        t = self.world.thing(name)
        bias = t.bias if t else 0.0
        return math.log(self.delta + self.world.evidence(fractions, name)) + bias

    def _box(self, image: np.ndarray) -> tuple[float, float, float, float] | None:
        """The box the VLM answers in pixels, or None for a refusal."""
        e, rng = self.errors, request_rng(image, "vlm-box")
        regions = [(t.name, c) for t in self.world.objects for c in self.world.components(image, t.name)[:1]]
        if not self.gives_boxes or not regions or rng.random() < e.box_missing:
            return None
        name, region = max(regions, key=lambda r: r[1].sum())
        x0, y0, x1, y1 = box_of(region)
        bw, bh = x1 - x0, y1 - y0
        if rng.random() < e.box_wrong:
            others = [r for n, r in regions if n != name]
            if others:
                x0, y0, x1, y1 = box_of(others[0])
            else:  # off the object: moved by about its own size, in a random direction
                angle = rng.uniform(0, 2 * np.pi)
                dx, dy = np.cos(angle) * bw * 1.2, np.sin(angle) * bh * 1.2
                x0, x1, y0, y1 = x0 + dx, x1 + dx, y0 + dy, y1 + dy
        jx, jy = rng.normal(0, e.box_jitter * bw, 2), rng.normal(0, e.box_jitter * bh, 2)
        h, w = image.shape[:2]
        x0, x1 = sorted(np.clip([x0 + jx[0], x1 + jx[1]], 0, w))
        y0, y1 = sorted(np.clip([y0 + jy[0], y1 + jy[1]], 0, h))
        return (x0, y0, x1, y1) if x1 - x0 >= 1 and y1 - y0 >= 1 else None

    def _answer_box(self, image: np.ndarray) -> str:
        box = self._box(image)
        if box is None:
            return "Sorry, I cannot give coordinates." if not self.gives_boxes else "There is none in this image."
        # As LLaVA-1.5 answers: normalised to the image padded to a centred square (its training
        # frame, patches.normalised_box_to_view), not to the image itself.
        from ..patches import square_frame

        side, top, left = square_frame(*image.shape[:2])
        x0, y0, x1, y1 = box
        return f"[{(x0 + left) / side:.3f}, {(y0 + top) / side:.3f}, {(x1 + left) / side:.3f}, {(y1 + top) / side:.3f}]"

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
    """Finds the regions whose colour is the named thing's (no confusions), with jittered boxes and
    scores in [0.4, 0.9]."""

    def __init__(self, world: ColourWorld, min_area: int = 6, errors: ModelErrors = ModelErrors()) -> None:
        self.world = world
        self.min_area = min_area
        self.errors = errors

    def detect(
        self, images: Sequence[np.ndarray], texts: Sequence[str], box_threshold: float, text_threshold: float
    ) -> list[Detections]:
        out = []
        for image, text in zip(images, texts):
            rng = request_rng(image, "det:" + text)
            h, w = image.shape[:2]
            boxes, scores = [], []
            for region in self.world.components(image, text, self.min_area):
                x0, y0, x1, y1 = box_of(region)
                jx = rng.normal(0, self.errors.det_jitter * (x1 - x0), 2)
                jy = rng.normal(0, self.errors.det_jitter * (y1 - y0), 2)
                score = rng.uniform(0.4, 0.9) if self.errors.det_jitter > 0 else 0.9
                if score >= box_threshold:
                    boxes.append(
                        [
                            np.clip(x0 + jx[0], 0, w),
                            np.clip(y0 + jy[0], 0, h),
                            np.clip(x1 + jx[1], 0, w),
                            np.clip(y1 + jy[1], 0, h),
                        ]
                    )
                    scores.append(score)
            out.append(Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32)))
        return out


class ScriptedSegmenter:
    """SAM-like: a box gives its dominant thing's pixels inside it; a positive point gives the
    connected region of the thing under it, minus regions under negative points. The answer is a
    probability with a ragged boundary (``ModelErrors.edge_px``), never exactly 0 or 1."""

    def __init__(self, world: ColourWorld, errors: ModelErrors = ModelErrors()) -> None:
        self.world = world
        self.errors = errors

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
        if len(r.boxes) == 0 and len(r.points) == 0:
            return np.zeros((h, w), np.float32)
        return self._probability(out, request_rng(r.image, "sam"))

    def _probability(self, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """float32 [h, w]: sigmoid of the signed distance (pixels) to a ragged version of the boundary."""
        m = mask.astype(np.uint8)
        inside = cv2.distanceTransform(m, cv2.DIST_L2, 3)
        outside = cv2.distanceTransform(1 - m, cv2.DIST_L2, 3)
        signed = np.where(mask, inside - 0.5, 0.5 - outside).astype(np.float32)
        h, w = mask.shape
        signed = np.clip(signed + self.errors.edge_px * smooth_noise(rng, h, w, cell=6.0), -15.0, 15.0)
        return (0.02 + 0.96 / (1.0 + np.exp(np.clip(-2.0 * signed, -30.0, 30.0)))).astype(np.float32)

    @staticmethod
    def _region_at(labels: np.ndarray, x: int, y: int) -> np.ndarray:
        if labels[y, x] < 0:
            return np.zeros(labels.shape, bool)
        _, comp = cv2.connectedComponents((labels == labels[y, x]).astype(np.uint8), connectivity=8)
        return comp == comp[y, x]


class ScriptedClip:
    """CLIP-like: cosine 0.21 + gap x (share of the visible pixels showing the text's thing,
    confusions weighted) + noise; the map is that share per pixel on a coarse patch grid, plus
    smooth noise (``ModelErrors``)."""

    PATCHES = 14  # ViT-B/16 at 224 px

    def __init__(self, world: ColourWorld, errors: ModelErrors = ModelErrors()) -> None:
        self.world = world
        self.errors = errors

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
            noise = request_rng(image, "clip:" + text).normal(0, self.errors.clip_noise)
            out.append(0.21 + self.errors.clip_gap * share + noise)
        return np.asarray(out, np.float32)

    def similarity_maps(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> list[np.ndarray]:
        out = []
        for image, text in zip(images, texts):
            h, w = image.shape[:2]
            per_pixel = self._per_pixel(image, text)
            g = self.PATCHES
            coarse = cv2.resize(per_pixel, (g, g), interpolation=cv2.INTER_AREA)
            smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
            noise = smooth_noise(request_rng(image, "map:" + text), h, w, cell=max(h, w) / 4)
            out.append((smooth + self.errors.map_noise * noise).astype(np.float32))
        return out


def scripted_models(
    world: ColourWorld, gives_boxes: bool = True, inpaint_radius: float = 3.0, errors: ModelErrors = ModelErrors()
) -> Models:
    """The four scripted roles over ``world`` with ``errors``, and real OpenCV Telea inpainting."""
    from ..backends.inpaint_telea import TeleaInpainter

    return Models(
        vlm=ScriptedVLM(world, gives_boxes=gives_boxes, errors=errors),
        inpainter=TeleaInpainter.load(None, radius=inpaint_radius),
        detector=ScriptedDetector(world, errors=errors),
        segmenter=ScriptedSegmenter(world, errors=errors),
        clip=ScriptedClip(world, errors=errors),
    )
