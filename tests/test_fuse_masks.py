"""Eq 9-13: points, mask weighting, combination, reweighting and the final-mask choice."""

import numpy as np
import pytest
import torch

from int_engine.fuse import binarise, final_mask, reweight
from int_engine.masks import clip_points, masked_views, normalise_weights, rescale, union, view_similarities, weighted_sum


def test_eq13_picks_the_mask_closest_to_the_mean():
    a = torch.zeros(8, 8)
    a[:4] = 1
    b = torch.zeros(8, 8)
    b[:5] = 1
    c = torch.zeros(8, 8)
    c[:6] = 1
    d = torch.zeros(8, 8)
    d[:, :] = 1  # an outlier iteration
    # mean rows: 4x1.0, then 0.75, 0.5, 0.25... the closest in L1 is b or c
    best, mask = final_mask([a, b, c, d])
    dists = [float((m - torch.stack([a, b, c, d]).mean(0)).abs().sum()) for m in (a, b, c, d)]
    assert best == int(np.argmin(dists)) and torch.equal(mask, [a, b, c, d][best])
    assert best in (1, 2)


def test_eq13_ties_go_to_the_earliest_and_one_iteration_is_itself():
    m = torch.rand(5, 5)
    assert final_mask([m])[0] == 0
    assert final_mask([m, m.clone(), m.clone()])[0] == 0
    with pytest.raises(ValueError):
        final_mask([])


def test_eq12_reweighting():
    x = torch.full((4, 4, 3), 100.0)
    m = torch.zeros(4, 4)
    m[0, 0] = 1.0
    m[1, 1] = 0.5
    y = reweight(x, m, 0.3)
    assert y[0, 0, 0] == pytest.approx(100.0)  # kept where the mask is 1
    assert y[3, 3, 0] == pytest.approx(70.0)  # (1 - w) elsewhere
    assert y[1, 1, 0] == pytest.approx(0.3 * 50 + 70)  # linear in between


def test_eq11_softmax_weights_favour_the_most_similar_view():
    s = np.array([0.30, 0.25, -np.inf, 0.20])
    w = normalise_weights(s, "softmax", 0.01)
    assert w[2] == 0 and w.sum() == pytest.approx(1.0)
    assert w[0] > 0.99  # 5 CLIP logit points ahead at temperature 0.01
    mm = normalise_weights(s, "minmax", 0.01)
    assert mm.tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert normalise_weights(np.array([-np.inf, -np.inf]), "softmax", 0.01).tolist() == [0.0, 0.0]


def test_eq11_promac_weights_as_the_authors_code():
    # ProMaC's clip_similarity: softmax of the CLIP logits over views, min-max (+1e-9), / sum
    s = np.array([0.30, 0.28, -np.inf, 0.27, 0.29])
    w = normalise_weights(s, "promac", 0.01)
    soft = torch.softmax(torch.tensor([30.0, 28.0, 27.0, 29.0], dtype=torch.float64), 0)
    mm = (soft - soft.min() + 1e-9) / (soft.max() - soft.min() + 1e-9)
    want = mm / mm.sum()
    assert w[2] == 0 and w.sum() == pytest.approx(1.0)
    assert w[[0, 1, 3, 4]].tolist() == pytest.approx(want.tolist(), abs=1e-12)
    assert w[3] < 1e-8  # the least similar view drops out, as in ProMaC
    # one view with a mask gets all the weight; equal scores share it equally
    assert normalise_weights(np.array([-np.inf, 0.2, -np.inf]), "promac", 0.01).tolist() == [0.0, 1.0, 0.0]
    assert normalise_weights(np.array([0.2, 0.2]), "promac", 0.01).tolist() == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="promac"):
        normalise_weights(s, "mean", 0.01)


def test_eq11_weighted_sum_rescale_and_union():
    masks = torch.zeros(3, 4, 4)
    masks[0, :2] = 0.9
    masks[1, 2:] = 0.8
    masks[2, :, :2] = 0.7
    w = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    raw = weighted_sum(masks, w)
    assert raw[0, 3] == pytest.approx(0.45) and raw[0, 0] == pytest.approx(0.625) and raw[3, 3] == pytest.approx(0.2)
    m = rescale(raw)
    assert m.dtype == torch.float32 and m.max() == 1.0 and m.min() == 0.0
    assert m[0, 3] == pytest.approx((0.45 - 0.2) / (0.625 - 0.2))
    assert union(masks).tolist() == (masks > 0.5).any(0).float().tolist()
    assert union(torch.full((2, 3, 3), 0.4)).sum() == 0  # below SAM's threshold everywhere


def test_eq11_an_object_every_covering_view_segments_reaches_one():
    """SPEC step 9: every pixel lies in 4 of the 9 views, so the raw weighted sum stays near 4/9;
    the rescale brings an object that every view covering it segments to 1."""
    from int_engine.patches import paste, views

    h, w = 32, 48
    vs = views(h, w, ("whole", "halves_h", "halves_v", "quarters"))
    obj = torch.zeros(h, w)
    obj[8:24, 12:36] = 1.0  # centred: spans all four quarters
    pasted = torch.stack([paste(obj[v.y0 : v.y1, v.x0 : v.x1] * 0.95, v, h, w) for v in vs])
    weights = normalise_weights(np.full(len(vs), 0.3), "promac", 0.01)
    raw = weighted_sum(pasted, weights)
    assert raw.max() < 0.5  # the binarisation would erase the object without the rescale
    m = rescale(raw)
    assert m.max() == 1.0 and ((m >= 0.5) == (obj > 0)).all()


def test_eq11_rescale_keeps_empty_empty():
    assert rescale(torch.zeros(5, 5)).sum() == 0
    assert rescale(torch.full((5, 5), 0.3)).min() == 1.0  # constant: the object is everywhere


def test_clip_points_take_distinct_extreme_cells():
    sim = np.zeros((64, 64), np.float32)
    sim[8:16, 40:48] = 5.0  # hot spot
    sim[50:58, 2:10] = -5.0  # cold spot
    pts, labels = clip_points(sim, 3, 1, grid=8)
    assert labels.tolist() == [1, 1, 1, 0]
    assert len({tuple(p) for p in pts.tolist()}) == 4
    assert 40 <= pts[0, 0] <= 48 and 8 <= pts[0, 1] <= 16
    assert 2 <= pts[3, 0] <= 10 and 50 <= pts[3, 1] <= 58


def test_clip_points_on_a_map_smaller_than_the_grid():
    pts, labels = clip_points(np.arange(6, dtype=np.float32).reshape(2, 3), 3, 1, grid=16)
    assert len(pts) == 4 and (pts[:, 0] < 3).all() and (pts[:, 1] < 2).all()


def test_eq10_masks_the_view_and_skips_empty_masks():
    img = np.full((4, 4, 3), 200, np.uint8)
    full = np.ones((4, 4), np.float32)
    half = np.zeros((4, 4), np.float32)
    half[:2] = 1
    empty = np.zeros((4, 4), np.float32)
    todo, masked = masked_views([img, img, img], [full, half, empty])
    assert todo == [0, 1]
    assert (masked[0] == 200).all() and (masked[1][:2] == 200).all() and (masked[1][2:] == 0).all()
    s = view_similarities(3, todo, [0.3, 0.2])
    assert s.tolist() == [0.3, 0.2, -np.inf]


def test_binarise():
    assert binarise(torch.tensor([0.2, 0.5, 0.9]), 0.5).tolist() == [False, True, True]
