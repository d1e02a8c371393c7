import numpy as np
import pytest
import torch

from int_engine.patches import (
    crop,
    image_boxes_to_view,
    normalised_box_to_view,
    paste,
    view_boxes_to_image,
    views,
)

ALL = ("whole", "halves_h", "halves_v", "quarters")


@pytest.mark.parametrize("h,w", [(256, 320), (7, 5), (2, 2), (1001, 333)])
def test_nine_views_cover_the_image_as_the_paper_cuts_it(h, w):
    vs = views(h, w, ALL)
    assert [v.name for v in vs] == [
        "whole",
        "top",
        "bottom",
        "left",
        "right",
        "top_left",
        "top_right",
        "bottom_left",
        "bottom_right",
    ]
    cover = np.zeros((h, w), int)
    for v in vs[5:]:
        cover[v.y0 : v.y1, v.x0 : v.x1] += 1
    assert (cover == 1).all()  # quarters tile the image exactly
    for pair in (vs[1:3], vs[3:5]):
        c = np.zeros((h, w), int)
        for v in pair:
            c[v.y0 : v.y1, v.x0 : v.x1] += 1
        assert (c == 1).all()
    assert all(v.width > 0 and v.height > 0 for v in vs)


def test_split_selection_and_tiny_images():
    assert [v.name for v in views(10, 10, ("whole",))] == ["whole"]
    assert len(views(10, 10, ("whole", "quarters"))) == 5
    with pytest.raises(ValueError, match="2x2"):
        views(1, 5, ALL)


def test_box_round_trip_view_image_view():
    rng = np.random.default_rng(0)
    for v in views(200, 300, ALL):
        x0 = rng.uniform(0, v.width / 2, 5)
        y0 = rng.uniform(0, v.height / 2, 5)
        boxes = np.stack([x0, y0, x0 + rng.uniform(1, v.width / 2, 5), y0 + rng.uniform(1, v.height / 2, 5)], 1).astype(
            np.float32
        )
        back = image_boxes_to_view(view_boxes_to_image(boxes, v), v, min_overlap=0.99)
        np.testing.assert_allclose(back, boxes, atol=1e-4)


def test_normalised_box_maps_into_the_view_then_image():
    v = views(100, 200, ("quarters",))[3]  # bottom_right: x 100..200, y 50..100
    # normalised to the view padded to a 100 x 100 square (LLaVA's frame): the view is rows 25..75
    b = normalised_box_to_view((0.5, 0.3, 1.0, 0.6), v)
    np.testing.assert_allclose(b, [50, 5, 100, 35])
    np.testing.assert_allclose(view_boxes_to_image(b, v), [[150, 55, 200, 85]])
    np.testing.assert_allclose(normalised_box_to_view((0.0, 0.0, 1.0, 1.0), v), [0, 0, 100, 50])  # clipped to the view


def test_boxes_mostly_outside_a_view_are_not_given_to_it():
    v = views(100, 100, ("quarters",))[0]  # top_left 0..50
    boxes = np.array([[10, 10, 40, 40], [40, 40, 90, 90], [45, 10, 60, 20]], np.float32)
    got = image_boxes_to_view(boxes, v, min_overlap=0.5)
    # box 2 has 4% of its area inside; box 3 has 1/3 inside
    np.testing.assert_allclose(got, [[10, 10, 40, 40]])


def test_crop_and_paste_are_inverse():
    img = np.arange(12 * 10).reshape(12, 10)
    for v in views(12, 10, ALL):
        m = torch.from_numpy(crop(img, v).astype(np.float32))
        full = paste(m, v, 12, 10)
        assert torch.equal(full[v.y0 : v.y1, v.x0 : v.x1], m)
        assert full.sum() == m.sum()
