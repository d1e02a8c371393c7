"""bench/metrics.py: PySODMetrics computes the figures; these tests check how they are wired.

* The figures equal those of the hand-written implementation it replaced, on saved predictions
  (tests/bench/data/metrics_before_pysod.json, computed by that code before it was deleted).
* MAE, Dice and IoU equal values derived by hand on hand-made masks; the curves too.
* Per image and per dataset, the module's figures equal PySODMetrics' deprecated ``Fmeasure``
  class and its other evaluators run directly (FmeasureV2's handlers are a separate code path),
  to 1e-6. Where the prediction's size differs from the GT's, the reference gets it resized with
  cv2.resize(..., INTER_LINEAR) first, as its users' eval scripts do; ours resizes the same way.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from int_engine.bench.datasets import Pair
from int_engine.bench.metrics import PER_IMAGE_KEYS, SUMMARY_KEYS, DatasetMetrics, image_metrics
from int_engine.bench.report import dataset_metrics

ref = pytest.importorskip("py_sod_metrics", reason="py_sod_metrics is the reference implementation")

ATOL = 1e-6
BEFORE = Path(__file__).parent / "data" / "metrics_before_pysod.json"
BEFORE_PNGS = Path(__file__).parent / "data" / "metrics_before_pysod"
OLD_KEYS = ("MAE", "adpFm", "meanFm", "maxFm", "adpEm", "meanEm", "maxEm", "Sm", "wFm")  # Dice / IoU are new
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


def _dice_iou(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """Dice and IoU written out in numpy: min-max normalised prediction > 0.5 against GT > 128
    (0 where the denominator is 0)."""
    p = pred / 255
    if p.max() != p.min():
        p = (p - p.min()) / (p.max() - p.min())
    b, g = p > 0.5, gt > 128
    tp, fp, fn = int((b & g).sum()), int((b & ~g).sum()), int((~b & g).sum())
    return (2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0), (tp / (tp + fp + fn) if tp + fp + fn else 0.0)


def _reference(pairs):
    """Run PySODMetrics' evaluators over the pairs; returns them (per-image lists inside), plus
    per-image (Dice, IoU) computed in numpy under ``"dice_iou"``."""
    evaluators = dict(fm=ref.Fmeasure(), em=ref.Emeasure(), sm=ref.Smeasure(), wfm=ref.WeightedFmeasure(), mae=ref.MAE())
    dice_iou = []
    for pred, gt in pairs:
        if pred.shape != gt.shape:
            pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
        for e in evaluators.values():
            e.step(pred, gt)
        dice_iou.append(_dice_iou(pred, gt))
    return {**evaluators, "dice_iou": np.array(dice_iou)}


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
        "Dice": ev["dice_iou"][:, 0],
        "IoU": ev["dice_iou"][:, 1],
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
        "Dice": ev["dice_iou"][:, 0].mean(),
        "IoU": ev["dice_iou"][:, 1].mean(),
    }
    summary = ours.summary()
    assert tuple(summary) == SUMMARY_KEYS
    for key in SUMMARY_KEYS:
        assert abs(summary[key] - expected[key]) <= ATOL, (key, summary[key], expected[key])
    pr = ev["fm"].get_results()["pr"]
    curves = ours.curves()  # ascending thresholds: PySODMetrics' 255..0 curves flipped
    for key, want in (("fmeasure", fm["curve"]), ("precision", pr["p"]), ("recall", pr["r"]), ("emeasure", em["curve"])):
        np.testing.assert_allclose(curves[key], want[::-1], rtol=0, atol=ATOL, err_msg=key)
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
    with pytest.raises(ValueError, match="no images"):
        DatasetMetrics().curves()


# --- the figures of the replaced hand-written implementation -----------------------------------


def _before() -> tuple[dict, list[tuple[str, np.ndarray, np.ndarray]]]:
    fixture = json.loads(BEFORE.read_text(encoding="utf-8"))
    pairs = [
        (
            n,
            cv2.imread(str(BEFORE_PNGS / "pred" / f"{n}.png"), cv2.IMREAD_GRAYSCALE),
            cv2.imread(str(BEFORE_PNGS / "gt" / f"{n}.png"), cv2.IMREAD_GRAYSCALE),
        )
        for n in fixture["names"]
    ]
    assert all(p is not None and g is not None for _, p, g in pairs)
    return fixture, pairs


def test_figures_equal_the_hand_written_implementation_on_saved_predictions():
    """Per image and per dataset, PySODMetrics' figures equal the old module's (seen: <= 2.2e-16)."""
    fixture, pairs = _before()
    assert len(pairs) == 9 and set(fixture["summary"]) == set(OLD_KEYS)
    acc = DatasetMetrics()
    for name, pred, gt in pairs:
        m = acc.add(pred, gt)
        for key in OLD_KEYS:
            assert m[key] == pytest.approx(fixture["per_image"][name][key], abs=1e-12), (name, key)
    summary = acc.summary()
    for key in OLD_KEYS:
        assert summary[key] == pytest.approx(fixture["summary"][key], abs=1e-12), key
    # the fixture is not degenerate: a good prediction and an exact adaptive threshold are in it
    assert fixture["per_image"]["good-0"]["adpFm"] > 0.5 and fixture["per_image"]["narrow-1"]["adpFm"] == 1.0


def test_a_saved_run_folders_summary_is_unchanged(tmp_path):
    """The bench's own path (RUN/pred/*.png -> dataset_metrics) gives the old summary figures."""
    fixture, _ = _before()
    run = tmp_path / "run"
    shutil.copytree(BEFORE_PNGS / "pred", run / "pred")
    pairs = [Pair(n, BEFORE_PNGS / "gt" / f"{n}.png", BEFORE_PNGS / "gt" / f"{n}.png") for n in fixture["names"]]
    done = {n: {"name": n, "ok": True} for n in fixture["names"]}
    done["skipped"] = {"name": "skipped", "ok": False}  # a failed image is not scored
    scores = dataset_metrics(run, pairs + [Pair("skipped", run / "x.png", run / "x.png")], done)
    assert scores.scored == 9 and list(scores.per_image) == fixture["names"]
    for key in OLD_KEYS:
        assert scores.summary[key] == pytest.approx(fixture["summary"][key], abs=1e-12), key
        for name in fixture["names"]:
            assert scores.per_image[name][key] == pytest.approx(fixture["per_image"][name][key], abs=1e-12)
    assert 0 < scores.summary["IoU"] < scores.summary["Dice"] < 1


