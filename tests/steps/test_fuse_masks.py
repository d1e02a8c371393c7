"""Eq 9-13: points, mask weighting, combination, reweighting and the final-mask choice."""

import numpy as np
import pytest
import torch

from int_engine.fuse import binarise, final_mask, reweight
from int_engine.masks import (
    clip_points,
    masked_views,
    normalise_weights,
    rescale,
    segmentation,
    selected_views,
    union,
    view_similarities,
    weighted_sum,
)
from int_engine.patches import View, paste, views


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
    """X_{i+1} = w·(X ⊙ M_i) + (1 − w)·X_i with X the original image (the default), or X_i ⊙ M_i."""
    original = torch.full((4, 4, 3), 100.0)
    current = torch.full((4, 4, 3), 70.0)  # X_2 after one iteration that kept nothing here
    m = torch.zeros(4, 4)
    m[0, 0] = 1.0
    m[1, 1] = 0.5
    y = reweight(original, m, 0.3)  # iteration 1: X_1 = X
    assert y[0, 0, 0] == pytest.approx(100.0)  # kept where the mask is 1
    assert y[3, 3, 0] == pytest.approx(70.0)  # (1 - w) elsewhere
    assert y[1, 1, 0] == pytest.approx(0.3 * 50 + 70)  # linear in between
    toward_x = reweight(current, m, 0.3, original)
    toward_xi = reweight(current, m, 0.3)
    assert toward_x[0, 0, 0] == pytest.approx(0.3 * 100 + 0.7 * 70)  # the original's pixels come back
    assert toward_xi[0, 0, 0] == pytest.approx(0.3 * 70 + 0.7 * 70)
    assert toward_x[3, 3, 0] == toward_xi[3, 3, 0] == pytest.approx(49.0)


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
    from int_engine.patches import views

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


