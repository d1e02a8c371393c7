"""Salient/camouflaged-object and segmentation metrics, computed by PySODMetrics (``py_sod_metrics``).

This module only feeds PySODMetrics' own evaluators and names their figures; it computes no
metric itself, so a bench figure is the figure a paper's PySODMetrics eval script prints.

Evaluators (PySODMetrics 1.6.2):
  * ``MAE``, ``Smeasure`` (alpha = 0.5), ``Emeasure`` (adaptive + 256-threshold curve),
    ``WeightedFmeasure`` (beta = 1);
  * ``FmeasureV2`` with ``FmeasureHandler`` (beta^2 = 0.3; adaptive + curve), ``PrecisionHandler``
    and ``RecallHandler`` (curves, for the PR curve), and ``DICEHandler`` / ``IOUHandler`` in binary
    mode.

Every evaluator sees the same input through PySODMetrics' ``prepare_data``: the uint8 prediction
becomes ``p / 255`` min-max scaled to [0, 1] (a constant map stays ``v / 255``), the GT becomes
``gt > 128``.

Dice and IoU are what polyp and skin-lesion papers report as mDice / mIoU: per image, the
(normalised) prediction binarised at 0.5 (``> 0.5``, PySODMetrics' binary mode), Dice =
2TP / (2TP + FP + FN) and IoU = TP / (TP + FP + FN), then the mean over images. An image whose
GT and binarised prediction are both empty scores 0 (PySODMetrics' zero-denominator rule).

Dataset figures are PySODMetrics' ``get_results()``: scalars are means over images; the F/E
curves (256 thresholds) are averaged over images first, and ``maxFm`` / ``meanFm`` / ``maxEm`` /
``meanEm`` are the max / mean of that dataset curve (so the dataset ``maxFm`` is not the mean of
per-image maxima).

Known PySODMetrics quirk, kept: S-measure is NaN when the GT centroid rounds to the last row or
column (a quadrant is empty), as in the original MATLAB code.
"""

from __future__ import annotations

import cv2
import numpy as np
import py_sod_metrics as sod

FM_BETA2 = 0.3  # F-measure beta^2 (PySODMetrics calls it ``beta``)
# What a bench run reports (summary.json), in this order.
SUMMARY_KEYS = ("MAE", "adpFm", "meanFm", "maxFm", "adpEm", "meanEm", "maxEm", "Sm", "wFm", "Dice", "IoU")
# The per-image floats of ``image_metrics`` (JSON-safe; the rest of its dict are numpy curves).
PER_IMAGE_KEYS = SUMMARY_KEYS
N_THRESHOLDS = 256


