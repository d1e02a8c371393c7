"""bench/metrics.py against PySODMetrics 1.6.2 (the reference), per image and per dataset, to 1e-6.

Both paths see the same uint8 pairs. Where the prediction's size differs from the GT's, the
reference gets it resized with cv2.resize(..., INTER_LINEAR) first, as its users' eval
scripts do; ours resizes internally the same way.
"""

from __future__ import annotations

import json
import warnings

import cv2
import numpy as np
import pytest

from int_engine.bench.metrics import PER_IMAGE_KEYS, SUMMARY_KEYS, DatasetMetrics, image_metrics

ref = pytest.importorskip("py_sod_metrics", reason="py_sod_metrics is the reference implementation")

ATOL = 1e-6
N_PAIRS = 240


def _gt(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    """uint8 [h, w] GT of a given kind; values other than 0/255 exercise the > 128 rule."""
    gt = np.zeros((h, w), np.uint8)
    if kind == "empty":
        gt[:] = rng.integers(0, 129)  # all <= 128: still empty after binarisation
    elif kind == "full":
        gt[:] = rng.integers(129, 256)
    elif kind == "tiny":  # 1..6 px, kept off the last two rows/cols (see test_sm_nan_quirk)
        y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
        gt[y : y + rng.integers(1, 3), x : x + rng.integers(1, 4)] = 255
    elif kind == "blob":
        axes = (int(rng.integers(2, w // 2 + 2)), int(rng.integers(2, h // 2 + 2)))
        centre = (int(rng.integers(w // 4, 3 * w // 4 + 1)), int(rng.integers(h // 4, 3 * h // 4 + 1)))
        cv2.ellipse(gt, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    elif kind == "multi":
        for _ in range(int(rng.integers(2, 6))):
            c = (int(rng.integers(0, w - 2)), int(rng.integers(0, h - 2)))
            cv2.circle(gt, c, int(rng.integers(1, max(2, min(h, w) // 5))), int(rng.integers(129, 256)), -1)
    elif kind == "line":
        cv2.line(gt, (0, int(rng.integers(0, h - 2))), (w - 1, int(rng.integers(0, h - 2))), 255, 1)
    elif kind == "near_full":
        gt[:] = 255
        gt[rng.integers(0, h, 3), rng.integers(0, w, 3)] = 0
    return gt


def _pred(rng: np.random.Generator, kind: str, gt: np.ndarray) -> np.ndarray:
    """uint8 prediction of a given kind for ``gt`` (same size)."""
    h, w = gt.shape
    if kind == "noise":
        return rng.integers(0, 256, (h, w)).astype(np.uint8)
    if kind == "smooth":
        p = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0), float(rng.uniform(1, 6)))
        return cv2.normalize(p, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if kind == "good":  # blurred GT + noise: a plausible soft mask
        p = cv2.GaussianBlur((gt > 128).astype(np.float32) * 255, (0, 0), 2) + rng.normal(0, 20, (h, w))
        return np.clip(p, 0, 255).astype(np.uint8)
    if kind == "zeros":
        return np.zeros((h, w), np.uint8)
    if kind == "full":
        return np.full((h, w), 255, np.uint8)
    if kind == "const":  # constant, not 0/255: stays v/255 (no min-max)
        return np.full((h, w), rng.integers(1, 255), np.uint8)
    if kind == "binary":
        return (rng.random((h, w)) < rng.uniform(0.05, 0.6)).astype(np.uint8) * 255
    if kind == "exact":
        return np.where(gt > 128, 255, 0).astype(np.uint8)
    if kind == "narrow":  # few codes in a narrow band: min-max stretches them
        return rng.integers(100, 104, (h, w)).astype(np.uint8)
    if kind == "inverted":
        return 255 - np.where(gt > 128, 230, 20).astype(np.uint8)
    raise AssertionError(kind)


def _pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """N_PAIRS seeded pairs cycling GT x prediction kinds; every 7th prediction at another size."""
    rng = np.random.default_rng(20240917)
    gt_kinds = ["empty", "full", "tiny", "blob", "multi", "line", "near_full", "blob"]
    pred_kinds = ["noise", "smooth", "good", "zeros", "full", "const", "binary", "exact", "narrow", "inverted", "smooth"]
    pairs = []
    for i in range(N_PAIRS):
        h, w = (int(v) for v in rng.integers(6, 130, 2))
        gt = _gt(rng, gt_kinds[i % len(gt_kinds)], h, w)
        pred = _pred(rng, pred_kinds[i % len(pred_kinds)], gt)
        if i % 7 == 3:
            ph, pw = (int(v) for v in rng.integers(5, 160, 2))
            pred = cv2.resize(pred, (pw, ph), interpolation=cv2.INTER_NEAREST)
        pairs.append((pred, gt))
    # Adaptive threshold exactly on a pixel value: codes {0, 51, 255} x {82, 10, 8} -> 2*mean == 0.2.
    pred = np.array([0] * 82 + [51] * 10 + [255] * 8, np.uint8).reshape(10, 10)
    gt = np.zeros((10, 10), np.uint8)
    gt[5:9, 2:7] = 255
    pairs.append((pred, gt))
    return pairs


def _reference(pairs):
    """Run PySODMetrics' evaluators over the pairs; returns them (per-image lists inside)."""
    evaluators = dict(
        fm=ref.Fmeasure(), em=ref.Emeasure(), sm=ref.Smeasure(), wfm=ref.WeightedFmeasure(), mae=ref.MAE()
    )
    for pred, gt in pairs:
        if pred.shape != gt.shape:
            pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
        for e in evaluators.values():
            e.step(pred, gt)
    return evaluators


@pytest.fixture(scope="module")
def both():
    pairs = _pairs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Fmeasure's deprecation notice
        evaluators = _reference(pairs)
    ours = DatasetMetrics()
    per_image = [ours.add(pred, gt) for pred, gt in pairs]
    return pairs, evaluators, ours, per_image


def test_per_image_values_match_reference(both):
    pairs, ev, _, per_image = both
    assert len(pairs) >= 200
    assert not np.isnan(ev["sm"].sms).any(), "the generator must avoid the NaN quirk here"
    expected = {
        "MAE": ev["mae"].maes,
        "adpFm": ev["fm"].adaptive_fms,
        "adpEm": ev["em"].adaptive_ems,
        "Sm": ev["sm"].sms,
        "wFm": ev["wfm"].weighted_fms,
        "fm_curve": ev["fm"].changeable_fms,
        "precision": ev["fm"].precisions,
        "recall": ev["fm"].recalls,
        "em_curve": ev["em"].changeable_ems,
    }
    for key, values in expected.items():
        got = np.array([m[key] for m in per_image], np.float64)
        np.testing.assert_allclose(got, np.array(values, np.float64), rtol=0, atol=ATOL, err_msg=key)


def test_dataset_summary_matches_reference(both):
    _, ev, ours, _ = both
    fm, em = ev["fm"].get_results()["fm"], ev["em"].get_results()["em"]
    expected = {
        "MAE": ev["mae"].get_results()["mae"],
        "adpFm": fm["adp"],
        "meanFm": fm["curve"].mean(),
        "maxFm": fm["curve"].max(),
        "adpEm": em["adp"],
        "meanEm": em["curve"].mean(),
        "maxEm": em["curve"].max(),
        "Sm": ev["sm"].get_results()["sm"],
        "wFm": ev["wfm"].get_results()["wfm"],
    }
    summary = ours.summary()
    assert tuple(summary) == SUMMARY_KEYS
    for key in SUMMARY_KEYS:
        assert abs(summary[key] - expected[key]) <= ATOL, (key, summary[key], expected[key])
    np.testing.assert_allclose(ours.curves()["fm_curve"], fm["curve"], rtol=0, atol=ATOL)
    # Dataset maxFm is the max of the mean curve, strictly below the mean of per-image maxima here.
    assert summary["maxFm"] < np.mean([m["maxFm"] for m in both[3]]) - 1e-3


def test_per_image_scalars_are_plain_floats(both):
    m = both[3][5]
    assert all(type(m[k]) is float for k in PER_IMAGE_KEYS)
    assert json.loads(json.dumps({k: m[k] for k in PER_IMAGE_KEYS}))["Sm"] == m["Sm"]


def test_edge_cases_have_reference_values():
    gt = np.zeros((9, 12), np.uint8)
    perfect = image_metrics(gt, gt)  # empty GT, all-zero prediction
    assert perfect["MAE"] == 0 and perfect["Sm"] == 1 and perfect["wFm"] == 0 and perfect["adpFm"] == 0
    full = np.full((9, 12), 255, np.uint8)
    m = image_metrics(full, full)
    assert m["MAE"] == 0 and m["Sm"] == 1 and m["maxFm"] == pytest.approx(1)


def test_sm_nan_quirk_matches_reference():
    """GT whose centroid rounds to the last row leaves an empty quadrant: NaN in both."""
    gt = np.zeros((20, 30), np.uint8)
    gt[19, 29] = 255
    pred = np.random.default_rng(0).integers(0, 256, (20, 30)).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = ref.Smeasure()
        reference.step(pred, gt)
    assert np.isnan(reference.sms[0]) and np.isnan(image_metrics(pred, gt)["Sm"])


def test_size_mismatch_resizes_prediction_bilinearly():
    rng = np.random.default_rng(1)
    gt = np.zeros((40, 60), np.uint8)
    gt[10:30, 15:45] = 255
    small = rng.integers(0, 256, (17, 23)).astype(np.uint8)
    resized = cv2.resize(small, (60, 40), interpolation=cv2.INTER_LINEAR)
    got, want = image_metrics(small, gt), image_metrics(resized, gt)
    assert all(got[k] == want[k] for k in SUMMARY_KEYS)
    nearest = cv2.resize(small, (60, 40), interpolation=cv2.INTER_NEAREST)
    assert image_metrics(nearest, gt)["MAE"] != got["MAE"]


@pytest.mark.parametrize(
    "pred, gt, error, text",
    [
        (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8), ValueError, "prediction must be a 2-D"),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 1), np.uint8), ValueError, "ground truth must be a 2-D"),
        (np.zeros((4, 4), np.float32), np.zeros((4, 4), np.uint8), TypeError, "prediction must be uint8"),
        (np.zeros((0, 4), np.uint8), np.zeros((4, 4), np.uint8), ValueError, "prediction is empty"),
    ],
)
def test_bad_inputs_raise(pred, gt, error, text):
    with pytest.raises(error, match=text):
        image_metrics(pred, gt)


def test_summary_without_images_raises():
    with pytest.raises(ValueError, match="no images"):
        DatasetMetrics().summary()
