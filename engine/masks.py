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
from .patches import View, image_boxes_to_view, normalised_box_to_view, view_boxes_to_image
from .prompts import ViewProposal
from .protocols import SEGMENTER_THRESHOLD, Detections, SegmentRequest


def merge_detections(found: Sequence[Detections], views: Sequence[View], nms_iou: float) -> tuple[np.ndarray, np.ndarray]:
    """B_i^k = GroundingDINO(X^k, A_i^u) found on every view (eq 8), mapped to image pixels and
    merged by NMS: the image's boxes for the trace and the overlay (and the ``view_boxes:
    overlap`` rule). Returns boxes float32 [N, 4] and scores float32 [N]."""
    boxes = [view_boxes_to_image(d.boxes, v) for d, v in zip(found, views)]
    scores = [np.asarray(d.scores, np.float32).reshape(-1) for d in found]
    all_boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
    all_scores = np.concatenate(scores) if scores else np.zeros((0,), np.float32)
    if len(all_boxes) == 0:
        return all_boxes.astype(np.float32), all_scores
    keep = nms(torch.from_numpy(all_boxes).float(), torch.from_numpy(all_scores).float(), nms_iou).numpy()
    return all_boxes[keep].astype(np.float32), all_scores[keep]


def view_prompt_boxes(
    found: Sequence[Detections], views: Sequence[View], merged: np.ndarray, rule: str, min_overlap: float
) -> list[np.ndarray]:
    """The boxes each view's SAM call gets (eq 9), float32 [N_k, 4] in view pixels.

    ``rule="own"`` (SPEC step 7, eq 8-9 pair a view with its detections): the view's own
    GroundingDINO boxes. ``"overlap"``: the ``merged`` image boxes holding at least
    ``min_overlap`` of their area inside the view, clipped to it.
    """
    if rule == "own":
        return [np.asarray(d.boxes, np.float32).reshape(-1, 4) for d in found]
    return [image_boxes_to_view(merged, v, min_overlap) for v in views]


def vlm_prompt_box(proposals: Sequence[ViewProposal], views: Sequence[View]) -> np.ndarray:
    """``box_source: vlm`` (ProMaC): the iteration's one VLM box in image pixels, float32 [0 or 1, 4]:
    the whole view's P_B box, else the first view's that gave one."""
    order = sorted(range(len(views)), key=lambda k: views[k].name != "whole")
    for k in order:
        if proposals[k].box is not None:
            return view_boxes_to_image(normalised_box_to_view(proposals[k].box, views[k])[None], views[k])
    return np.zeros((0, 4), np.float32)


