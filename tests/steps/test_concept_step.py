"""concept.py: the requests a concept segmenter (SAM 3) gets, and which boxes are negatives."""

import numpy as np

from int_engine import concept, patches
from int_engine.prompts import ViewProposal


def proposal(box, name):
    return ViewProposal(box, name, "bark", "", "")


def square_box(view: patches.View, x0, y0, x1, y1):
    """Image-pixel box -> the VLM's frame for ``view`` (normalised to the view padded to a square)."""
    side, top, left = patches.square_frame(view.height, view.width)
    return ((x0 - view.x0 + left) / side, (y0 - view.y0 + top) / side, (x1 - view.x0 + left) / side, (y1 - view.y0 + top) / side)


VIEWS = patches.views(100, 200, ("whole", "halves_v"))  # whole, left, right


def test_rejected_names_boxes_are_negatives_and_the_picks_are_not():
    whole, left, right = VIEWS
    proposals = [
        proposal(square_box(whole, 20, 30, 60, 70), "frog"),
        proposal(square_box(left, 22, 28, 58, 72), "frog"),
        proposal(square_box(right, 130, 10, 170, 40), "leaf"),
    ]
    boxes, names = concept.rejected_boxes(proposals, VIEWS, "frog", np.zeros((0, 4)))
    assert names == ["leaf"]
    np.testing.assert_allclose(boxes, [[130, 10, 170, 40]], atol=1e-3)
    requests = concept.concept_requests(
        [np.zeros((v.height, v.width, 3), np.uint8) for v in VIEWS], VIEWS, [np.zeros((0, 4))] * 3, boxes, "frog"
    )
    assert [len(r.negatives) for r in requests] == [1, 0, 1]  # the left half does not hold the leaf
    np.testing.assert_allclose(requests[2].negatives, [[30, 10, 70, 40]], atol=1e-3)  # in the right view's pixels
    assert all(r.text == "frog" for r in requests)


def test_a_rejected_name_on_the_picks_box_or_detection_is_dropped():
    whole, left, right = VIEWS
    on_the_frog = [proposal(square_box(whole, 20, 30, 60, 70), "snake"), proposal(square_box(left, 21, 31, 59, 69), "frog")]
    boxes, names = concept.rejected_boxes(on_the_frog, VIEWS[:2], "frog", np.zeros((0, 4)))
    assert len(boxes) == 0 and names == []
    # no view named the pick, but the detector boxed it there
    alone = [proposal(square_box(whole, 20, 30, 60, 70), "snake")]
    assert len(concept.rejected_boxes(alone, VIEWS[:1], "frog", np.zeros((0, 4)))[0]) == 1
    assert len(concept.rejected_boxes(alone, VIEWS[:1], "frog", np.array([[25, 35, 55, 65]]))[0]) == 0
