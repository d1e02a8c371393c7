"""Steps 7-9 (eq 8-11): detection, CLIP points, SAM masks and their CLIP weighting.

Pure functions around the model calls: they build a call's inputs or read its outputs
(arrays and the protocols' dataclasses); the pipeline makes the calls.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import nms

from .config import MASK_WEIGHTINGS
from .patches import View, image_boxes_to_view, view_boxes_to_image
from .protocols import SEGMENTER_THRESHOLD, Detections, SegmentRequest


def merge_detections(found: Sequence[Detections], views: Sequence[View], nms_iou: float) -> tuple[np.ndarray, np.ndarray]:
    """B_i^k = GroundingDINO(X^k, A_i^u) found on every view (eq 8), mapped to image pixels and
    merged by NMS. Returns boxes float32 [N, 4] and scores float32 [N]."""
    boxes = [view_boxes_to_image(d.boxes, v) for d, v in zip(found, views)]
    scores = [np.asarray(d.scores, np.float32).reshape(-1) for d in found]
    all_boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
    all_scores = np.concatenate(scores) if scores else np.zeros((0,), np.float32)
    if len(all_boxes) == 0:
        return all_boxes.astype(np.float32), all_scores
    keep = nms(torch.from_numpy(all_boxes).float(), torch.from_numpy(all_scores).float(), nms_iou).numpy()
    return all_boxes[keep].astype(np.float32), all_scores[keep]


def clip_points(similarity: np.ndarray, n_positive: int, n_negative: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Spatial CLIP prompts for SAM (eq 9): the centres of the ``n_positive`` most and the
    ``n_negative`` least similar cells of a ``grid`` x ``grid`` average pooling of the map.

    similarity: float [h, w]. Returns points float32 [P, 2] as (x, y) pixels and labels int64 [P]
    (1 positive, 0 negative). Cells are distinct, so points never repeat.
    """
    h, w = similarity.shape
    gh, gw = min(grid, h), min(grid, w)
    pooled = F.adaptive_avg_pool2d(torch.from_numpy(np.ascontiguousarray(similarity, np.float32))[None, None], (gh, gw))[0, 0]
    order = torch.argsort(pooled.flatten(), descending=True, stable=True)
    n_pos = min(n_positive, order.numel())
    n_neg = min(n_negative, order.numel() - n_pos)
    chosen = torch.cat([order[:n_pos], order[order.numel() - n_neg :]]) if n_neg else order[:n_pos]
    rows, cols = chosen // gw, chosen % gw
    xs = (cols.double() + 0.5) * w / gw
    ys = (rows.double() + 0.5) * h / gh
    points = torch.stack([xs, ys], dim=1).float().numpy().reshape(-1, 2)
    labels = np.array([1] * n_pos + [0] * n_neg, np.int64)
    return points, labels


def sam_requests(
    view_images: Sequence[np.ndarray],
    views: Sequence[View],
    maps: Sequence[np.ndarray],
    boxes: np.ndarray,
    n_positive: int,
    n_negative: int,
    grid: int,
    min_overlap: float,
) -> list[SegmentRequest]:
    """The prompts of m_i^k = SAM(Spatial CLIP(A_i^u, X_i^k), B_i^k, X_i^k) for every view (eq 9):
    points from the view's CLIP map, and the merged image boxes of eq 8 that lie in the view."""
    requests = []
    for image, view, sim in zip(view_images, views, maps):
        points, labels = clip_points(sim, n_positive, n_negative, grid)
        requests.append(
            SegmentRequest(image=image, boxes=image_boxes_to_view(boxes, view, min_overlap), points=points, labels=labels)
        )
    return requests


def view_binary(probability: np.ndarray) -> np.ndarray:
    """A segmenter's binary mask from its probability: bool [h, w] (SAM's own threshold)."""
    return np.asarray(probability) > SEGMENTER_THRESHOLD


def masked_views(view_images: Sequence[np.ndarray], view_masks: Sequence[np.ndarray]) -> tuple[list[int], list[np.ndarray]]:
    """The inputs of s(m_i^k) = CLIP(m_i^k ⊙ X_i, A_i^u) (eq 10): for every view whose binary
    mask is non-empty, its index and the view with the pixels outside that mask zeroed
    (uint8 [h, w, 3]). view_masks: the segmenter's probabilities, float32 [h, w] each."""
    binary = [view_binary(m) for m in view_masks]
    todo = [k for k, m in enumerate(binary) if m.any()]
    return todo, [(view_images[k] * binary[k][..., None]).astype(np.uint8) for k in todo]


def view_similarities(n_views: int, indices: Sequence[int], similarities: Sequence[float]) -> np.ndarray:
    """S_i of eq 10-11 for all views: float64 [K], -inf for a view whose mask is empty."""
    out = np.full(n_views, -np.inf)
    if len(indices):
        out[list(indices)] = np.asarray(similarities, np.float64)
    return out