# --- hand-made masks, values derived by hand -----------------------------------------------------


def _square_case() -> tuple[np.ndarray, np.ndarray]:
    """4x4 GT with a 2x2 object; a 0/255 prediction hitting 3 of its pixels plus 2 outside it.

    TP = 3, FP = 2, FN = 1, TN = 10: MAE = 3/16, Dice = 6/9, IoU = 3/6, P = 3/5, R = 3/4.
    """
    gt = np.zeros((4, 4), np.uint8)
    gt[1:3, 1:3] = 255
    pred = np.zeros((4, 4), np.uint8)
    pred[1, 1] = pred[1, 2] = pred[2, 1] = 255  # TP
    pred[0, 3] = pred[3, 0] = 255  # FP
    return pred, gt


def test_mae_dice_iou_equal_hand_derived_values():
    pred, gt = _square_case()
    m = image_metrics(pred, gt)
    assert m["MAE"] == pytest.approx(3 / 16, abs=1e-15)
    assert m["Dice"] == pytest.approx(2 / 3, abs=1e-15) and m["IoU"] == pytest.approx(1 / 2, abs=1e-15)
    # soft codes {0, 51, 255} already span 0..255 (no stretch): 51 -> 0.2 is background at 0.5
    soft = pred.copy()
    soft[0, 0] = soft[3, 3] = 51
    m = image_metrics(soft, gt)
    assert m["MAE"] == pytest.approx((3 + 2 * 0.2) / 16, abs=1e-15) and m["Dice"] == pytest.approx(2 / 3, abs=1e-15)


def test_dice_thresholds_the_normalised_map_strictly_above_half():
    _, gt = _square_case()
    # codes {0, 1, 2} min-max stretch to {0, 0.5, 1}: 0.5 is not > 0.5
    pred = np.zeros((4, 4), np.uint8)
    pred[1, 1], pred[1, 2], pred[2, 1], pred[2, 2] = 2, 2, 1, 1
    m = image_metrics(pred, gt)
    assert m["Dice"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 2)) and m["IoU"] == pytest.approx(2 / 4)
    # a faint map (max 102, i.e. 0.4) is stretched to [0, 1] first, as PySODMetrics does for every metric
    faint = np.where(gt > 128, 102, 0).astype(np.uint8)
    assert image_metrics(faint, gt)["Dice"] == 1.0 and image_metrics(faint, gt)["MAE"] == 0.0
    # empty GT and empty prediction: 0 by PySODMetrics' zero-denominator rule (documented)
    empty = np.zeros((4, 4), np.uint8)
    m = image_metrics(empty, empty)
    assert m["Dice"] == 0.0 and m["IoU"] == 0.0 and m["MAE"] == 0.0


def test_dataset_dice_iou_are_means_over_images():
    pred, gt = _square_case()
    acc = DatasetMetrics()
    acc.add(pred, gt)  # Dice 2/3, IoU 1/2
    acc.add(gt, gt)  # Dice 1, IoU 1
    s = acc.summary()
    assert s["Dice"] == pytest.approx((2 / 3 + 1) / 2, abs=1e-15) and s["IoU"] == pytest.approx(3 / 4, abs=1e-15)
    assert s["MAE"] == pytest.approx(3 / 32, abs=1e-15)


def test_curves_are_ascending_with_hand_derived_values():
    pred, gt = _square_case()
    acc = DatasetMetrics()
    acc.add(pred, gt)
    c = acc.curves()
    assert set(c) == {"thresholds", "precision", "recall", "fmeasure", "emeasure"}
    assert all(v.shape == (256,) and v.dtype == np.float64 for v in c.values())
    np.testing.assert_array_equal(c["thresholds"], np.arange(256) / 255)
    # threshold 0: every pixel is foreground (P = 4/16, R = 1); above it the 0/255 map gives P 3/5, R 3/4
    assert c["precision"][0] == pytest.approx(4 / 16) and c["recall"][0] == 1.0
    np.testing.assert_allclose(c["precision"][1:], 3 / 5, rtol=0, atol=1e-15)
    np.testing.assert_allclose(c["recall"][1:], 3 / 4, rtol=0, atol=1e-15)
    f = 1.3 * (3 / 5) * (3 / 4) / (0.3 * (3 / 5) + 3 / 4)
    np.testing.assert_allclose(c["fmeasure"][1:], f, rtol=0, atol=1e-15)
    assert acc.summary()["maxFm"] == pytest.approx(f, abs=1e-15)
