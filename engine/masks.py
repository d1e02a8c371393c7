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

from .protocols import Detections, SegmentRequest
from .patches import View, image_boxes_to_view, view_boxes_to_image


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
        requests.append(SegmentRequest(image=image, boxes=image_boxes_to_view(boxes, view, min_overlap), points=points, labels=labels))
    return requests


def masked_views(view_images: Sequence[np.ndarray], view_masks: Sequence[np.ndarray]) -> tuple[list[int], list[np.ndarray]]:
    """The inputs of s(m_i^k) = CLIP(m_i^k ⊙ X_i, A_i^u) (eq 10): for every view with a non-empty
    mask, its index and the view with the pixels outside the mask zeroed (uint8 [h, w, 3])."""
    todo = [k for k, m in enumerate(view_masks) if m.any()]
    return todo, [(view_images[k] * (view_masks[k][..., None] > 0)).astype(np.uint8) for k in todo]


def view_similarities(n_views: int, indices: Sequence[int], similarities: Sequence[float]) -> np.ndarray:
    """S_i of eq 10-11 for all views: float64 [K], -inf for a view whose mask is empty."""
    out = np.full(n_views, -np.inf)
    if len(indices):
        out[list(indices)] = np.asarray(similarities, np.float64)
    return out


def normalise_weights(similarity: np.ndarray, mode: str, temperature: float) -> torch.Tensor:
    """Normalise S_i over the views with a mask (eq 11's "normalized s(m)").

    ``softmax``: softmax(s / temperature) (CLIP logits at temperature 0.01);
    ``minmax``: (s - min) / (max - min), all ones when every s is equal. Views with s = -inf
    (empty masks) get weight 0. Returns float64 [K].
    """
    s = torch.as_tensor(similarity, dtype=torch.float64)
    valid = torch.isfinite(s)
    if not valid.any():
        return torch.zeros_like(s)
    if mode == "softmax":
        w = torch.softmax(torch.where(valid, s / temperature, torch.full_like(s, float("-inf"))), dim=0)
    elif mode == "minmax":
        lo, hi = s[valid].min(), s[valid].max()
        w = torch.where(valid, (s - lo) / (hi - lo) if hi > lo else torch.ones_like(s), torch.zeros_like(s))
    else:
        raise ValueError(f"unknown mask weighting {mode!r}")
    return torch.where(valid, w, torch.zeros_like(w))


def combine(masks: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """M_i = Σ_k s_k m_k clipped to [0, 1] (eq 11); ``weights=None`` (``smg=False``) is the union.

    masks: float [K, H, W] (view masks pasted into image coordinates); weights: float [K].
    Returns float32 [H, W].
    """
    if weights is None:
        return masks.amax(dim=0).float() if len(masks) else masks.new_zeros(masks.shape[1:])
    return (weights.to(masks.dtype)[:, None, None] * masks).sum(dim=0).clamp(0.0, 1.0).float()