def clip_points(
    similarity: np.ndarray, height: int, width: int, grid: int, threshold: float, fixed: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Spatial CLIP's point prompts for SAM on a ``height`` x ``width`` view (eq 9).

    The map (float [h, w] over the whole view, e.g. CLIP's 14 x 14 patch grid) is resampled
    bilinearly to ``grid`` x ``grid`` cells and min-max normalised. As the authors'
    ``similarity_map_to_points``: n = the number of cells >= ``threshold``, at most half the cells;
    the n highest cells are positives and the n lowest negatives. ``fixed=(p, q)``: p positives and
    q negatives instead. Points are the cells' centres in view pixels, truncated to integers and
    kept inside the view, as the authors' code does.

    Returns points float32 [P, 2] as (x, y) and labels int64 [P] (1 positive, 0 negative);
    none for a flat map.
    """
    sim = torch.from_numpy(np.ascontiguousarray(similarity, np.float32))[None, None]
    cells = F.interpolate(sim, size=(grid, grid), mode="bilinear", align_corners=False, antialias=True).flatten()
    lo, hi = cells.min(), cells.max()
    if not bool(hi > lo):
        return np.zeros((0, 2), np.float32), np.zeros((0,), np.int64)
    cells = (cells - lo) / (hi - lo)
    order = torch.argsort(cells, stable=True)  # ascending
    if fixed is None:
        n = min(int((cells >= threshold).sum()), cells.numel() // 2)
        n_pos = n_neg = n
    else:
        n_pos = min(fixed[0], cells.numel())
        n_neg = min(fixed[1], cells.numel() - n_pos)
    chosen = torch.cat([order.flip(0)[:n_pos], order[:n_neg]])
    rows, cols = chosen // grid, chosen % grid
    xs = torch.clamp((cols.double() + 0.5) * width / grid, max=width - 1).floor()
    ys = torch.clamp((rows.double() + 0.5) * height / grid, max=height - 1).floor()
    points = torch.stack([xs, ys], dim=1).float().numpy().reshape(-1, 2)
    return points, np.array([1] * n_pos + [0] * n_neg, np.int64)


def sam_requests(
    view_images: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    boxes: Sequence[np.ndarray],
    grid: int,
    threshold: float,
    fixed: tuple[int, int] | None = None,
) -> list[SegmentRequest]:
    """The prompts of m_i^k = SAM(Spatial CLIP(A_i^u, X_i^k), B_i^k, X_i^k) for every view (eq 9):
    the points of the view's CLIP map (``clip_points``) and the view's boxes (view pixels)."""
    requests = []
    for image, sim, view_boxes in zip(view_images, maps, boxes):
        points, labels = clip_points(sim, image.shape[0], image.shape[1], grid, threshold, fixed)
        requests.append(SegmentRequest(image=image, boxes=np.asarray(view_boxes, np.float32), points=points, labels=labels))
    return requests


def view_binary(probability: np.ndarray) -> np.ndarray:
    """A segmenter's binary mask from its probability: bool [h, w] (SAM's own threshold)."""
    return np.asarray(probability) > SEGMENTER_THRESHOLD


def masked_views(
    view_images: Sequence[np.ndarray], view_masks: Sequence[np.ndarray], views: Sequence[View], canvas: tuple[int, int] | None
) -> tuple[list[int], list[np.ndarray]]:
    """The inputs of s(m_i^k) = CLIP(m_i^k ⊙ X_i, A_i^u) (eq 10) for every view whose binary mask
    is non-empty: its index and uint8 [., ., 3] image. With ``canvas=(H, W)`` the view's masked
    pixels are pasted on a black canvas of the image's size (the authors' ``patch_match_list``),
    so that CLIP sees the object at its size in the image; with None, the masked view itself.
    view_masks: the segmenter's probabilities, float32 [h, w] each."""
    binary = [view_binary(m) for m in view_masks]
    todo = [k for k, m in enumerate(binary) if m.any()]
    out = []
    for k in todo:
        masked = (view_images[k] * binary[k][..., None]).astype(np.uint8)
        if canvas is not None:
            board = np.zeros((*canvas, 3), np.uint8)
            v = views[k]
            board[v.y0 : v.y1, v.x0 : v.x1] = masked
            masked = board
        out.append(masked)
    return todo, out


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


def selected_views(similarity: np.ndarray, views: Sequence[View], temperature: float, level: float) -> list[int]:
    """The views whose masks make the iteration's segmentation (SPEC step 9, the authors'
    ``clip_similarity``): softmax of the CLIP logits over the views with a mask, min-max
    normalised (1e-9 guard), every view above ``level``; the whole view always.
    similarity: float [K] (-inf for an empty mask). Returns sorted view indices."""
    s = torch.as_tensor(similarity, dtype=torch.float64)
    valid = torch.isfinite(s)
    chosen = {k for k, v in enumerate(views) if v.name == "whole"}
    if valid.any():
        w = torch.softmax(torch.where(valid, s / temperature, torch.full_like(s, float("-inf"))), dim=0)
        lo, hi = w[valid].min(), w[valid].max()
        w = (w - lo + _TINY) / (hi - lo + _TINY)
        chosen |= {k for k in range(len(s)) if bool(valid[k]) and float(w[k]) > level}
    return sorted(chosen)


def segmentation(masks: torch.Tensor, chosen: Sequence[int]) -> torch.Tensor:
    """M_i^bin: the union of the chosen views' binary masks, bool [H, W].
    masks: the view probabilities pasted into image coordinates, float [K, H, W]."""
    out = torch.zeros(masks.shape[1:], dtype=torch.bool)
    for k in chosen:
        out |= masks[k] > SEGMENTER_THRESHOLD
    return out


def weighted_sum(masks: torch.Tensor, weights: torch.Tensor, views: Sequence[View] | None = None) -> torch.Tensor:
    """M̃_i = Σ_k s_k m_k (eq 11), or with ``views`` its coverage-normalised form
    Σ_k s_k m_k(x) / Σ_{k: x in view k} s_k, the weighted mean over the views that cover x.

    ``views=None`` is SPEC step 9 and the authors' code (``mask_combine: sum``, the default). The
    coverage form (``mask_combine: coverage``) is an earlier reading of ours: each pixel lies in 4
    of the 9 views, so the plain sum differs from quarter to quarter when CLIP's weights do, and
    dividing by the covering weight evens that out; but it also lifts a view CLIP rejected to ~1
    wherever only low-weight views cover it (docs/method.md has the figures).

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