def _authors_points(sm: np.ndarray, h: int, w: int, t: float = 0.9) -> tuple[list, list]:
    """The authors' ``similarity_map_to_points`` (ProMaC clip/clip.py, down_sample 0.5) restated
    for a square token map: resample to twice the grid bilinearly, min-max, n = cells >= t capped
    at half; the n highest are positives, the n lowest negatives, at cell centres, as ints."""
    side = sm.shape[0]
    x = torch.nn.functional.interpolate(torch.from_numpy(sm)[None, None], (2 * side, 2 * side), mode="bilinear")[0, 0]
    x = x.reshape(-1)
    x = (x - x.min()) / (x.max() - x.min())
    rank = x.sort(dim=0, stable=True)[1]
    n = min(int((x >= t).sum()), x.numel() // 2)
    sh, sw = h / (2 * side), w / (2 * side)
    cell = lambda i: [int(min((int(i) % (2 * side) + 0.5) * sw, w - 1)), int(min((int(i) // (2 * side) + 0.5) * sh, h - 1))]  # noqa: E731
    return [cell(i) for i in rank[-n:]] + [cell(i) for i in rank[:n]], [1] * n + [0] * n


def test_points_follow_the_authors_rule():
    """SPEC step 8: on a 14 x 14 token map, the points are the authors' (the same cells; the order
    within each label does not matter to SAM)."""
    rng = np.random.default_rng(0)
    for h, w in [(96, 128), (64, 64), (50, 200)]:
        sm = rng.random((14, 14)).astype(np.float32)
        sm[3:6, 8:11] += 2.0  # an object
        pts, labels = clip_points(sm, h, w, grid=28, threshold=0.9)
        want, want_labels = _authors_points(sm, h, w)
        assert labels.tolist() == want_labels and 0 < labels.sum() < 28 * 28 // 2
        pos, neg = labels == 1, labels == 0
        assert sorted(map(tuple, pts[pos].tolist())) == sorted(tuple(map(float, p)) for p, lab in zip(want, want_labels) if lab)
        assert sorted(map(tuple, pts[neg].tolist())) == sorted(
            tuple(map(float, p)) for p, lab in zip(want, want_labels) if not lab
        )
        assert (pts[:, 0] <= w - 1).all() and (pts[:, 1] <= h - 1).all()


def test_points_threshold_counts_the_hot_cells_and_caps_at_half():
    hot = np.zeros((14, 14), np.float32)
    hot[0, 0] = 1.0  # one hot token: ~4 cells of the 28 x 28 grid reach 0.9 after resampling
    _, labels = clip_points(hot, 56, 56, grid=28, threshold=0.9)
    assert 1 <= labels.sum() <= 4 and (labels == 0).sum() == labels.sum()
    _, labels = clip_points(np.ones((14, 14), np.float32), 56, 56, 28, 0.9)
    assert len(labels) == 0  # a flat map gives no point
    ramp = np.tile(np.linspace(0, 1, 14, dtype=np.float32), (14, 1))
    _, labels = clip_points(ramp, 56, 56, grid=28, threshold=0.0)
    assert labels.sum() == 28 * 28 // 2  # every cell >= 0: capped at half the cells


def test_fixed_points_take_distinct_extreme_cells():
    sim = np.zeros((64, 64), np.float32)
    sim[8:16, 40:48] = 5.0  # hot spot
    sim[50:58, 2:10] = -5.0  # cold spot
    pts, labels = clip_points(sim, 64, 64, grid=8, threshold=0.9, fixed=(3, 1))
    assert labels.tolist() == [1, 1, 1, 0]
    assert len({tuple(p) for p in pts.tolist()}) == 4
    assert 40 <= pts[0, 0] <= 48 and 8 <= pts[0, 1] <= 16
    assert 2 <= pts[3, 0] <= 10 and 50 <= pts[3, 1] <= 58


def test_eq10_pastes_the_masked_view_on_a_black_canvas():
    """SPEC step 9 (the authors' ``patch_match_list``): CLIP scores the view's masked pixels at their
    place on a black canvas of the image's size; ``crop`` scores the masked view itself."""
    img = np.full((4, 4, 3), 200, np.uint8)
    full = np.ones((4, 4), np.float32)
    half = np.zeros((4, 4), np.float32)
    half[:2] = 1
    empty = np.zeros((4, 4), np.float32)
    vs = [View("a", 0, 0, 4, 4), View("b", 4, 2, 8, 6), View("c", 0, 4, 4, 8)]
    todo, masked = masked_views([img, img, img], [full, half, empty], vs, None)
    assert todo == [0, 1]
    assert (masked[0] == 200).all() and (masked[1][:2] == 200).all() and (masked[1][2:] == 0).all()
    todo, canvases = masked_views([img, img, img], [full, half, empty], vs, (8, 8))
    assert todo == [0, 1] and all(c.shape == (8, 8, 3) for c in canvases)
    assert (canvases[1][2:4, 4:8] == 200).all() and canvases[1].sum() == 200 * 3 * 8
    s = view_similarities(3, todo, [0.3, 0.2])
    assert s.tolist() == [0.3, 0.2, -np.inf]


def test_the_segmentation_unites_the_views_clip_selects_and_the_whole_view():
    """SPEC step 9 (the authors' ``clip_similarity``): softmax of the logits, min-max, > 0.7 plus the
    whole view; the binary masks of those views united."""
    vs = views(8, 8, ("whole", "halves_h", "quarters"))
    names = [v.name for v in vs]
    sims = np.full(len(vs), -np.inf)
    sims[names.index("whole")] = 0.20  # the whole view's mask scores lowest, and is kept anyway
    sims[names.index("top")] = 0.30
    sims[names.index("top_left")] = 0.2995  # within 0.36 logit points of the best: > 0.7 after min-max
    sims[names.index("bottom_right")] = 0.25
    chosen = [names[k] for k in selected_views(sims, vs, 0.01, 0.7)]
    assert chosen == ["whole", "top", "top_left"]
    soft = torch.softmax(torch.tensor([20.0, 30.0, 29.95, 25.0], dtype=torch.float64), 0)
    scaled = (soft - soft.min() + 1e-9) / (soft.max() - soft.min() + 1e-9)
    assert (scaled > 0.7).tolist() == [False, True, True, False]
    probs = torch.zeros(len(vs), 8, 8)
    probs[names.index("top"), 0, 0] = 0.9
    probs[names.index("top_left"), 1, 1] = 0.6
    probs[names.index("bottom_right"), 7, 7] = 0.99  # not selected: stays out
    probs[names.index("whole"), 5, 5] = 0.4  # below SAM's threshold
    seg = segmentation(probs, selected_views(sims, vs, 0.01, 0.7))
    assert seg.dtype == torch.bool and seg.nonzero().tolist() == [[0, 0], [1, 1]]
    assert selected_views(np.full(len(vs), -np.inf), vs, 0.01, 0.7) == [0]  # no mask: the whole view only


def test_binarise():
    assert binarise(torch.tensor([0.2, 0.5, 0.9]), 0.5).tolist() == [False, True, True]
