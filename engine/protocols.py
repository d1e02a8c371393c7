"""The five model roles, as small protocols that take batches and return batches.

Images cross these boundaries as ``np.ndarray`` uint8 ``[H, W, 3]`` RGB; masks as
``np.ndarray`` float32 ``[H, W]`` in [0, 1] (a segmenter's are probabilities, binarised at
``SEGMENTER_THRESHOLD``). Every call takes a list so that the
scheduler can put the work of many images into one call; the reference pipeline
simply sends one image's views at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch

# A segmenter's probability above this is its binary mask: sigmoid(SAM's logit threshold 0).
SEGMENTER_THRESHOLD = 0.5


@dataclass(frozen=True)
class Detections:
    """Boxes found in one image, in that image's pixel coordinates.

    boxes: float32 [N, 4] as (x0, y0, x1, y1); scores: float32 [N].
    """

    boxes: np.ndarray
    scores: np.ndarray

    @staticmethod
    def empty() -> "Detections":
        return Detections(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))


@dataclass(frozen=True)
class SegmentRequest:
    """One SAM call: an image with box and point prompts in its pixel coordinates.

    boxes: float32 [N, 4] (x0, y0, x1, y1), N may be 0;
    points: float32 [P, 2] (x, y), P may be 0; labels: int64 [P], 1 = foreground, 0 = background.
    """

    image: np.ndarray
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))


@dataclass(frozen=True)
class ConceptRequest:
    """One concept-segmentation call (SAM 3): every instance of the noun phrase ``text`` in
    ``image``, guided by exemplar boxes in its pixel coordinates.

    positives: float32 [N, 4] (x0, y0, x1, y1) boxes showing the concept, N may be 0;
    negatives: float32 [M, 4] boxes showing what is *not* the concept (SAM 3's negative
    exemplars, ``input_boxes_labels`` 0), M may be 0.
    """

    image: np.ndarray
    text: str
    positives: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    negatives: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))


@runtime_checkable
class VLM(Protocol):
    """A vision-language model (LLaVA-1.5): free text out, and teacher-forced scores."""

    def generate(
        self,
        images: Sequence[np.ndarray],
        prompts: Sequence[str],
        max_new_tokens: int,
        temperature: float = 0.0,
        seeds: Sequence[int] | None = None,
    ) -> list[str]:
        """The answer to ``prompts[j]`` about ``images[j]``, one string per request (eq 1-2):
        greedy at ``temperature`` 0, else sampled at that temperature with request j's own
        random stream seeded by ``seeds[j]``, so that an answer does not depend on the batch.
        The engine passes ``temperature`` and ``seeds`` only when it samples.

        The backend wraps each prompt in its model's chat template.
        """
        ...

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """Length-normalised log-probability of ``answers[j]`` as the reply to ``prompts[j]``
        about ``images[j]``, teacher forced (SPEC step 4). Returns float32 [len(answers)]."""
        ...


@runtime_checkable
class Inpainter(Protocol):
    """Removes the masked region of each image and fills it with background (eq 4)."""

    def inpaint(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        prompts: Sequence[str],
        negative_prompts: Sequence[str],
        seeds: Sequence[int],
    ) -> list[np.ndarray]:
        """One output per input, same size as its input; pixels outside the mask unchanged.

        Each job's noise comes from its own seed, so a job's output does not depend on
        which other jobs share its batch.
        """
        ...


@runtime_checkable
class Detector(Protocol):
    """Open-vocabulary detector (GroundingDINO, eq 8)."""

    def detect(
        self, images: Sequence[np.ndarray], texts: Sequence[str], box_threshold: float, text_threshold: float
    ) -> list[Detections]: ...


@runtime_checkable
class Segmenter(Protocol):
    """Promptable segmenter (SAM, eq 9)."""

    def segment(self, requests: Sequence[SegmentRequest]) -> list[np.ndarray]:
        """One float32 [H, W] mask probability in [0, 1] per request (SAM: the sigmoid of its
        mask logits): the pixel-wise maximum over its boxes (one prompt per box, each with all
        the points), or the points-only mask when it has no box; all zeros when it has neither.
        SAM's backend keeps, per prompt, the highest-scoring of its multimask outputs (the
        authors' setting). The binary mask is ``probability > SEGMENTER_THRESHOLD`` (SAM's own
        threshold, 0 in logits): the union of the prompts' binary masks."""
        ...


