"""Salient/camouflaged-object metrics, numerically as PySODMetrics 1.6.2 computes them.

MAE, F-measure (adaptive, mean, max; beta^2 = 0.3), E-measure (adaptive, mean, max),
S-measure (alpha = 0.5) and weighted F-measure (beta = 1), reimplemented in numpy so that
one normalisation and one pair of histograms serve every metric of an image. The reference
(``py_sod_metrics``) is only imported by the tests, which check equality to 1e-6.

Input handling follows ``py_sod_metrics.utils.prepare_data``:
  * prediction uint8 [H, W] -> float64 ``p / 255``, then min-max scaled to [0, 1] unless
    constant (a constant map stays at ``v / 255``);
  * ground truth uint8 [H, W] -> bool ``gt > 128``.
Dataset figures are PySODMetrics' ``get_results()``: scalars are means over images; the
F/E curves (256 thresholds) are averaged over images first, and ``maxFm`` / ``meanFm`` /
``maxEm`` / ``meanEm`` are the max / mean of that dataset curve (so the dataset ``maxFm`` is
not the mean of per-image maxima).

Known reference quirk, kept on purpose: S-measure is NaN when the GT centroid rounds to the
last row or column (a quadrant is empty), as in PySODMetrics and the original MATLAB code.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.ndimage import distance_transform_edt

EPS = np.spacing(1)  # MATLAB's eps, as PySODMetrics uses
FM_BETA2 = 0.3  # F-measure beta^2 (PySODMetrics calls it ``beta``)
SM_ALPHA = 0.5
WFM_BETA = 1.0
# What a bench run reports; a per-image dict has these plus the curves.
SUMMARY_KEYS = ("MAE", "adpFm", "meanFm", "maxFm", "adpEm", "meanEm", "maxEm", "Sm", "wFm")
# The per-image floats of ``image_metrics`` (JSON-safe; the rest of its dict are numpy curves).
PER_IMAGE_KEYS = SUMMARY_KEYS
_SCALARS = ("MAE", "adpFm", "adpEm", "Sm", "wFm")
_CURVES = ("fm_curve", "em_curve", "precision", "recall")


def _gauss_1d(size: int = 7, sigma: float = 5.0) -> np.ndarray:
    """1-D factor of MATLAB ``fspecial('gaussian', size, sigma)``: float64 [size].

    The 2-D kernel is the outer product of this with itself (equal to ~1e-17); no tap is
    below eps * max for 7 / 5, so MATLAB's truncation step changes nothing.
    """
    r = (size - 1) / 2
    x = np.arange(-r, r + 1)
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


_GAUSS = _gauss_1d()


def check_inputs(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a prediction/GT pair and bring the prediction to the GT size.

    pred, gt: uint8 [H, W] grayscale. If the sizes differ the prediction is resized with
    ``cv2.INTER_LINEAR`` (what PySODMetrics users' eval scripts do); the bench writes
    predictions at GT size, so this is only a safety net.
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


def _normalise_lut(hist: np.ndarray) -> np.ndarray:
    """Code -> normalised value table, float64 [256], bit-equal to ``prepare_data``'s per-pixel math.

    hist: int [256] histogram of the prediction's codes (gives min and max without a pass).
    """
    present = np.flatnonzero(hist)
    lut = np.arange(256) / 255
    lo, hi = lut[present[0]], lut[present[-1]]
    if hi != lo:
        lut = (lut - lo) / (hi - lo)
    return lut


def _fm_curve(fg_hist: np.ndarray, bg_hist: np.ndarray, n_fg: int) -> tuple[np.ndarray, ...]:
    """Precision, recall, F-measure at the 256 thresholds 255..0, each float64 [256].

    fg_hist / bg_hist: int64 [256] histograms of the 8-bit re-quantised prediction inside /
    outside the GT. Index i counts pixels >= 255 - i (PySODMetrics' flipped order).
    """
    tps = np.cumsum(fg_hist[::-1])
    ps = tps + np.cumsum(bg_hist[::-1])
    ps[ps == 0] = 1  # the numerator is 0 there too
    precision = tps / ps
    recall = tps / max(n_fg, 1)
    num = (1 + FM_BETA2) * precision * recall
    den = np.where(num == 0, 1, FM_BETA2 * precision + recall)
    return precision, recall, num / den


def _em_sum(fg_fg, fg_bg, n_fg: int, size: int):
    """Sum of the enhanced-alignment matrix given counts of predicted-fg pixels in / out of the GT.

    fg_fg, fg_bg: int scalars or int64 [T] arrays (one per threshold). Returns the same shape.
    Closed form of the four (pred, gt) in {fg, bg}^2 parts, as PySODMetrics evaluates it.
    """
    fg = fg_fg + fg_bg
    bg = size - fg
    if n_fg == 0:
        return bg
    if n_fg == size:
        return fg
    bg_fg = n_fg - fg_fg
    parts = (fg_fg, fg_bg, bg_fg, bg - bg_fg)
    mean_pred, mean_gt = fg / size, n_fg / size
    dp = (1 - mean_pred, 0 - mean_pred)
    dg = (1 - mean_gt, 0 - mean_gt)
    total = 0
    for k, (a, b) in enumerate(((dp[0], dg[0]), (dp[0], dg[1]), (dp[1], dg[0]), (dp[1], dg[1]))):
        align = 2 * (a * b) / (a**2 + b**2 + EPS)
        total = total + (align + 1) ** 2 / 4 * parts[k]
    return total


def _ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """S-measure's region SSIM on one quadrant (float64 / bool [h, w]); NaN if the quadrant is empty.

    Plain numpy on the same slices as the reference on purpose: its 1-vs-0 branch for a
    constant quadrant depends on whether the float mean is exact, so the sums must match bit
    for bit, which no histogram shortcut guarantees.
    """
    n = pred.size
    if n == 0:
        return float("nan")
    x, y = np.mean(pred), np.mean(gt)
    dx, dy = pred - x, gt - y
    sigma_x = np.sum(dx**2) / (n - 1 + EPS)
    sigma_y = np.sum(dy**2) / (n - 1 + EPS)
    sigma_xy = np.sum(dx * dy) / (n - 1 + EPS)
    alpha = 4 * x * y * sigma_xy
    beta = (x**2 + y**2) * (sigma_x + sigma_y)
    if alpha != 0:
        return alpha / (beta + EPS)
    return 1.0 if beta == 0 else 0.0


def _s_object(x: np.ndarray) -> float:
    """Object-aware score of a 1-D float64 sample."""
    mean = np.mean(x)
    std = np.std(x, ddof=1) if x.size > 1 else 0
    return 2 * mean / (mean**2 + 1 + std + EPS)


def s_measure(pred: np.ndarray, gt: np.ndarray, n_fg: int) -> float:
    """S-measure (alpha = 0.5). pred float64 [H, W] in [0, 1], gt bool [H, W], n_fg = gt.sum()."""
    h, w = gt.shape
    size = h * w
    if n_fg == 0:
        return 1 - np.mean(pred)
    if n_fg == size:
        return np.mean(pred)
    y = n_fg / size
    obj = _s_object(pred[gt]) * y + _s_object(1 - pred[~gt]) * (1 - y)
    # Centroid from row/column counts (exact integer sums) instead of argwhere; +1 as in MATLAB.
    cy = int(np.round(np.dot(np.arange(h), np.count_nonzero(gt, axis=1)) / n_fg)) + 1
    cx = int(np.round(np.dot(np.arange(w), np.count_nonzero(gt, axis=0)) / n_fg)) + 1
    w_lt = cx * cy / size
    w_rt = cy * (w - cx) / size
    w_lb = (h - cy) * cx / size
    w_rb = 1 - w_lt - w_rt - w_lb
    region = (
        _ssim(pred[:cy, :cx], gt[:cy, :cx]) * w_lt
        + _ssim(pred[:cy, cx:], gt[:cy, cx:]) * w_rt
        + _ssim(pred[cy:, :cx], gt[cy:, :cx]) * w_lb
        + _ssim(pred[cy:, cx:], gt[cy:, cx:]) * w_rb
    )
    return np.maximum(0, obj * SM_ALPHA + region * (1 - SM_ALPHA))


def weighted_f_measure(pred: np.ndarray, gt: np.ndarray) -> float:
    """Weighted F-measure (Margolin et al., beta = 1). pred float64 [H, W], gt bool [H, W] (non-empty).

    Same steps as PySODMetrics (scipy EDT with its tie-breaking for the nearest-GT index,
    7x7 sigma-5 Gaussian with zero border), but the Gaussian runs separably and only on the
    GT bounding box (+3 px): its result is used only inside the GT.
    """
    bg = ~gt
    # Indices only: scipy's distances are sqrt(float(dy)^2 + float(dx)^2), needed off the GT only.
    iy, ix = distance_transform_edt(bg, return_distances=False, return_indices=True)
    fg_err = 1 - pred  # E on the GT; every nearest index points into the GT
    ys, xs = np.flatnonzero(gt.any(axis=1)), np.flatnonzero(gt.any(axis=0))
    y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
    h, w = gt.shape
    r = len(_GAUSS) // 2
    wy0, wy1, wx0, wx1 = max(y0 - r, 0), min(y1 + r, h), max(x0 - r, 0), min(x1 + r, w)
    # Et: each pixel takes the error at its nearest GT pixel (the GT itself maps to itself).
    et = fg_err[iy[wy0:wy1, wx0:wx1], ix[wy0:wy1, wx0:wx1]]
    et = np.pad(et, ((r - (y0 - wy0), r - (wy1 - y1)), (r - (x0 - wx0), r - (wx1 - x1))))
    rows = sum(_GAUSS[k] * et[k : k + y1 - y0] for k in range(2 * r + 1))
    ea = sum(_GAUSS[k] * rows[:, k : k + x1 - x0] for k in range(2 * r + 1))
    box_gt = gt[y0:y1, x0:x1]
    box_err = fg_err[y0:y1, x0:x1]
    fg_ew = np.where(ea < box_err, ea, box_err)[box_gt]  # Ew on the GT (weight B = 1 there)
    dy = iy - np.arange(h, dtype=iy.dtype)[:, None]
    dx = ix - np.arange(w, dtype=ix.dtype)[None, :]
    dist = np.sqrt((dy * dy + dx * dx)[bg].astype(np.float64))
    bg_ew = pred[bg] * (2 - np.exp(np.log(0.5) / 5 * dist))  # E = pred off the GT
    tpw = fg_ew.size - np.sum(fg_ew)
    fpw = np.sum(bg_ew)
    recall = 1 - np.mean(fg_ew)
    precision = tpw / (tpw + fpw + EPS)
    return (1 + WFM_BETA) * recall * precision / (recall + WFM_BETA * precision + EPS)


def image_metrics(pred_u8: np.ndarray, gt_u8: np.ndarray) -> dict:
    """Every metric of one image.

    pred_u8: uint8 [h, w] soft prediction (resized to the GT size if it differs).
    gt_u8: uint8 [H, W] ground truth (foreground > 128).
    Returns scalars ``MAE, adpFm, adpEm, Sm, wFm`` and this image's ``meanFm, maxFm, meanEm,
    maxEm`` (floats), plus the curves ``fm_curve, em_curve, precision, recall`` (float64
    [256], thresholds 255..0) that dataset aggregation averages; keep only ``PER_IMAGE_KEYS``
    for a JSON row.
    """
    pred_u8, gt_u8 = check_inputs(pred_u8, gt_u8)
    gt = gt_u8 > 128
    size = gt.size
    n_fg = int(np.count_nonzero(gt))
    # One joint histogram of (code, in-GT) replaces min/max, the curves' histograms and counts.
    joint = np.bincount((pred_u8.ravel() + gt.ravel() * np.uint16(256)), minlength=512)
    code_bg, code_fg = joint[:256], joint[256:]
    lut = _normalise_lut(code_bg + code_fg)
    pred = lut[pred_u8]  # float64 [H, W], bit-equal to prepare_data's
    # The curves re-quantise with (p * 255).astype(uint8), a monotone map of the codes.
    bins = (lut * 255).astype(np.uint8)
    fg_hist = np.bincount(bins, weights=code_fg, minlength=256).astype(np.int64)
    bg_hist = np.bincount(bins, weights=code_bg, minlength=256).astype(np.int64)
    precision, recall, fm_curve = _fm_curve(fg_hist, bg_hist, n_fg)
    fg_fg = np.cumsum(fg_hist[::-1])
    em_curve = _em_sum(fg_fg, np.cumsum(bg_hist[::-1]), n_fg, size) / (size - 1 + EPS)

    # Adaptive threshold: the mean as np.mean computes it, since pixels can sit exactly on it.
    thr = min(2 * np.mean(pred), 1)
    on = lut >= thr
    tp, fp = code_fg[on].sum(), code_bg[on].sum()
    if tp == 0:
        adp_fm = 0.0
    else:
        pre, rec = tp / (tp + fp), tp / n_fg
        adp_fm = (1 + FM_BETA2) * pre * rec / (FM_BETA2 * pre + rec)
    adp_em = _em_sum(tp, fp, n_fg, size) / (size - 1 + EPS)

    mae = (np.dot(code_fg, 1 - lut) + np.dot(code_bg, lut)) / size
    wfm = 0.0 if n_fg == 0 else weighted_f_measure(pred, gt)
    return {
        "MAE": float(mae),
        "adpFm": float(adp_fm),
        "adpEm": float(adp_em),
        "Sm": float(s_measure(pred, gt, n_fg)),
        "wFm": float(wfm),
        "meanFm": float(fm_curve.mean()),
        "maxFm": float(fm_curve.max()),
        "meanEm": float(em_curve.mean()),
        "maxEm": float(em_curve.max()),
        "fm_curve": fm_curve,
        "em_curve": em_curve,
        "precision": precision,
        "recall": recall,
    }


class DatasetMetrics:
    """Accumulates images and reports PySODMetrics' dataset figures (keys ``SUMMARY_KEYS``).

    Keeps running sums only (O(1) memory): scalars and the four 256-point curves.
    """

    def __init__(self) -> None:
        self.count = 0
        self._sums = dict.fromkeys(_SCALARS, 0.0)
        self._curves = {k: np.zeros(256) for k in _CURVES}

    def add(self, pred_u8: np.ndarray, gt_u8: np.ndarray) -> dict:
        """Score one image (see ``image_metrics``), fold it in, and return its per-image dict."""
        m = image_metrics(pred_u8, gt_u8)
        self.count += 1
        for k in _SCALARS:
            self._sums[k] += m[k]
        for k in _CURVES:
            self._curves[k] += m[k]
        return m

    def curves(self) -> dict[str, np.ndarray]:
        """Dataset-mean curves: ``fm_curve, em_curve, precision, recall``, float64 [256] (thresholds 255..0)."""
        if self.count == 0:
            raise ValueError("bench/metrics.py: DatasetMetrics has no images yet")
        return {k: v / self.count for k, v in self._curves.items()}

    def summary(self) -> dict[str, float]:
        """``MAE, adpFm, meanFm, maxFm, adpEm, meanEm, maxEm, Sm, wFm`` over the images added so far."""
        curves = self.curves()
        out = {k: self._sums[k] / self.count for k in _SCALARS}
        out.update(
            meanFm=float(curves["fm_curve"].mean()),
            maxFm=float(curves["fm_curve"].max()),
            meanEm=float(curves["em_curve"].mean()),
            maxEm=float(curves["em_curve"].max()),
        )
        return {k: out[k] for k in SUMMARY_KEYS}
