"""The errors scripted models make, and the seeded noise they make them with.

``ModelErrors`` says how wrong each scripted model is; ``request_rng`` seeds a request's noise by
its pixels, so that a request gets the same answer whatever else shares its batch.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import cv2
import numpy as np

from .world import ColourWorld


@dataclass(frozen=True)
class ModelErrors:
    """How far each scripted model is from the truth. The defaults are what we see from the real
    models on camouflage-like scenes; ``ModelErrors.exact()`` turns every error off.

    VLM (LLaVA-1.5 boxes are coarse and often wrong):
        box_jitter: σ of each box edge's error, as a fraction of the box's width/height.
        box_wrong: probability that the box lands on another thing's region, or off the object
            (the box moved by about its own size) when nothing else is there.
        box_missing: probability that the VLM answers without a box.
        name_sentence: probability that P_A is answered with a sentence that repeats the task
            ("The camouflaged animal is a frog, and its environment is bark.") instead of
            "Frog, bark.".
    Detector (GroundingDINO): det_jitter, σ of each edge as a fraction of the box size; scores
        drawn in [0.4, 0.9] (all above the default 0.35 threshold, not all equal); det_false x w,
        the probability of a false positive on each region of a thing the name is confused with
        at weight w (``Thing.confusions``: a leaf for "frog" at 0.3 gives 3%) when the region fills
        5% of the view or more, less for a smaller one, scored in [0.35, 0.5].
    Segmenter (SAM): edge_px, σ in pixels of the view of a displacement of the mask boundary that
        depends on the boundary's local shape (SAM sees each view at 1024 px, so its boundary is
        within a pixel or two of the truth at a view's scale); the
        probability is a sigmoid of the signed distance to that boundary (~1e-13 far outside);
        neg_radius, the radius of what a negative point removes, as a fraction of the image's
        short side (a neighbourhood, not the whole region under it).
    CLIP (ViT-B/16): the cosine similarity of an image and a name is 0.21 + clip_gap x (share of
        the visible pixels showing the name) x (how much of the image they fill, saturating at
        ``clip_full_view`` of it: a small object on a black canvas is recognised less) +
        N(0, clip_noise). Real CLIP gives ~0.30 for a matching image-caption pair and ~0.20 for
        an unrelated one, and masked crops of the same object in different views differ by 1-3
        hundredths: hence a gap of 0.08 and σ = 0.01 (at eq 11's temperature 0.01 that noise
        alone changes a view's softmax weight ~e^±1).
        map_noise: amplitude of the smooth noise added to the similarity map, which is computed
        on a 14 x 14 patch grid (ViT-B/16 at 224 px), as CLIP Surgery's is.
    """

    box_jitter: float = 0.15
    box_wrong: float = 0.1
    box_missing: float = 0.1
    name_sentence: float = 0.3
    det_jitter: float = 0.04
    det_false: float = 0.1
    edge_px: float = 0.7
    neg_radius: float = 0.06
    clip_gap: float = 0.08
    clip_full_view: float = 0.05
    clip_noise: float = 0.01
    map_noise: float = 0.15

    @staticmethod
    def exact() -> "ModelErrors":
        """No error at all: oracle models, for unit tests of plumbing only."""
        return ModelErrors(
            box_jitter=0.0,
            box_wrong=0.0,
            box_missing=0.0,
            name_sentence=0.0,
            det_jitter=0.0,
            det_false=0.0,
            edge_px=0.0,
            clip_full_view=0.0,
            clip_noise=0.0,
            map_noise=0.0,
        )


def request_rng(world: ColourWorld, image: np.ndarray, salt: str) -> np.random.Generator:
    """A generator seeded by the request: what the world sees in its pixels (``world.labels``, so
    eq 12's brightness scaling does not change the draw), ``world.seed`` and ``salt``. The same
    request, the same draw, whatever else shares its batch."""
    labels = np.ascontiguousarray(world.labels(image), np.int16)
    key = zlib.crc32(labels.tobytes()) ^ zlib.crc32(f"{labels.shape}:{world.seed}:{salt}".encode())
    return np.random.default_rng(key)


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """float32 [h, w] noise of unit standard deviation, smooth over about ``cell`` pixels."""
    gh, gw = max(2, int(round(h / cell)) + 1), max(2, int(round(w / cell)) + 1)
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


_CODE = np.float64(2.0) ** np.arange(25).reshape(5, 5)  # a 5 x 5 binary neighbourhood as one integer


def boundary_noise(mask: np.ndarray) -> np.ndarray:
    """float32 [h, w], about unit spread near the mask's boundary, 0 far from it: a pseudo-random
    function of each pixel's 5 x 5 neighbourhood of the mask, smoothed. It depends on the shape
    alone, so the same edge seen in two views, or in a reweighted image (eq 12), moves the same
    way, as a real SAM's errors on the same object do."""
    code = cv2.filter2D(mask.astype(np.float64), -1, _CODE, borderType=cv2.BORDER_REPLICATE)
    code = np.round(code).astype(np.uint64)
    mixed = (code != 0) & (code != np.uint64(2**25 - 1))
    hashed = (code * np.uint64(2654435761) + np.uint64(12345)) % np.uint64(2**32)
    value = np.where(mixed, hashed.astype(np.float64) / 2**31 - 1.0, 0.0).astype(np.float32)
    return np.clip(cv2.GaussianBlur(value, (0, 0), 1.5) / 0.14, -3.0, 3.0)
