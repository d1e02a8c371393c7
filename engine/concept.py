"""Steps 7-8 by a concept segmenter (SAM 3, ``models.concept``): the requests it gets.

Not in the paper. SAM 3 takes a noun phrase and returns every instance of it; exemplar boxes
steer it: positives show the concept, negatives show what is *not* it. The picked name A_i^u is
the concept, the detector's boxes (step 7) are the positives, and with ``sam3_negatives:
mined`` the negatives are what step 6 already found: the P_B boxes of the names it rejected.

A view's P_B box (eq 2) and its name (P_A) come from two prompts, so a view may box the object
and still name it wrongly (Fig. 1: the whole view says "snake" and boxes the frog). A rejected
name's box that overlaps a box of the picked name (a P_B box of a view that named it, or a
detection) is such a case, or a synonym, and is dropped: a negative exemplar on the object
itself would tell SAM 3 to suppress the object.

Pure functions, arrays in and out; ``pipeline.segment_concepts`` makes the call.
"""

from __future__ import annotations

import numpy as np

from . import patches
from .prompts import ViewProposal
from .protocols import ConceptRequest

# A rejected name's box covering at least this share of a pick's box, or lying this much inside
# one (intersection over the smaller box), is the object itself or a synonym: not a negative.
SAME_OBJECT_OVERLAP = 0.5


def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over the smaller area of every box of ``a`` [N, 4] with every box of ``b``
    [M, 4] (image pixels): float32 [N, M]."""
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    smaller = np.minimum(area_a[:, None], area_b[None, :])
    return (ix * iy / np.maximum(smaller, 1e-6)).astype(np.float32)


def proposal_boxes(proposals: list[ViewProposal], views: list[patches.View]) -> list[tuple[str | None, np.ndarray]]:
    """Each view's P_B box in image pixels (float32 [4]) with the name its P_A gave, for the views
    that gave a box."""
    out = []
    for proposal, view in zip(proposals, views):
        if proposal.box is not None:
            box = patches.view_boxes_to_image(patches.normalised_box_to_view(proposal.box, view)[None], view)[0]
            out.append((proposal.foreground, box))
    return out


def rejected_boxes(
    proposals: list[ViewProposal], views: list[patches.View], pick: str, detections: np.ndarray
) -> tuple[np.ndarray, list[str]]:
    """The negatives of ``sam3_negatives: mined``: the P_B boxes (image pixels, float32 [M, 4]) of
    the views whose name was rejected (a candidate other than ``pick``), and those names; a box
    overlapping one of the pick's (its views' P_B boxes, the ``detections`` [N, 4]) by
    ``SAME_OBJECT_OVERLAP`` is left out (see the module docstring)."""
    named = proposal_boxes(proposals, views)
    picked = [box for name, box in named if name == pick] + list(np.asarray(detections, np.float32).reshape(-1, 4))
    rejected = [(name, box) for name, box in named if name is not None and name != pick]
    if not rejected:
        return np.zeros((0, 4), np.float32), []
    boxes = np.stack([box for _, box in rejected]).astype(np.float32)
    keep = np.ones(len(boxes), bool)
    if picked:
        keep = _overlap(boxes, np.stack(picked).astype(np.float32)).max(axis=1) < SAME_OBJECT_OVERLAP
    names = [name for (name, _), k in zip(rejected, keep) if k]
    return boxes[keep], list(dict.fromkeys(names))


def concept_requests(
    crops: list[np.ndarray], views: list[patches.View], positives: list[np.ndarray], negatives: np.ndarray, concept: str
) -> list[ConceptRequest]:
    """One ``ConceptRequest`` per view: the view's crop (uint8 [h_k, w_k, 3]), the concept, that
    view's positive boxes (``positives[k]``, view pixels, as step 7 gives SAM) and the image-pixel
    ``negatives`` [M, 4] that lie mostly in the view, in view pixels."""
    return [
        ConceptRequest(
            crop, concept, np.asarray(pos, np.float32).reshape(-1, 4), patches.image_boxes_to_view(negatives, view, 0.5)
        )
        for crop, view, pos in zip(crops, views, positives)
    ]