_TINY = 1e-9  # the authors' guard in both min-max steps: equal values map to 1, not 0/0


def normalise_weights(similarity: np.ndarray, mode: str, temperature: float) -> torch.Tensor:
    """Normalise S_i over the views with a mask (eq 11's "normalized s(m)").

    ``promac`` (default, as the authors' released ProMaC code does): softmax of the CLIP logits
    s / temperature over views, then min-max over views (guarded by 1e-9, so equal values all
    become 1 and a single view gets weight 1), then divided by the sum;
    ``softmax``: softmax(s / temperature) alone; ``minmax``: (s - min) / (max - min), all ones
    when every s is equal. Views with s = -inf (empty masks) get weight 0 in every mode.

    similarity: float [K]. Returns float64 [K].
    """
    s = torch.as_tensor(similarity, dtype=torch.float64)
    valid = torch.isfinite(s)
    zeros = torch.zeros_like(s)
    if not valid.any():
        return zeros
    if mode in ("softmax", "promac"):
        w = torch.softmax(torch.where(valid, s / temperature, torch.full_like(s, float("-inf"))), dim=0)
        if mode == "promac":
            lo, hi = w[valid].min(), w[valid].max()
            w = (w - lo + _TINY) / (hi - lo + _TINY)
            w = torch.where(valid, w, zeros)
            w = w / w.sum()
    elif mode == "minmax":
        lo, hi = s[valid].min(), s[valid].max()
        w = torch.where(valid, (s - lo) / (hi - lo) if hi > lo else torch.ones_like(s), zeros)
    else:
        raise ValueError(f"unknown mask weighting {mode!r}; expected one of {', '.join(MASK_WEIGHTINGS)}")
    return torch.where(valid, w, zeros)


def weighted_sum(masks: torch.Tensor, weights: torch.Tensor, views: Sequence[View] | None = None) -> torch.Tensor:
    """M̃_i = Σ_k s_k m_k (eq 11), or with ``views`` its coverage-normalised form
    Σ_k s_k m_k(x) / Σ_{k: x in view k} s_k, the weighted mean over the views that cover x.

    Why the coverage form (``EngineConfig.mask_combine = "coverage"``, the default): every pixel
    lies in 4 of the 9 views, and eq 11's normalised weights differ a lot between views (CLIP
    logits a few hundredths apart become weights ~e^±2 apart at temperature 0.01), so the plain
    sum differs from quarter to quarter of the image: after the min-max rescale, a quarter whose
    views drew small weights falls below 0.5 although every view covering it segmented the object
    (SPEC step 9's own requirement). Dividing by the weight that covers each pixel makes that
    object reach ~m everywhere; with equal weights the two forms are equal after the rescale.
    ``views=None`` is SPEC step 9 as written (``mask_combine = "sum"``).

    masks: float [K, H, W] (view probabilities pasted into image coordinates, 0 outside their
    view); weights: float [K]; views: the K views. Returns float64 [H, W].
    """
    w = weights.to(torch.float64)
    total = (w[:, None, None] * masks.to(torch.float64)).sum(dim=0)
    if views is None:
        return total
    cover = torch.zeros(masks.shape[1:], dtype=torch.float64)
    for weight, v in zip(w.tolist(), views):
        cover[v.y0 : v.y1, v.x0 : v.x1] += weight
    return torch.where(cover > 0, total / cover.clamp_min(1e-300), torch.zeros_like(total))


def rescale(mask: torch.Tensor) -> torch.Tensor:
    """M_i = M̃_i rescaled to [0, 1] by its min and max over the image (SPEC step 9).

    Every pixel lies in only 4 of the 9 views, so M̃_i is capped near 4/9 of the weights: without
    this a 0.5 binarisation erases any object that several views share. All zeros stays zeros;
    a constant non-zero mask becomes all ones. mask: float [H, W]. Returns float32 [H, W].
    """
    lo, hi = mask.min(), mask.max()
    if hi <= 0:
        return torch.zeros_like(mask, dtype=torch.float32)
    if hi - lo <= _TINY:
        return torch.ones_like(mask, dtype=torch.float32)
    return ((mask - lo) / (hi - lo)).float()


def union(masks: torch.Tensor) -> torch.Tensor:
    """M_i with ``smg=False``: the union of the views' binary masks, float32 {0, 1} [H, W].
    masks: the view probabilities pasted into image coordinates, float [K, H, W]."""
    if len(masks) == 0:
        return masks.new_zeros(masks.shape[1:], dtype=torch.float32)
    return (masks > SEGMENTER_THRESHOLD).any(dim=0).float()
