"""Scripted models implementing the engine's protocols from what a ColourWorld sees.

They look at the pixels of the images they are given, so removing an object (by inpainting)
makes every model stop seeing it. They are not oracles: each makes the kind of error its real
counterpart makes (``ModelErrors``), drawn from a generator seeded by the request's pixels, so a
request always gets the same answer whatever else shares its batch.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import cv2
import numpy as np

from ..patches import square_frame
from ..protocols import Detections, Models, SegmentRequest
from .noise import ModelErrors, boundary_noise, request_rng, smooth_noise
from .world import ColourWorld, box_of


class ScriptedVLM:
    """A VLM that names what it sees, with priors and confusions (``Thing.bias``/``confusions``).

    - P_B (a prompt mentioning "bounding box"): the normalised box of the largest region of any
      object's own pixels, with ``ModelErrors``' jitter, wrong boxes and refusals;
      ``gives_boxes=False`` always refuses, as VLMs often do.
    - P_A (a prompt asking for "the name of the <task>"): "Frog, bark." where the object has the
      highest score below and the environment the most pixels, or (``ModelErrors.name_sentence``)
      a sentence repeating the task, as LLaVA sometimes answers.
    - score: s(c | X) = log(δ + evidence(c)) + bias(c): the share of pixels showing c (plus
      confused pixels), so removing c's pixels lowers it.
    - sampling (``temperature`` > 0): each request's errors are drawn from its own seed, and the
      object named is drawn from the softmax of the scores at that temperature.
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

    def _box(self, image: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float, float] | None:
        """The box the VLM answers in pixels, or None for a refusal."""
        e = self.errors
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

    def _answer_box(self, image: np.ndarray, rng: np.random.Generator) -> str:
        box = self._box(image, rng)
        if box is None:
            return "Sorry, I cannot give coordinates." if not self.gives_boxes else "There is none in this image."
        # As LLaVA-1.5 answers: normalised to the image padded to a centred square (its training
        # frame, patches.normalised_box_to_view), not to the image itself.
        side, top, left = square_frame(*image.shape[:2])
        x0, y0, x1, y1 = box
        return f"[{(x0 + left) / side:.3f}, {(y0 + top) / side:.3f}, {(x1 + left) / side:.3f}, {(y1 + top) / side:.3f}]"

    def _answer_name(self, image: np.ndarray, prompt: str, rng: np.random.Generator, temperature: float) -> str:
        fr = self.world.fractions(image)
        seen = [t for t in self.world.objects if self.world.evidence(fr, t.name) > 0]
        if not seen:
            return "I cannot see one."
        scores = np.array([self._log_score(fr, t.name) for t in seen])
        if temperature > 0:
            p = np.exp((scores - scores.max()) / temperature)
            fore = seen[int(rng.choice(len(seen), p=p / p.sum()))].name
        else:
            fore = seen[int(scores.argmax())].name
        backs = [t for t in self.world.backgrounds if fr[t.name] > 0]
        back = max(backs, key=lambda t: fr[t.name]).name if backs else "background"
        task = re.search(r"name of the (.+?) and its environment", prompt)
        if task and rng.random() < self.errors.name_sentence:
            return f"The {task.group(1)} is a {fore}, and its environment is {back}."
        return f"{fore.capitalize()}, {back}."

    def generate(
        self,
        images: Sequence[np.ndarray],
        prompts: Sequence[str],
        max_new_tokens: int,
        temperature: float = 0.0,
        seeds: Sequence[int] | None = None,
    ) -> list[str]:
        out = []
        for j, (image, prompt) in enumerate(zip(images, prompts)):
            sampled = f":{seeds[j]}" if temperature > 0 and seeds is not None else ""
            if "bounding box" in prompt:
                out.append(self._answer_box(image, request_rng(self.world, image, "vlm-box" + sampled)))
            elif "name of the" in prompt:
                out.append(self._answer_name(image, prompt, request_rng(self.world, image, "vlm-name" + sampled), temperature))
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
    """Finds the regions whose colour is the named thing's, with jittered boxes and scores in
    [0.4, 0.9], and now and then a false positive on a region of a thing the name is confused
    with (``ModelErrors.det_false``), scored just above the threshold as GroundingDINO's are."""

    def __init__(self, world: ColourWorld, min_area: int = 6, errors: ModelErrors = ModelErrors()) -> None:
        self.world = world
        self.min_area = min_area
        self.errors = errors

    def detect(
        self, images: Sequence[np.ndarray], texts: Sequence[str], box_threshold: float, text_threshold: float
    ) -> list[Detections]:
        out = []
        for image, text in zip(images, texts):
            rng = request_rng(self.world, image, "det:" + text)
            boxes, scores = [], []
            for region in self.world.components(image, text, self.min_area):
                score = rng.uniform(0.4, 0.9) if self.errors.det_jitter > 0 else 0.9
                boxes.append(self._jittered(region, image.shape[:2], rng))
                scores.append(score)
            thing = self.world.thing(text)
            for other, weight in (thing.confusions if thing else {}).items():
                for region in self.world.components(image, other, self.min_area):
                    prominence = min(1.0, float(region.mean()) / 0.05)  # a look-alike seen up close fools it more
                    if rng.random() < self.errors.det_false * weight * prominence:
                        boxes.append(self._jittered(region, image.shape[:2], rng))
                        scores.append(rng.uniform(0.35, 0.5))
            keep = [j for j, sc in enumerate(scores) if sc >= box_threshold]
            out.append(
                Detections(
                    np.array([boxes[j] for j in keep], np.float32).reshape(-1, 4), np.array([scores[j] for j in keep], np.float32)
                )
            )
        return out

    def _jittered(self, region: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> list[float]:
        h, w = size
        x0, y0, x1, y1 = box_of(region)
        jx = rng.normal(0, self.errors.det_jitter * (x1 - x0), 2)
        jy = rng.normal(0, self.errors.det_jitter * (y1 - y0), 2)
        return [np.clip(x0 + jx[0], 0, w), np.clip(y0 + jy[0], 0, h), np.clip(x1 + jx[1], 0, w), np.clip(y1 + jy[1], 0, h)]


class ScriptedSegmenter:
    """SAM-like, one prompt per box, each with all the points, the prompts' masks united:

    - a box gives the region of the thing it outlines best (its connected region whose bounding
      box matches the box most), inside the box, and a positive point inside the box adds its
      thing's pixels there (SAM keeps to the box);
    - without a box, a positive point gives the connected region of the thing under it;
    - a negative point removes a disc around it (``ModelErrors.neg_radius``), not its whole region.

    The answer is a probability with a ragged boundary (``ModelErrors.edge_px``)."""

    def __init__(self, world: ColourWorld, errors: ModelErrors = ModelErrors()) -> None:
        self.world = world
        self.errors = errors

    def segment(self, requests: Sequence[SegmentRequest]) -> list[np.ndarray]:
        return [self._one(r) for r in requests]

    def _one(self, r: SegmentRequest) -> np.ndarray:
        labels = self.world.labels(r.image)
        h, w = labels.shape
        if len(r.boxes) == 0 and len(r.points) == 0:
            return np.zeros((h, w), np.float32)
        points = np.asarray(r.points, np.float64).reshape(-1, 2)
        point_labels = np.asarray(r.labels).reshape(-1)
        out = np.zeros((h, w), bool)
        for box in np.asarray(r.boxes).reshape(-1, 4) if len(r.boxes) else [None]:
            out |= self._prompt(labels, box, points, point_labels)
        return self._probability(out)

    def _prompt(self, labels: np.ndarray, box: np.ndarray | None, points: np.ndarray, point_labels: np.ndarray) -> np.ndarray:
        h, w = labels.shape
        region = np.zeros((h, w), bool)
        inside = np.ones((h, w), bool)
        if box is not None:
            xa, ya = int(np.floor(box[0])), int(np.floor(box[1]))
            xb, yb = int(np.ceil(box[2])), int(np.ceil(box[3]))
            inside = np.zeros((h, w), bool)
            inside[max(ya, 0) : yb, max(xa, 0) : xb] = True
            region = inside & self._fitting_component(labels, (xa, ya, xb, yb))
        for (x, y), label in zip(points, point_labels):
            xi, yi = int(min(max(x, 0), w - 1)), int(min(max(y, 0), h - 1))
            if label == 1 and inside[yi, xi]:
                region |= self._region_at(labels, xi, yi) & inside
        radius = max(2.0, self.errors.neg_radius * min(h, w))
        yy, xx = np.mgrid[0:h, 0:w]
        for (x, y), label in zip(points, point_labels):
            if label == 0:
                region &= (xx - x) ** 2 + (yy - y) ** 2 > radius**2
        return region

    def _probability(self, mask: np.ndarray) -> np.ndarray:
        """float32 [h, w]: sigmoid of the signed distance (pixels) to a ragged version of the
        boundary (``boundary_noise``: the same edge moves the same way in every view)."""
        m = mask.astype(np.uint8)
        inside = cv2.distanceTransform(m, cv2.DIST_L2, 3)
        outside = cv2.distanceTransform(1 - m, cv2.DIST_L2, 3)
        signed = np.where(mask, inside - 0.5, 0.5 - outside).astype(np.float32)
        signed = np.clip(signed + self.errors.edge_px * boundary_noise(mask), -15.0, 15.0)
        return (1.0 / (1.0 + np.exp(-2.0 * signed))).astype(np.float32)

    @staticmethod
    def _fitting_component(labels: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """bool [h, w]: the connected region of one thing whose bounding box best matches ``box``
        (IoU of the two boxes), as SAM segments the object a box outlines, not what fills most of it."""
        xa, ya, xb, yb = box
        best, best_iou = np.zeros(labels.shape, bool), 0.0
        window = labels[max(ya, 0) : yb, max(xa, 0) : xb]
        for label in np.unique(window[window >= 0]):
            n, comp, stats, _ = cv2.connectedComponentsWithStats((labels == label).astype(np.uint8), connectivity=8)
            for c in np.unique(comp[max(ya, 0) : yb, max(xa, 0) : xb][window == label]):
                x, y, w, h = stats[c, :4]
                ix = max(0, min(xb, x + w) - max(xa, x))
                iy = max(0, min(yb, y + h) - max(ya, y))
                union = (xb - xa) * (yb - ya) + w * h - ix * iy
                fit = ix * iy / union if union > 0 else 0.0
                if fit > best_iou:
                    best, best_iou = comp == c, fit
        return best

    @staticmethod
    def _region_at(labels: np.ndarray, x: int, y: int) -> np.ndarray:
        if labels[y, x] < 0:
            return np.zeros(labels.shape, bool)
        _, comp = cv2.connectedComponents((labels == labels[y, x]).astype(np.uint8), connectivity=8)
        return comp == comp[y, x]


class ScriptedClip:
    """CLIP-like: cosine 0.21 + gap x (share of the visible pixels showing the text's thing,
    confusions weighted) x (how much of the image they fill) + noise; the map is that share per
    cell of a 14 x 14 patch grid plus smooth noise, min-max normalised, with the background
    names' map subtracted first when given (``ModelErrors``)."""

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
            full = self.errors.clip_full_view
            size = min(1.0, float(visible.mean()) / full) ** 0.5 if full > 0 else 1.0
            noise = request_rng(self.world, image, "clip:" + text).normal(0, self.errors.clip_noise)
            out.append(0.21 + self.errors.clip_gap * share * size + noise)
        return np.asarray(out, np.float32)

    def _grid_map(self, image: np.ndarray, text: str) -> np.ndarray:
        """float32 [14, 14] in [0, 1]: the text's share per patch with smooth noise, min-max."""
        g = self.PATCHES
        coarse = cv2.resize(self._per_pixel(image, text), (g, g), interpolation=cv2.INTER_AREA)
        noise = smooth_noise(request_rng(self.world, image, "map:" + text), g, g, cell=g / 4)
        return _minmax(coarse + self.errors.map_noise * noise)

    def similarity_maps(
        self, images: Sequence[np.ndarray], texts: Sequence[str], backgrounds: Sequence[Sequence[str]] | None = None
    ) -> list[np.ndarray]:
        out = []
        for j, (image, text) in enumerate(zip(images, texts)):
            fg = self._grid_map(image, text)
            names = list(backgrounds[j]) if backgrounds is not None else []
            if names:
                fg = _minmax(fg - np.mean([self._grid_map(image, n) for n in names], axis=0))
            out.append(fg.astype(np.float32))
        return out


def _minmax(m: np.ndarray) -> np.ndarray:
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


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
