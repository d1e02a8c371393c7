"""One image through INT, eagerly, top to bottom like the paper: the reference.

Each iteration (SPEC.md steps 1-10) is a sequence of plain step functions; the
scheduler (a later issue) drives the same steps for many images at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from . import fuse, masks, patches, prompts
from .config import EngineConfig
from .io import LoadedImage, to_original_size
from .mining import NameWeights, mine, view_gains
from .protocols import Models
from .trace import ImageTrace, IterationTrace, StageTimer

NO_NAME_FOREGROUND = "object"
NO_NAME_BACKGROUND = "background"


@dataclass
class Result:
    """The output for one image: ``soft`` float32 [H, W] in [0, 1] and ``binary`` bool [H, W]
    at the original size, the per-iteration masks at working size, and the trace."""

    soft: np.ndarray
    binary: np.ndarray
    iteration_masks: list[np.ndarray]
    trace: ImageTrace


def propose(models: Models, crops: list[np.ndarray], views: list[patches.View], task: str, max_new_tokens: int) -> list[prompts.ViewProposal]:
    """Eq 2 on every view: one batched generate for P_B and P_A over all K views."""
    k = len(crops)
    answers = models.vlm.generate(crops + crops, [prompts.box_prompt(task)] * k + [prompts.name_prompt(task)] * k, max_new_tokens)
    return [prompts.parse_proposal(answers[j], answers[k + j], task, v.width, v.height) for j, v in enumerate(views)]


def contrast_masks(
    views: list[patches.View], proposals: list[prompts.ViewProposal], previous: np.ndarray | None, cfg: EngineConfig
) -> list[np.ndarray | None]:
    """The inpainting mask IM_i^k of eq 4 per view (uint8 [h_k, w_k], 1 = remove), or None.

    Iteration 1: the view's P_B box as a filled rectangle. Later: the view's part of
    M_{i-1} binarised at ``inpaint_mask_threshold`` of its maximum, dilated by
    ``inpaint_dilate_px``. No box / an empty mask gives None (no contrast for that view).
    """
    out: list[np.ndarray | None] = []
    if previous is not None:
        top = float(previous.max())
        full = (previous >= cfg.inpaint_mask_threshold * top).astype(np.uint8) if top > 0 else np.zeros_like(previous, np.uint8)
        if cfg.inpaint_dilate_px > 0 and full.any():
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
        out.append(m if m is not None and m.any() else None)
    return out


def negative_mining_scores(
    models: Models,
    crops: list[np.ndarray],
    contrasts: list[np.ndarray | None],
    candidates: list[str],
    task: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """s(c | X_k) and s(c | X'_k) for every view with a contrast image and every candidate,
    in one batched VLM call (eq 3, SPEC step 4). Returns float64 [1, K, C] each, views
    without a contrast image all -inf (padded views)."""
    k, c = len(crops), len(candidates)
    before = torch.full((1, k, c), float("-inf"), dtype=torch.float64)
    after = before.clone()
    active = [j for j in range(k) if contrasts[j] is not None]
    if not active or not c:
        return before, after
    question = prompts.name_prompt(task)
    images = [crops[j] for j in active for _ in candidates] + [contrasts[j] for j in active for _ in candidates]
    answers = candidates * (2 * len(active))
    s = torch.as_tensor(np.asarray(models.vlm.score(images, [question] * len(images), answers)), dtype=torch.float64)
    half = len(active) * c
    before[0, active] = s[:half].reshape(len(active), c)
    after[0, active] = s[half:].reshape(len(active), c)
    return before, after


def run_iteration(
    image: np.ndarray,
    previous_mask: np.ndarray | None,
    weights: NameWeights,
    models: Models,
    cfg: EngineConfig,
    iteration: int,
    timer: StageTimer,
) -> tuple[np.ndarray, IterationTrace]:
    """One iteration of INT on X_i (float32 [H, W, 3] in 0..255). Returns M_i float32 [H, W]."""
    tr = IterationTrace(iteration=iteration)
    sec = tr.seconds
    h, w = image.shape[:2]
    with timer.stage(sec, "patches"):
        views = patches.views(h, w, cfg.active_splits)
        crops = [np.ascontiguousarray(np.clip(np.round(patches.crop(image, v)), 0, 255).astype(np.uint8)) for v in views]
    with timer.stage(sec, "propose"):
        proposals = propose(models, crops, views, cfg.task, cfg.max_new_tokens)
    candidates = prompts.candidate_list(proposals)
    tr.candidates = list(candidates)
    if not candidates:
        pick, tr.pick_source = cfg.task, "task prompt (no candidate name parsed)"
    elif not cfg.psnm or len(candidates) == 1:
        pick, tr.pick_source = candidates[0], "most frequent name" if not cfg.psnm else "only candidate"
    else:
        with timer.stage(sec, "inpaint"):
            to_remove = contrast_masks(views, proposals, previous_mask, cfg)
            jobs = [j for j, m in enumerate(to_remove) if m is not None]
            texts = [
                prompts.inpaint_prompts(proposals[j].foreground or NO_NAME_FOREGROUND, proposals[j].background or NO_NAME_BACKGROUND, cfg.task)
                for j in jobs
            ]
            filled = models.inpainter.inpaint(
                [crops[j] for j in jobs], [to_remove[j].astype(np.float32) for j in jobs],
                [t[0] for t in texts], [t[1] for t in texts],
                [cfg.seed * 1_000_003 + iteration * 97 + j for j in jobs],
            ) if jobs else []
            contrasts: list[np.ndarray | None] = [None] * len(views)
            for j, out in zip(jobs, filled):
                contrasts[j] = out
        with timer.stage(sec, "score"):
            s_before, s_after = negative_mining_scores(models, crops, contrasts, candidates, cfg.task)
        with timer.stage(sec, "mine"):
            history = weights.history(candidates) if cfg.pnm else torch.ones((1, len(candidates)), dtype=torch.float64)
            index, scores, new_history = mine(s_before, s_after, history, cfg.eps)
            if cfg.pnm:
                weights.update(candidates, scores, new_history)
        view_pick, view_gain = view_gains(s_before, s_after)
        active = torch.isfinite(s_before[0]).any(dim=-1).tolist()
        tr.view_picks = [candidates[int(j)] if on else None for j, on in zip(view_pick[0], active)]
        tr.view_gains = view_gain[0].tolist()
        tr.scores = dict(zip(candidates, scores[0].tolist()))
        tr.weights_before = dict(zip(candidates, history[0].tolist()))
        pick, tr.pick_source = candidates[int(index[0])], "negative mining"
    tr.pick = pick
    tr.views = [
        {"name": v.name, "box": list(v.box), "answer_box": p.box_text[:200], "answer_name": p.name_text[:200],
         "box_parsed": list(p.box) if p.box else None, "foreground": p.foreground, "background": p.background}
        for v, p in zip(views, proposals)
    ]
    with timer.stage(sec, "detect"):
        boxes, box_scores = masks.detect(models.detector, crops, views, pick, cfg.box_threshold, cfg.text_threshold, cfg.nms_iou)
    tr.boxes, tr.box_scores = boxes.tolist(), box_scores.tolist()
    with timer.stage(sec, "segment"):
        view_masks, _ = masks.segment_views(
            models.segmenter, models.clip, crops, views, boxes, pick,
            cfg.positive_points, cfg.negative_points, cfg.points_grid, cfg.view_box_overlap,
        )
    with timer.stage(sec, "weight"):
        pasted = torch.stack([patches.paste(torch.from_numpy(np.asarray(m, np.float32)), v, h, w) for m, v in zip(view_masks, views)])
        if cfg.smg:
            sims = masks.mask_similarity(models.clip, crops, view_masks, pick)
            weights_k = masks.normalise_weights(sims, cfg.mask_weighting, cfg.mask_temperature)
            tr.mask_similarity = [float(s) if np.isfinite(s) else None for s in sims]
            tr.mask_weights = weights_k.tolist()
            mask = masks.combine(pasted, weights_k)
        else:
            mask = masks.combine(pasted, None)
    tr.mask_area = float(mask.mean())
    return mask.numpy(), tr


def run(image: np.ndarray, models: Models, cfg: EngineConfig, source: str = "<array>",
        original_size: tuple[int, int] | None = None, conversions: tuple[str, ...] = ()) -> Result:
    """INT on one image (uint8 [H, W, 3] at working size): I iterations, then eq 13.

    Randomness (the inpainting noise) comes from ``cfg.seed`` only: the same image, config
    and models give the same masks.
    """
    start = time.perf_counter()
    h, w = image.shape[:2]
    original_size = original_size or (h, w)
    trace = ImageTrace(source, original_size, (h, w), list(conversions), cfg.task)
    timer = StageTimer(cfg.models.device)
    weights = NameWeights(cfg.eps)
    x = image.astype(np.float32)
    iteration_masks: list[np.ndarray] = []
    previous: np.ndarray | None = None
    for i in range(cfg.iterations):
        mask, tr = run_iteration(x, previous, weights, models, cfg, i, timer)
        with timer.stage(tr.seconds, "fuse"):
            x = fuse.reweight(torch.from_numpy(x), torch.from_numpy(mask), cfg.reweight_w).numpy()
        trace.iterations.append(tr)
        iteration_masks.append(mask)
        if cfg.early_stop_tol is not None and previous is not None and trace.iterations[-2].pick == tr.pick:
            if fuse.mask_change(torch.from_numpy(previous), torch.from_numpy(mask)) < cfg.early_stop_tol:
                trace.stopped_early = True
                previous = mask
                break
        previous = mask
    best, soft = fuse.final_mask([torch.from_numpy(m) for m in iteration_masks])
    trace.final_iteration = best
    soft_full = to_original_size(soft.numpy(), original_size)
    binary = fuse.binarise(torch.from_numpy(soft_full), cfg.binary_threshold).numpy()
    trace.seconds_total = time.perf_counter() - start
    return Result(soft_full, binary, iteration_masks, trace)


def segment_image(image: LoadedImage, models: Models, cfg: EngineConfig) -> Result:
    """``run`` on an image read by ``io.read_image``; masks come back at its original size."""
    return run(image.pixels, models, cfg, image.path, image.original_size, image.conversions)
