"""One image through INT, top to bottom like the paper.

``image_steps`` is the algorithm (SPEC.md steps 1-11) written once, as a generator: every
model call is *yielded* as a ``ModelCall`` and its result sent back. Drivers decide how
calls run: ``run`` (eager, one call at a time) is the reference; the scheduler batches
the calls of many images; the throughput benchmark's sequential reference makes one call
per request. All three run exactly these steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, Iterable

import cv2
import numpy as np
import torch

from . import fuse, masks, outputs, patches, prompts
from .calls import ModelCall, mine_call, run_model
from .config import EngineConfig
from .io import LoadedImage, clear_padding, crop_to_region, pad_to_aspect, padding_note, to_original_size
from .mining import NameWeights, view_gains
from .protocols import Models
from .trace import ImageTrace, IterationTrace, call_range, cuda_sync

NO_NAME_FOREGROUND = "object"
NO_NAME_BACKGROUND = "background"
Steps = Generator[ModelCall, "Reply", Any]


@dataclass
class Result:
    """The output for one image: ``soft`` float32 [H, W] in [0, 1] and ``binary`` bool [H, W]
    at the original size, the per-iteration masks at working size, and the trace."""

    soft: np.ndarray
    binary: np.ndarray
    iteration_masks: list[np.ndarray]
    trace: ImageTrace

    def save(
        self, folder: str | Path, what: Iterable[str] | str = ("soft", "binary", "overlay"), image: np.ndarray | None = None
    ) -> list[Path]:
        """Write the files ``int-engine segment`` writes per image into ``folder``: ``what`` from
        soft, binary, overlay, rle, iterations, and ``trace.json``; ``image`` uint8 [H, W, 3] (the
        original pixels) for the overlay, else ``trace.source`` is read. Returns the paths written."""
        return outputs.save_result(self, folder, what, image)

    def to_rle(self) -> dict:
        """COCO RLE of ``binary``: ``{"size": [H, W], "counts": str}`` (pycocotools' encoding)."""
        return outputs.to_rle(self.binary)

    def overlay(self, image: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3]: ``image`` (uint8 [H, W, 3], original size) with the mask, the kept
        iteration's boxes and its picked name drawn on it."""
        return outputs.result_overlay(self, image)


@dataclass
class Reply:
    """A call's result, and the seconds of model time this image is charged for it."""

    result: Any
    seconds: float


class _Clock:
    """Charges the steps' own compute to the stage of the call it prepares."""

    def __init__(self) -> None:
        self.mark = time.perf_counter()


def ask(call: ModelCall, tr: IterationTrace, clock: _Clock) -> Generator[ModelCall, Reply, Any]:
    now = time.perf_counter()
    tr.seconds[call.stage] = tr.seconds.get(call.stage, 0.0) + now - clock.mark
    reply = yield call
    tr.seconds[call.stage] += reply.seconds
    clock.mark = time.perf_counter()
    return reply.result


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


def contrast_views(
    image: np.ndarray,
    crops: list[np.ndarray],
    views: list[patches.View],
    proposals: list[prompts.ViewProposal],
    to_remove: list[np.ndarray | None],
    cfg: EngineConfig,
    iteration: int,
    tr: IterationTrace,
    clock: _Clock,
) -> Generator[ModelCall, Reply, list[np.ndarray | None]]:
    """X'_k of eq 4 for every view (uint8 [h_k, w_k, 3]), None where nothing is removed.

    ``inpaint_scope="view"``: one job per view with a mask, on the view, prompted with that view's
    names. ``"image"`` (the authors' released code): one job per image-iteration on the whole
    image X_i with the union of the views' masks, prompted with all the views' background names
    (P_p) and foreground names (P_n); every view with masked pixels gets its crop of the result.
    """
    if cfg.inpaint_scope == "image":
        h, w = image.shape[:2]
        union = np.zeros((h, w), np.uint8)
        for view, m in zip(views, to_remove):
            if m is not None:
                patches.crop(union, view)[...] |= m
        tr.inpaint_jobs = int(union.any())
        if not union.any():
            return [None] * len(views)
        fores = ", ".join(dict.fromkeys(p.foreground for p, m in zip(proposals, to_remove) if m is not None and p.foreground))
        backs = ", ".join(dict.fromkeys(p.background for p, m in zip(proposals, to_remove) if m is not None and p.background))
        positive, negative = prompts.inpaint_prompts(fores or NO_NAME_FOREGROUND, backs or NO_NAME_BACKGROUND, cfg.task)
        whole = np.ascontiguousarray(np.clip(np.round(image), 0, 255).astype(np.uint8))
        (filled,) = yield from ask(
            ModelCall(
                "inpaint",
                "inpaint",
                "inpaint",
                ([whole], [union.astype(np.float32)], [positive], [negative], [cfg.seed * 1_000_003 + iteration * 97]),
            ),
            tr,
            clock,
        )
        return [np.ascontiguousarray(patches.crop(filled, v)) if patches.crop(union, v).any() else None for v in views]
    jobs = [j for j, m in enumerate(to_remove) if m is not None]
    tr.inpaint_jobs = len(jobs)
    contrasts: list[np.ndarray | None] = [None] * len(views)
    if jobs:
        texts = [
            prompts.inpaint_prompts(
                proposals[j].foreground or NO_NAME_FOREGROUND, proposals[j].background or NO_NAME_BACKGROUND, cfg.task
            )
            for j in jobs
        ]
        filled = yield from ask(
            ModelCall(
                "inpaint",
                "inpaint",
                "inpaint",
                (
                    [crops[j] for j in jobs],
                    [to_remove[j].astype(np.float32) for j in jobs],
                    [t[0] for t in texts],
                    [t[1] for t in texts],
                    [cfg.seed * 1_000_003 + iteration * 97 + j for j in jobs],
                ),
            ),
            tr,
            clock,
        )
        for j, out in zip(jobs, filled):
            contrasts[j] = out
    return contrasts


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


def iteration_steps(
    image: np.ndarray,
    previous_mask: np.ndarray | None,
    weights: NameWeights,
    cfg: EngineConfig,
    iteration: int,
    tr: IterationTrace,
) -> Generator[ModelCall, Reply, np.ndarray]:
    """One iteration of INT on X_i (float32 [H, W, 3] in 0..255); returns M_i float32 [H, W]."""
    clock = _Clock()
    h, w = image.shape[:2]
    views = patches.views(h, w, cfg.active_splits)
    crops = [np.ascontiguousarray(np.clip(np.round(patches.crop(image, v)), 0, 255).astype(np.uint8)) for v in views]
    k = len(views)
    tr.seconds["patches"] = time.perf_counter() - clock.mark
    clock.mark = time.perf_counter()

    # step 2 (eq 2): one generate for P_B and P_A over all views
    asks = [prompts.box_prompt(cfg.task)] * k + [prompts.name_prompt(cfg.task)] * k
    answers = yield from ask(ModelCall("propose", "vlm", "generate", (crops + crops, asks), (cfg.max_new_tokens,)), tr, clock)
    proposals = [prompts.parse_proposal(answers[j], answers[k + j], cfg.task, v.width, v.height) for j, v in enumerate(views)]
    candidates = prompts.candidate_list(proposals)
    weights.observe(candidates)  # every iteration counts for W's start value (eq 6-7)
    tr.candidates = list(candidates)
    if not candidates:
        pick, tr.pick_source = cfg.task, "task prompt (no candidate name parsed)"
    elif not cfg.psnm or len(candidates) == 1:
        pick, tr.pick_source = candidates[0], "most frequent name" if not cfg.psnm else "only candidate"
    else:
        # step 3 (eq 4): remove the candidates
        to_remove = contrast_masks(views, proposals, previous_mask, cfg)
        contrasts = yield from contrast_views(image, crops, views, proposals, to_remove, cfg, iteration, tr, clock)
        # step 4 (eq 3): one scoring call for all views x {before, after} x candidates
        active, rows, row_answers = score_rows(crops, contrasts, candidates)
        s = (
            (
                yield from ask(
                    ModelCall("score", "vlm", "score", (rows, [prompts.name_prompt(cfg.task)] * len(rows), row_answers)),
                    tr,
                    clock,
                )
            )
            if rows
            else np.zeros(0)
        )
        s_before, s_after = score_tensors(k, active, candidates, s)
        # steps 5-6 (eq 5-7)
        history = weights.history(candidates) if cfg.pnm else torch.ones((1, len(candidates)), dtype=torch.float64)
        index, scores, new_history = (yield from ask(mine_call(s_before, s_after, history, cfg.eps), tr, clock))[0]
        if cfg.pnm:
            weights.update(candidates, scores, new_history)
        view_pick, view_gain = view_gains(s_before, s_after)
        on = torch.isfinite(s_before[0]).any(dim=-1).tolist()
        tr.view_picks = [candidates[int(j)] if a else None for j, a in zip(view_pick[0], on)]
        tr.view_gains = view_gain[0].tolist()
        tr.scores = dict(zip(candidates, scores.reshape(-1).tolist()))
        tr.weights_before = dict(zip(candidates, history.reshape(-1).tolist()))
        moved = bool(scores.sum() > 0)
        pick = candidates[int(index.reshape(-1)[0])]
        # with Σ Ď = 0 the argmax's tie rule returns the most frequent name: say so
        tr.pick_source = "negative mining" if moved else "no view moved (most frequent name)"
    tr.pick = pick
    tr.views = [
        {
            "name": v.name,
            "box": list(v.box),
            "answer_box": p.box_text[:200],
            "answer_name": p.name_text[:200],
            "box_parsed": list(p.box) if p.box else None,  # normalised to the view padded to a square
            "box_view_px": patches.normalised_box_to_view(p.box, v).round(1).tolist() if p.box else None,
            "foreground": p.foreground,
            "background": p.background,
        }
        for v, p in zip(views, proposals)
    ]
    # step 7 (eq 8)
    found = yield from ask(
        ModelCall("detect", "detector", "detect", (crops, [pick] * k), (cfg.box_threshold, cfg.text_threshold)), tr, clock
    )
    boxes, box_scores = masks.merge_detections(found, views, cfg.nms_iou)
    tr.boxes, tr.box_scores = boxes.tolist(), box_scores.tolist()
    # step 8 (eq 9): spatial CLIP points, then SAM with points and boxes
    maps = yield from ask(ModelCall("segment", "clip", "similarity_maps", (crops, [pick] * k)), tr, clock)
    requests = masks.sam_requests(
        crops, views, maps, boxes, cfg.positive_points, cfg.negative_points, cfg.points_grid, cfg.view_box_overlap
    )
    view_masks = yield from ask(ModelCall("segment", "segmenter", "segment", (requests,)), tr, clock)
    pasted = torch.stack([patches.paste(torch.from_numpy(np.asarray(m, np.float32)), v, h, w) for m, v in zip(view_masks, views)])
    # step 9 (eq 10-11): CLIP scores of the binary masks weight the views' probabilities
    if cfg.smg:
        todo, masked = masks.masked_views(crops, view_masks)
        sims = (
            (yield from ask(ModelCall("weight", "clip", "image_text_similarity", (masked, [pick] * len(todo))), tr, clock))
            if todo
            else []
        )
        sims = masks.view_similarities(k, todo, sims)
        weights_k = masks.normalise_weights(sims, cfg.mask_weighting, cfg.mask_temperature)
        tr.mask_similarity = [float(s) if np.isfinite(s) else None for s in sims]
        tr.mask_weights = weights_k.tolist()
        mask = masks.rescale(masks.weighted_sum(pasted, weights_k, views if cfg.mask_combine == "coverage" else None))
    else:
        mask = masks.union(pasted)
    tr.mask_area = float(mask.mean())
    tr.soft_max = float(mask.max())
    tr.binary_area = float((mask >= cfg.binary_threshold).float().mean())
    tr.seconds["weight"] = tr.seconds.get("weight", 0.0) + time.perf_counter() - clock.mark
    return mask.numpy()


def image_steps(
    image: np.ndarray,
    cfg: EngineConfig,
    source: str = "<array>",
    original_size: tuple[int, int] | None = None,
    conversions: tuple[str, ...] = (),
) -> Generator[ModelCall, Reply, Result]:
    """INT on one image (uint8 [H, W, 3] at working size): I iterations, then eq 13.

    Randomness (the inpainting noise) comes from ``cfg.seed`` only: the same image, config
    and models give the same masks, whatever drives the calls.
    """
    start = time.perf_counter()
    h, w = image.shape[:2]
    original_size = original_size or (h, w)
    # extreme shapes: pad to a bounded aspect ratio before the views are cut (io.pad_to_aspect); masks are cropped back below
    image, region = pad_to_aspect(image, cfg.max_aspect, cfg.min_side)
    conversions = tuple(conversions) + tuple(filter(None, [padding_note(region, image.shape[:2], cfg.max_aspect)]))
    trace = ImageTrace(source, original_size, (h, w), list(conversions), cfg.task)
    weights = NameWeights(cfg.eps)
    x = image.astype(np.float32)
    iteration_masks: list[np.ndarray] = []
    previous: np.ndarray | None = None
    for i in range(cfg.iterations):
        tr = IterationTrace(iteration=i)
        mask = yield from iteration_steps(x, previous, weights, cfg, i, tr)
        mask = clear_padding(mask, region)  # the padding is never the object, also not for eq 12 and the next eq 4
        t0 = time.perf_counter()
        x = fuse.reweight(torch.from_numpy(x), torch.from_numpy(mask), cfg.reweight_w).numpy()  # eq 12
        tr.seconds["fuse"] = time.perf_counter() - t0
        trace.iterations.append(tr)
        iteration_masks.append(np.ascontiguousarray(crop_to_region(mask, region)))  # working size, unpadded
        # the change is measured on the image's pixels only (iteration_masks), not diluted by the padding
        stop = (
            cfg.early_stop_tol is not None
            and previous is not None
            and trace.iterations[-2].pick == tr.pick
            and fuse.mask_change(torch.from_numpy(iteration_masks[-2]), torch.from_numpy(iteration_masks[-1]))
            < cfg.early_stop_tol
        )
        previous = mask
        if stop:
            trace.stopped_early = True
            break
    best, soft = fuse.final_mask([torch.from_numpy(m) for m in iteration_masks])  # eq 13
    trace.final_iteration = best
    soft_full = to_original_size(soft.numpy(), original_size)
    binary = fuse.binarise(torch.from_numpy(soft_full), cfg.binary_threshold).numpy()
    trace.seconds_total = time.perf_counter() - start
    return Result(soft_full, binary, iteration_masks, trace)


def drive(steps: Steps, models: Models, execute: Callable[[Models, ModelCall], Any] = run_model, device: str = "cpu") -> Any:
    """Run a step generator to completion, executing each call as it comes."""
    try:
        call = next(steps)
        while True:
            cuda_sync(device)
            t0 = time.perf_counter()
            with call_range(call):
                result = execute(models, call)
            cuda_sync(device)
            call = steps.send(Reply(result, time.perf_counter() - t0))
    except StopIteration as done:
        return done.value


def run(
    image: np.ndarray,
    models: Models,
    cfg: EngineConfig,
    source: str = "<array>",
    original_size: tuple[int, int] | None = None,
    conversions: tuple[str, ...] = (),
) -> Result:
    """INT on one image, eagerly: the reference every other driver must match."""
    return drive(image_steps(image, cfg, source, original_size, conversions), models, device=cfg.models.sync_device)


def segment_image(image: LoadedImage, models: Models, cfg: EngineConfig) -> Result:
    """``run`` on an image read by ``io.read_image``; masks come back at its original size."""
    return run(image.pixels, models, cfg, image.path, image.original_size, image.conversions)