@runtime_checkable
class ConceptSegmenter(Protocol):
    """Concept segmenter (SAM 3): a noun phrase in, every matching instance out. An optional role
    that, when configured, replaces detection and segmentation (steps 7-8) for each view."""

    def segment_concepts(self, requests: Sequence[ConceptRequest], threshold: float) -> list[np.ndarray]:
        """One float32 [H, W] probability in [0, 1] per request: the pixel-wise maximum of the
        mask probabilities of the instances whose score (SAM 3's detection score times its
        presence score) is at least ``threshold``; all zeros when none is. The binary mask is
        ``probability > SEGMENTER_THRESHOLD``, as a ``Segmenter``'s."""
        ...


@runtime_checkable
class Clip(Protocol):
    """CLIP: global image-text similarity (eq 10) and a spatial similarity map (eq 9)."""

    def image_text_similarity(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> np.ndarray:
        """Cosine similarity of ``images[j]`` and ``texts[j]``: float32 [len(images)] in [-1, 1]."""
        ...

    def similarity_maps(
        self, images: Sequence[np.ndarray], texts: Sequence[str], backgrounds: Sequence[Sequence[str]] | None = None
    ) -> list[np.ndarray]:
        """Spatial CLIP's map of ``texts[j]`` over ``images[j]`` (eq 9): float32 [h, w] in
        [0, 1] per image, covering the whole image on the model's own grid (CLIP Surgery: its
        patch tokens, 14 x 14 for ViT-B/16 whatever the image's aspect); higher means more of
        the text's object there. With ``backgrounds[j]`` (names; may be empty) the map of those
        names is subtracted first (the authors' FgBgHm), then the result min-max normalised."""
        ...


@runtime_checkable
class Miner(Protocol):
    """Negative mining (SPEC steps 4-6, eq 3, 5-7) over many images' scores at once.

    Not a network, but run like the models: the scheduler hands it every image waiting at
    ``Call.MINE`` in one call, so a GPU backend pads them into one [B, V, C] launch.
    """

    def mine(
        self,
        s_before: Sequence["torch.Tensor"],
        s_after: Sequence["torch.Tensor"],
        history: Sequence["torch.Tensor"],
        eps: float,
    ) -> list[tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]]:
        """Per image j: ``s_before[j]``, ``s_after[j]`` float [V_j, C_j] scores (-inf: padded
        candidate; an all -inf row: a view without contrast), ``history[j]`` float [C_j] the
        weights W_i. Returns per image (pick int64 [], scores Ď_i float [C_j], W_{i+1} float
        [C_j]) on the CPU, equal to ``mining.mine`` on that image alone."""
        ...


def cpu_miner() -> Miner:
    """The miner used where none is given: the torch reference's math on the CPU (the Triton
    kernel under TRITON_INTERPRET=1); imported when first made, so this module stays light."""
    from .kernels.miner import TickMiner

    return TickMiner("cpu")


@dataclass
class Models:
    """The roles, loaded. The pipeline and the scheduler receive this; they never load.

    ``miner`` is not loaded from a checkpoint: ``models.load`` puts it on the VLM's device.
    """

    vlm: VLM
    inpainter: Inpainter
    detector: Detector
    segmenter: Segmenter
    clip: Clip
    miner: Miner = field(default_factory=cpu_miner)
    concept: ConceptSegmenter | None = None  # optional: SAM 3 in place of steps 7-8
