"""One image through INT, top to bottom like the paper.

``image_steps`` is the algorithm (SPEC.md steps 1-11) written once, as a generator: every
model call is *yielded* as a ``ModelCall`` and its result sent back. Drivers decide how
calls run: ``run`` (eager, one call at a time) is the reference; the scheduler batches
the calls of many images; the throughput benchmark's sequential reference makes one call
per request. All three run exactly these steps.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Generator, Sequence

import numpy as np
import torch

from . import contrast, fuse, masks, patches, prompts
from .calls import Call, ModelCall, Reply, mine_call, run_model
from .config import EngineConfig
from .io import LoadedImage, clear_padding, crop_to_region, pad_to_aspect, padding_note, to_original_size
from .mining import NameWeights, view_gains
from .protocols import Models
from .result import Result
from .trace import Clock, ImageTrace, IterationTrace, ask, call_range, cuda_sync

NO_NAME_FOREGROUND = "object"
NO_NAME_BACKGROUND = "background"
Steps = Generator[ModelCall, "Reply", Any]


def request_seed(cfg: EngineConfig, iteration: int, j: int = 0) -> int:
    """The seed of an image's ``j``-th random request (inpainting noise, VLM sampling) in
    ``iteration``: from ``cfg.seed`` alone, so a request does not depend on what else is in flight."""
    return cfg.seed * 1_000_003 + iteration * 97 + j


def contrast_views(
    image: np.ndarray,
    crops: list[np.ndarray],
    views: list[patches.View],
    proposals: list[prompts.ViewProposal],
    to_remove: list[np.ndarray | None],
    cfg: EngineConfig,
    iteration: int,
    tr: IterationTrace,
    clock: Clock,
) -> Generator[ModelCall, Reply, list[np.ndarray | None]]:
    """X'_k of eq 4 for every view (uint8 [h_k, w_k, 3]), None where nothing is removed.

    ``image`` and ``crops`` are what the VLM sees (the original X by default). ``inpaint_scope=
    "image"`` (the authors' released code): one job per image-iteration on the whole image with
    the union of the views' masks, prompted with all their background names (P_p) and foreground
    names (P_n); every view with masked pixels gets its crop of the result. A union covering the
    whole image removes nothing. ``"view"``: one job per view with a mask, with that view's names.
    """
    if cfg.inpaint_scope == "image":
        h, w = image.shape[:2]
        union = np.zeros((h, w), np.uint8)
        for view, m in zip(views, to_remove):
            if m is not None:
                patches.crop(union, view)[...] |= m
        if not union.any() or union.all():
            tr.inpaint_jobs = 0
            return [None] * len(views)
        tr.inpaint_jobs = 1
        fores = ", ".join(dict.fromkeys(p.foreground for p, m in zip(proposals, to_remove) if m is not None and p.foreground))
        backs = ", ".join(dict.fromkeys(p.background for p, m in zip(proposals, to_remove) if m is not None and p.background))
        positive, negative = prompts.inpaint_prompts(fores or NO_NAME_FOREGROUND, backs or NO_NAME_BACKGROUND, cfg.task)
        whole = np.ascontiguousarray(np.clip(np.round(image), 0, 255).astype(np.uint8))
        seed = request_seed(cfg, iteration)
        (filled,) = yield from ask(
            Call.INPAINT.call(([whole], [union.astype(np.float32)], [positive], [negative], [seed])), tr, clock
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
        items = (
            [crops[j] for j in jobs],
            [to_remove[j].astype(np.float32) for j in jobs],
            [t[0] for t in texts],
            [t[1] for t in texts],
            [request_seed(cfg, iteration, j) for j in jobs],
        )
        filled = yield from ask(Call.INPAINT.call(items), tr, clock)
        for j, out in zip(jobs, filled):
            contrasts[j] = out
    return contrasts


def propose(
    crops: list[np.ndarray],
    views: list[patches.View],
    cfg: EngineConfig,
    iteration: int,
    tr: IterationTrace,
    clock: Clock,
    earlier: list[prompts.ViewProposal] | None = None,
) -> Generator[ModelCall, Reply, list[prompts.ViewProposal]]:
    """Step 2 (eq 2): P_B and P_A for every view in one generate call; each view's proposal.

    ``earlier``: the proposals of an earlier iteration made from the same requests (the original
    views, greedy decoding), which the VLM would answer word for word again: reused, not asked."""
    if earlier is not None:
        tr.answers_reused = True
        return earlier
    k = len(views)
    asks = [prompts.box_prompt(cfg.task)] * k + [prompts.name_prompt(cfg.task)] * k
    if cfg.temperature > 0:  # sampled: each request its own seeded stream, as the inpainting's
        seeds = [request_seed(cfg, iteration, j) for j in range(2 * k)]
        call = Call.GENERATE.call((crops + crops, asks, seeds), (cfg.max_new_tokens, cfg.temperature), ("seeds",))
    else:
        call = Call.GENERATE.call((crops + crops, asks), (cfg.max_new_tokens,))
    answers = yield from ask(call, tr, clock)
    return [prompts.parse_proposal(answers[j], answers[k + j], cfg.task, v.width, v.height) for j, v in enumerate(views)]


def select_name(
    image: np.ndarray,
    crops: list[np.ndarray],
    views: list[patches.View],
    proposals: list[prompts.ViewProposal],
    previous: np.ndarray | None,
    weights: NameWeights,
    cfg: EngineConfig,
    iteration: int,
    tr: IterationTrace,
    clock: Clock,
    known: dict | None = None,
) -> Generator[ModelCall, Reply, str]:
    """Steps 3-6 (eq 3-7): A_i^u, the candidate whose removal moves the VLM most, accumulated over
    iterations. ``image`` / ``crops``: what the VLM and the inpainter see; ``known``: the scores
    s(c | X_k) of earlier iterations on the same views, (view, candidate) -> s (``score_rows``)."""
    candidates = prompts.candidate_list(proposals)
    weights.observe(candidates)  # every iteration counts for W's start value (eq 6-7)
    tr.candidates = list(candidates)
    if not candidates:
        tr.pick_source = "task prompt (no candidate name parsed)"
        return cfg.task
    if not cfg.psnm or len(candidates) == 1:
        tr.pick_source = "most frequent name" if not cfg.psnm else "only candidate"
        return candidates[0]
    # step 3 (eq 4): remove the candidates
    to_remove = contrast.contrast_masks(views, proposals, previous, cfg)
    contrasts = yield from contrast_views(image, crops, views, proposals, to_remove, cfg, iteration, tr, clock)
    # step 4 (eq 3): one scoring call for all views x {before, after} x candidates
    active, rows, row_answers, asked = contrast.score_rows(crops, contrasts, candidates, known)
    s = np.zeros(0)
    if rows:
        s = yield from ask(Call.SCORE.call((rows, [prompts.name_prompt(cfg.task)] * len(rows), row_answers)), tr, clock)
    s_before, s_after = contrast.score_tensors(len(views), active, candidates, s, asked, known)
    tr.before_scores_reused = len(active) * len(candidates) - len(asked)
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
    # with Σ Ď = 0 the argmax's tie rule returns the most frequent name: say so
    tr.pick_source = "negative mining" if bool(scores.sum() > 0) else "no view moved (most frequent name)"
    return candidates[int(index.reshape(-1)[0])]


def prompt_boxes(
    crops: list[np.ndarray],
    views: list[patches.View],
    proposals: list[prompts.ViewProposal],
    pick: str,
    cfg: EngineConfig,
    tr: IterationTrace,
    clock: Clock,
) -> Generator[ModelCall, Reply, list[np.ndarray]]:
    """Step 7 (eq 8): the boxes each view's SAM call gets, float32 [N_k, 4] in view pixels
    (``box_source``: GroundingDINO on every view, the VLM's own box, or none)."""
    if cfg.box_source == "none":
        return [np.zeros((0, 4), np.float32) for _ in views]
    if cfg.box_source == "vlm":
        box = masks.vlm_prompt_box(proposals, views)
        tr.boxes, tr.box_scores = box.tolist(), [1.0] * len(box)
        return [patches.image_boxes_to_view(box, v, 0.0) for v in views]
    params = (cfg.box_threshold, cfg.text_threshold)
    found = yield from ask(Call.DETECT.call((crops, [pick] * len(views)), params), tr, clock)
    merged, merged_scores = masks.merge_detections(found, views, cfg.nms_iou)
    tr.boxes, tr.box_scores = merged.tolist(), merged_scores.tolist()
    return masks.view_prompt_boxes(found, views, merged, cfg.view_boxes, cfg.view_box_overlap)


def segment_views(
    crops: list[np.ndarray],
    views: list[patches.View],
    boxes: list[np.ndarray],
    pick: str,
    backgrounds: list[str],
    cfg: EngineConfig,
    tr: IterationTrace,
    clock: Clock,
) -> Generator[ModelCall, Reply, list[np.ndarray]]:
    """Step 8 (eq 9): Spatial CLIP's points on every view, then SAM with those points and the
    view's boxes. Returns each view's probability, float32 [h_k, w_k]."""
    k = len(views)
    maps = yield from ask(Call.SIMILARITY_MAPS.call((crops, [pick] * k, [backgrounds] * k)), tr, clock)
    fixed = (cfg.positive_points, cfg.negative_points) if cfg.points_rule == "fixed" else None
    requests = masks.sam_requests(crops, maps, boxes, cfg.points_grid, cfg.points_threshold, fixed)
    for entry, req in zip(tr.views, requests):  # view pixels
        entry["sam_boxes"], entry["points"] = np.round(req.boxes, 1).tolist(), int(len(req.points))
    return (yield from ask(Call.SEGMENT.call((requests,)), tr, clock))


def weigh_masks(
    crops: list[np.ndarray],
    views: list[patches.View],
    view_masks: list[np.ndarray],
    pick: str,
    size: tuple[int, int],
    cfg: EngineConfig,
    tr: IterationTrace,
    clock: Clock,
) -> Generator[ModelCall, Reply, tuple[np.ndarray, np.ndarray]]:
    """Step 9 (eq 10-11): CLIP weighs the views' masks. Returns the iteration's soft map M_i
    (float32 [H, W] in [0, 1]) and segmentation M_i^bin (bool [H, W])."""
    h, w = size
    pasted = torch.stack([patches.paste(torch.from_numpy(np.asarray(m, np.float32)), v, h, w) for m, v in zip(view_masks, views)])
    if not cfg.smg:
        soft = masks.union(pasted)
        return soft.numpy(), (soft > 0.5).numpy()
    canvas = size if cfg.mask_score_input == "canvas" else None
    todo, masked = masks.masked_views(crops, view_masks, views, canvas)
    sims: Any = []
    if todo:
        sims = yield from ask(Call.IMAGE_TEXT_SIMILARITY.call((masked, [pick] * len(todo))), tr, clock)
    sims = masks.view_similarities(len(views), todo, sims)
    weights_k = masks.normalise_weights(sims, cfg.mask_weighting, cfg.mask_temperature)
    tr.mask_similarity = [float(s) if np.isfinite(s) else None for s in sims]
    tr.mask_weights = weights_k.tolist()
    soft = masks.rescale(masks.weighted_sum(pasted, weights_k, views if cfg.mask_combine == "coverage" else None))
    if cfg.segmentation == "selected":
        chosen = masks.selected_views(sims, views, cfg.mask_temperature, cfg.select_weight)
        tr.selected_views = [views[j].name for j in chosen]
        return soft.numpy(), masks.segmentation(pasted, chosen).numpy()
    return soft.numpy(), (soft >= cfg.binary_threshold).numpy()


def iteration_steps(
    original: np.ndarray,
    image: np.ndarray,
    previous_mask: np.ndarray | None,
    weights: NameWeights,
    cfg: EngineConfig,
    iteration: int,
    tr: IterationTrace,
    memory: dict[str, Any] | None = None,
) -> Generator[ModelCall, Reply, tuple[np.ndarray, np.ndarray]]:
    """One iteration of INT: X the ``original`` image and X_i the reweighted ``image`` (float32
    [H, W, 3] in 0..255), M_{i-1} the previous soft map or None. Returns M_i (float32 [H, W]) and
    M_i^bin (bool [H, W]). ``memory`` carries what later iterations of the image may reuse (the
    VLM's greedy proposals and its scores on the original views: the same requests, the same answers)."""
    clock = Clock()
    h, w = image.shape[:2]
    views = patches.views(h, w, cfg.active_splits)
    crops = patches.uint8_crops(image, views)  # X_i^k: detection, Spatial CLIP, SAM and CLIP see these
    seen = original if cfg.vlm_image == "original" else image  # the VLM and the inpainter see these
    seen_crops = patches.uint8_crops(seen, views) if seen is not image else crops
    tr.seconds["patches"] = time.perf_counter() - clock.mark
    clock.mark = time.perf_counter()

    # the VLM sees the same original views in every iteration: what it answered (greedy) and what
    # it scored on them (teacher forced) holds for later iterations
    same_views = memory is not None and seen is original
    reusable = same_views and cfg.temperature == 0
    proposals = yield from propose(seen_crops, views, cfg, iteration, tr, clock, memory.get("proposals") if reusable else None)
    if reusable:
        memory["proposals"] = proposals
    known = memory.setdefault("before_scores", {}) if same_views else None
    pick = yield from select_name(seen, seen_crops, views, proposals, previous_mask, weights, cfg, iteration, tr, clock, known)
    tr.pick = pick
    tr.views = [p.record(v) for v, p in zip(views, proposals)]
    boxes = yield from prompt_boxes(crops, views, proposals, pick, cfg, tr, clock)  # step 7
    backgrounds = [b for b in dict.fromkeys(p.background for p in proposals if p.background) if b != pick]
    tr.clip_backgrounds = backgrounds if cfg.clip_background else []
    view_masks = yield from segment_views(crops, views, boxes, pick, tr.clip_backgrounds, cfg, tr, clock)  # step 8
    soft, segmented = yield from weigh_masks(crops, views, view_masks, pick, (h, w), cfg, tr, clock)  # step 9
    tr.mask_area = float(soft.mean())
    tr.soft_max = float(soft.max())
    tr.binary_area = float(segmented.mean())
    tr.seconds["weight"] = tr.seconds.get("weight", 0.0) + time.perf_counter() - clock.mark
    return soft, segmented


def image_steps(
    image: np.ndarray,
    cfg: EngineConfig,
    source: str = "<array>",
    original_size: tuple[int, int] | None = None,
    conversions: tuple[str, ...] = (),
) -> Generator[ModelCall, Reply, Result]:
    """INT on one image (uint8 [H, W, 3] at working size): I iterations, then eq 13.

    Randomness (the inpainting noise, the VLM's sampling) comes from ``cfg.seed`` only: the same
    image, config and models give the same masks, whatever drives the calls.
    """
    start = time.perf_counter()
    h, w = image.shape[:2]
    original_size = original_size or (h, w)
    # extreme shapes: pad to a bounded aspect ratio before the views are cut (io.pad_to_aspect); masks are cropped back below
    image, region = pad_to_aspect(image, cfg.max_aspect, cfg.min_side)
    conversions = tuple(conversions) + tuple(filter(None, [padding_note(region, image.shape[:2], cfg.max_aspect)]))
    trace = ImageTrace(source, original_size, (h, w), list(conversions), cfg.task)
    weights = NameWeights(cfg.eps)
    original = image.astype(np.float32)
    x = original
    softs: list[np.ndarray] = []
    segmentations: list[np.ndarray] = []
    previous: np.ndarray | None = None
    memory: dict[str, Any] = {}
    for i in range(cfg.iterations):
        tr = IterationTrace(iteration=i)
        soft, segmented = yield from iteration_steps(original, x, previous, weights, cfg, i, tr, memory)
        # the padding is never the object, also not for eq 12 and the next eq 4
        soft, segmented = clear_padding(soft, region), clear_padding(segmented, region)
        t0 = time.perf_counter()
        base = torch.from_numpy(original) if cfg.reweight_base == "original" else None
        x = fuse.reweight(torch.from_numpy(x), torch.from_numpy(soft), cfg.reweight_w, base).numpy()  # eq 12
        tr.seconds["fuse"] = time.perf_counter() - t0
        trace.iterations.append(tr)
        softs.append(np.ascontiguousarray(crop_to_region(soft, region)))  # working size, unpadded
        segmentations.append(np.ascontiguousarray(crop_to_region(segmented, region)))
        # the change is measured on the image's pixels only, not diluted by the padding
        stop = (
            cfg.early_stop_tol is not None
            and previous is not None
            and trace.iterations[-2].pick == tr.pick
            and fuse.mask_change(torch.from_numpy(softs[-2]), torch.from_numpy(softs[-1])) < cfg.early_stop_tol
        )
        previous = soft
        if stop:
            trace.stopped_early = True
            break
    best, _ = fuse.final_mask([torch.from_numpy(m) for m in segmentations])  # eq 13, among the segmentations
    trace.final_iteration = best
    soft_full = to_original_size(softs[best], original_size)
    binary = to_original_size(segmentations[best].astype(np.float32), original_size) >= 0.5
    trace.seconds_total = time.perf_counter() - start
    return Result(soft_full, binary, softs, trace, segmentations)


def drive(
    steps: Steps, models: Models, execute: Callable[[Models, ModelCall], Any] = run_model, device: str | Sequence[str] = "cpu"
) -> Any:
    """Run a step generator to completion, executing each call as it comes; ``device``: the
    device(s) whose queued work each call's timer waits for (``trace.cuda_sync``)."""
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
    return drive(image_steps(image, cfg, source, original_size, conversions), models, device=cfg.models.cuda_devices)


def segment_image(image: LoadedImage, models: Models, cfg: EngineConfig) -> Result:
    """``run`` on an image read by ``io.read_image``; masks come back at its original size."""
    return run(image.pixels, models, cfg, image.path, image.original_size, image.conversions)
