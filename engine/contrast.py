"""Steps 3-4 (eq 3-4): what each view's contrast removes, the inpainting jobs that remove it,
and the rows of the one scoring call.

Pure functions around the model calls (``pipeline.contrast`` makes the inpainting call,
``pipeline.score`` the scoring call): arrays in, arrays out.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from . import patches, prompts
from .config import EngineConfig

NO_NAME_FOREGROUND = "object"
NO_NAME_BACKGROUND = "background"


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


@dataclass(frozen=True)
class InpaintJobs:
    """Eq 4's inpainting jobs of one image-iteration, as the ``Call.INPAINT`` items: images
    uint8 [h, w, 3], masks float32 [h, w] (1 = remove), texts, and ``views``: the view index of
    each job, or None for the one whole-image job (``inpaint_scope: image``)."""

    images: list[np.ndarray]
    masks: list[np.ndarray]
    positive: list[str]
    negative: list[str]
    views: list[int | None]


def inpaint_jobs(
    image: np.ndarray,
    crops: list[np.ndarray],
    views: list[patches.View],
    proposals: list[prompts.ViewProposal],
    to_remove: list[np.ndarray | None],
    cfg: EngineConfig,
) -> InpaintJobs:
    """The jobs that make X'_k (eq 4). ``image`` and ``crops``: what the VLM sees (float32
    [H, W, 3] and its views' uint8 crops).

    ``inpaint_scope: image`` (the authors' released code): one job on the whole image with the
    union of the views' masks, prompted with all their foreground names (P_n) and background
    names (P_p); a union covering nothing or the whole image removes nothing (no job).
    ``view``: one job per view with a mask, with that view's names.
    """
    if cfg.inpaint_scope == "image":
        h, w = image.shape[:2]
        union = np.zeros((h, w), np.uint8)
        for view, m in zip(views, to_remove):
            if m is not None:
                patches.crop(union, view)[...] |= m
        if not union.any() or union.all():
            return InpaintJobs([], [], [], [], [])
        removing = [p for p, m in zip(proposals, to_remove) if m is not None]
        fores = ", ".join(dict.fromkeys(p.foreground for p in removing if p.foreground))
        backs = ", ".join(dict.fromkeys(p.background for p in removing if p.background))
        positive, negative = prompts.inpaint_prompts(fores or NO_NAME_FOREGROUND, backs or NO_NAME_BACKGROUND, cfg.task)
        whole = np.ascontiguousarray(np.clip(np.round(image), 0, 255).astype(np.uint8))
        return InpaintJobs([whole], [union.astype(np.float32)], [positive], [negative], [None])
    jobs = [j for j, m in enumerate(to_remove) if m is not None]
    texts = [
        prompts.inpaint_prompts(
            proposals[j].foreground or NO_NAME_FOREGROUND, proposals[j].background or NO_NAME_BACKGROUND, cfg.task
        )
        for j in jobs
    ]
    return InpaintJobs(
        [crops[j] for j in jobs],
        [to_remove[j].astype(np.float32) for j in jobs],
        [t[0] for t in texts],
        [t[1] for t in texts],
        list(jobs),
    )


def contrast_crops(jobs: InpaintJobs, filled: list[np.ndarray], views: list[patches.View]) -> list[np.ndarray | None]:
    """X'_k per view (uint8 [h_k, w_k, 3]) from the jobs' outputs, None where nothing was removed:
    a view job's output is its view's; the whole-image job gives every view with masked pixels
    its crop of the result."""
    contrasts: list[np.ndarray | None] = [None] * len(views)
    for view_index, mask, out in zip(jobs.views, jobs.masks, filled):
        if view_index is not None:
            contrasts[view_index] = out
            continue
        for j, view in enumerate(views):
            if patches.crop(mask, view).any():
                contrasts[j] = np.ascontiguousarray(patches.crop(out, view))
    return contrasts


def score_rows(
    crops: list[np.ndarray], contrasts: list[np.ndarray | None], candidates: list[str], known: dict | None = None
) -> tuple[list[int], list[np.ndarray], list[str], list[tuple[int, str]]]:
    """The rows of step 4's one scoring call: every view with a contrast image × {before,
    after} × every candidate, less the before-rows whose score is in ``known`` ((view, candidate)
    -> s(c | X_k): the same view and answer scored in an earlier iteration, which the VLM would
    score the same). Returns the active views, the row images, the row answers and the
    (view, candidate) of the before-rows asked, which come first."""
    known = known or {}
    active = [j for j in range(len(crops)) if contrasts[j] is not None]
    asked = [(j, c) for j in active for c in candidates if (j, c) not in known]
    images = [crops[j] for j, _ in asked] + [contrasts[j] for j in active for _ in candidates]
    return active, images, [c for _, c in asked] + candidates * len(active), asked


def score_tensors(
    n_views: int,
    active: list[int],
    candidates: list[str],
    s: np.ndarray,
    asked: list[tuple[int, str]],
    known: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """s(c | X_k) and s(c | X'_k) as float64 [1, K, C]; views without contrast all -inf (padded).
    ``s``: the scores of ``score_rows``' rows; the before-scores not asked come from ``known``,
    and those asked are added to it."""
    known = {} if known is None else known
    s = np.asarray(s, np.float64)
    known.update(zip(asked, s[: len(asked)].tolist()))
    c = len(candidates)
    before = torch.full((1, n_views, c), float("-inf"), dtype=torch.float64)
    after = before.clone()
    if active:
        before[0, active] = torch.tensor([[known[(j, name)] for name in candidates] for j in active], dtype=torch.float64)
        after[0, active] = torch.as_tensor(s[len(asked) :], dtype=torch.float64).reshape(len(active), c)
    return before, after