def check_inputs(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a prediction/GT pair and bring the prediction to the GT size.

    pred, gt: uint8 [H, W] grayscale. If the sizes differ the prediction is resized with
    ``cv2.INTER_LINEAR`` (what PySODMetrics users' eval scripts do; PySODMetrics itself refuses
    a size mismatch); the bench writes predictions at GT size, so this is only a safety net.
    Returns C-contiguous (pred uint8 [H, W], gt uint8 [H, W]).
    """
    for role, a in (("prediction", pred), ("ground truth", gt)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"bench/metrics.py: {role} must be a numpy array, got {type(a).__name__}")
        if a.ndim != 2:
            raise ValueError(f"bench/metrics.py: {role} must be a 2-D grayscale map [H, W], got shape {a.shape}")
        if a.dtype != np.uint8:
            raise TypeError(f"bench/metrics.py: {role} must be uint8 (0..255), got {a.dtype}")
        if a.size == 0:
            raise ValueError(f"bench/metrics.py: {role} is empty, shape {a.shape}")
    if pred.shape != gt.shape:
        pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(pred), np.ascontiguousarray(gt)


class DatasetMetrics:
    """PySODMetrics' evaluators over a dataset; ``add`` one image at a time, then ``summary``.

    Keeps what PySODMetrics keeps: per-image scalars and 256-point curves (a few KiB per image).
    """

    def __init__(self) -> None:
        self.count = 0
        self._mae = sod.MAE()
        self._sm = sod.Smeasure()
        self._em = sod.Emeasure()
        self._wfm = sod.WeightedFmeasure()
        # FmeasureV2 rather than the deprecated Fmeasure (same figures): one pass over the
        # thresholds serves F-measure, precision and recall, and its binary mode gives Dice / IoU.
        # The handlers are kept here to read each image's entries back after a step.
        self._handlers = {
            "fm": sod.FmeasureHandler(with_dynamic=True, with_adaptive=True, beta=FM_BETA2),
            "precision": sod.PrecisionHandler(with_dynamic=True, with_adaptive=False),
            "recall": sod.RecallHandler(with_dynamic=True, with_adaptive=False),
            "dice": sod.DICEHandler(with_dynamic=False, with_adaptive=False, with_binary=True, sample_based=True),
            "iou": sod.IOUHandler(with_dynamic=False, with_adaptive=False, with_binary=True, sample_based=True),
        }
        self._fm = sod.FmeasureV2(self._handlers)

    def add(self, pred_u8: np.ndarray, gt_u8: np.ndarray) -> dict:
        """Score one image and fold it into the dataset; returns its per-image dict.

        pred_u8: uint8 [h, w] soft prediction (resized to the GT size if it differs).
        gt_u8: uint8 [H, W] ground truth (foreground > 128).
        Returns the floats ``PER_IMAGE_KEYS`` (``meanFm, maxFm, meanEm, maxEm`` of this image's
        own curves) and the curves ``fm_curve, em_curve, precision, recall`` (float64 [256],
        PySODMetrics' order: index i counts normalised 8-bit values >= 255 - i).
        """
        pred, gt = check_inputs(pred_u8, gt_u8)
        for evaluator in (self._mae, self._sm, self._em, self._wfm, self._fm):
            evaluator.step(pred, gt)
        self.count += 1
        h = self._handlers
        fm_curve = np.asarray(h["fm"].dynamic_results[-1], np.float64)
        em_curve = np.asarray(self._em.changeable_ems[-1], np.float64)
        return {
            "MAE": float(self._mae.maes[-1]),
            "adpFm": float(h["fm"].adaptive_results[-1]),
            "meanFm": float(fm_curve.mean()),
            "maxFm": float(fm_curve.max()),
            "adpEm": float(self._em.adaptive_ems[-1]),
            "meanEm": float(em_curve.mean()),
            "maxEm": float(em_curve.max()),
            "Sm": float(self._sm.sms[-1]),
            "wFm": float(self._wfm.weighted_fms[-1]),
            "Dice": float(h["dice"].binary_results[-1]),
            "IoU": float(h["iou"].binary_results[-1]),
            "fm_curve": fm_curve,
            "em_curve": em_curve,
            "precision": np.asarray(h["precision"].dynamic_results[-1], np.float64),
            "recall": np.asarray(h["recall"].dynamic_results[-1], np.float64),
        }

    def _results(self) -> tuple[dict, dict]:
        if self.count == 0:
            raise ValueError("bench/metrics.py: DatasetMetrics has no images yet")
        return self._fm.get_results(), self._em.get_results()["em"]

    def curves(self) -> dict[str, np.ndarray]:
        """Dataset-mean curves over 256 thresholds, ascending.

        ``thresholds`` float64 [256]: k / 255 for k = 0..255; a pixel counts as foreground at
        threshold k / 255 when its normalised prediction, re-quantised to 8 bits as PySODMetrics
        does (``(p * 255).astype(uint8)``), is >= k. ``precision``, ``recall``, ``fmeasure``
        (beta^2 = 0.3), ``emeasure``: float64 [256], each the mean over images at that threshold
        (PySODMetrics' ``get_results`` curves, flipped from its 255..0 order).
        """
        fm, em = self._results()
        return {
            "thresholds": np.arange(N_THRESHOLDS, dtype=np.float64) / 255,
            "precision": fm["precision"]["dynamic"][::-1].copy(),
            "recall": fm["recall"]["dynamic"][::-1].copy(),
            "fmeasure": fm["fm"]["dynamic"][::-1].copy(),
            "emeasure": np.asarray(em["curve"], np.float64)[::-1].copy(),
        }

    def summary(self) -> dict[str, float]:
        """``SUMMARY_KEYS`` over the images added so far (PySODMetrics' ``get_results``)."""
        fm, em = self._results()
        fm_curve, em_curve = fm["fm"]["dynamic"], em["curve"]
        out = {
            "MAE": self._mae.get_results()["mae"],
            "adpFm": fm["fm"]["adaptive"],
            "meanFm": fm_curve.mean(),
            "maxFm": fm_curve.max(),
            "adpEm": em["adp"],
            "meanEm": em_curve.mean(),
            "maxEm": em_curve.max(),
            "Sm": self._sm.get_results()["sm"],
            "wFm": self._wfm.get_results()["wfm"],
            "Dice": fm["dice"]["binary"],
            "IoU": fm["iou"]["binary"],
        }
        return {k: float(out[k]) for k in SUMMARY_KEYS}


def image_metrics(pred_u8: np.ndarray, gt_u8: np.ndarray) -> dict:
    """Every metric of one image: ``DatasetMetrics.add`` on a fresh accumulator (see there)."""
    return DatasetMetrics().add(pred_u8, gt_u8)
