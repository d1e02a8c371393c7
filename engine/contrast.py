"""Steps 3-4 (eq 3-4): what each view's contrast removes, and the rows of the one scoring call.

Pure functions around the model calls (``pipeline.contrast_views`` makes the inpainting call,
``pipeline.select_name`` the scoring call): arrays in, arrays out.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from . import patches, prompts
from .config import EngineConfig


def contrast_masks(
    views: list[patches.View], proposals: list[prompts.ViewProposal], previous: np.ndarray | None, cfg: EngineConfig
) -> list[np.ndarray | None]:
    """The inpainting mask IM_i^k of eq 4 per view (uint8 [h_k, w_k], 1 = remove), or None.

    Iteration 1: the view's P_B box as a filled rectangle. Later, from the previous soft map
    M_{i-1} (SPEC step 3): with ``contrast_mask: support`` its pixels >= ``contrast_support`` of
    its maximum (the authors' non-zero rule on an 8-bit map); with ``threshold`` those >=
    ``inpaint_mask_threshold`` of its maximum, dilated by ``inpaint_dilate_px``. No box, an
    empty mask or one covering the whole view gives None (no contrast for that view).
    """
    out: list[np.ndarray | None] = []
    if previous is not None:
        top = float(previous.max())
        level = cfg.contrast_support if cfg.contrast_mask == "support" else cfg.inpaint_mask_threshold
        full = (previous >= level * top).astype(np.uint8) if top > 0 else np.zeros_like(previous, np.uint8)
        if cfg.contrast_mask == "threshold" and cfg.inpaint_dilate_px > 0 and full.any():
            size = 2 * cfg.inpaint_dilate_px + 1
            full = cv2.dilate(full, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    for view, proposal in zip(views, proposals):
        if previous is not None:
            m = patches.crop(full, view).copy()
        elif proposal.box is not None:
            x0, y0, x1, y1 = patches.normalised_box_to_view(proposal.box, view)
            m = np.zeros((view.height, view.width), np.uint8)
            m[int(np.floor(y0)) : int(np.ceil(y1)), int(np.floor(x0)) : int(np.ceil(x1))] = 1
        else:
            m = None
        out.append(m if m is not None and m.any() and not m.all() else None)
    return out


def score_rows(
    crops: list[np.ndarray], contrasts: list[np.ndarray | None], candidates: list[str]
) -> tuple[list[int], list[np.ndarray], list[str]]:
    """The rows of step 4's one scoring call: every view with a contrast image × {before,
    after} × every candidate. Returns the active views, the row images and row answers."""
    active = [j for j in range(len(crops)) if contrasts[j] is not None]
    images = [crops[j] for j in active for _ in candidates] + [contrasts[j] for j in active for _ in candidates]
    return active, images, candidates * (2 * len(active))


def score_tensors(n_views: int, active: list[int], candidates: list[str], s: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """s(c | X_k) and s(c | X'_k) as float64 [1, K, C]; views without contrast all -inf (padded)."""
    c = len(candidates)
    before = torch.full((1, n_views, c), float("-inf"), dtype=torch.float64)
    after = before.clone()
    if active:
        s = torch.as_tensor(np.asarray(s), dtype=torch.float64)
        half = len(active) * c
        before[0, active] = s[:half].reshape(len(active), c)
        after[0, active] = s[half:].reshape(len(active), c)
    return before, after
