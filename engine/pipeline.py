"""One image through INT, top to bottom like the paper.

``image_steps`` is the algorithm (SPEC.md steps 1-11) written once, as a generator: every
model call is *yielded* as a ``ModelCall`` and its result sent back. One iteration is a
sub-step per paper step, composed with ``yield from``: ``propose`` (step 2), ``contrast`` (3),
``score`` (4), ``mine`` (5-6), ``detect`` (7), ``segment`` (8), ``weight`` (9), ``reweight`` (10). Drivers decide how
calls run: ``run`` (eager, one call at a time) is the reference; the scheduler batches
the calls of many images; the throughput benchmark's sequential reference makes one call
per request. All three run exactly these steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Sequence, TypeVar

import numpy as np
import torch

from . import concept as concept_step
from . import contrast as contrast_step
from . import fuse, masks, patches, prompts
from .calls import Call, ModelCall, Reply, run_model
from .config import EngineConfig
from .io import LoadedImage, clear_padding, crop_to_region, pad_to_aspect, padding_note, to_original_size
from .mining import NameWeights, view_gains
from .protocols import Models
from .result import IterationUpdate, Result
from .trace import ImageTrace, IterationTrace, StepRecorder, call_range, cuda_sync

T = TypeVar("T")
Step = Generator[ModelCall, Reply, T]  # a sub-step: yields model calls, returns its value
Steps = Generator[ModelCall, Reply, Any]


def request_seed(cfg: EngineConfig, iteration: int, j: int = 0) -> int:
    """The seed of an image's ``j``-th random request (inpainting noise, VLM sampling) in
    ``iteration``: from ``cfg.seed`` alone, so a request does not depend on what else is in flight."""
    return cfg.seed * 1_000_003 + iteration * 97 + j


@dataclass
class Iteration:
    """What every sub-step of one iteration reads: step 1's views of X_i and the crops each
    model sees, the config, the iteration's index and its recorder (trace and clock)."""

    cfg: EngineConfig
    index: int
    rec: StepRecorder
    views: list[patches.View]
    crops: list[np.ndarray]  # X_i^k, uint8: detection, Spatial CLIP, SAM and CLIP see these
    seen: np.ndarray  # X (``vlm_image: original``) or X_i, float32 [H, W, 3]: the VLM and the inpainter see it
    seen_crops: list[np.ndarray]  # its views, uint8

    @property
    def trace(self) -> IterationTrace:
        return self.rec.trace


@dataclass
class ImageMemory:
    """What later iterations of an image reuse while the VLM sees the same original views: its
    greedy proposals (the same requests, the same answers) and its scores s(c | X_k),
    (view, candidate) -> s (``contrast.score_rows``)."""

    proposals: list[prompts.ViewProposal] | None = None
    before_scores: dict = field(default_factory=dict)


def propose(it: Iteration, earlier: list[prompts.ViewProposal] | None = None) -> Step[list[prompts.ViewProposal]]:
    """Step 2 (eq 2): P_B and P_A for every view in one generate call; each view's proposal.

    ``earlier``: the proposals of an earlier iteration made from the same requests (the original
    views, greedy decoding), which the VLM would answer word for word again: reused, not asked."""
    if earlier is not None:
        it.trace.answers_reused = True
        return earlier
    cfg, k = it.cfg, len(it.views)
    asks = [prompts.box_prompt(cfg.task)] * k + [prompts.name_prompt(cfg.task)] * k
    images = it.seen_crops + it.seen_crops
    if cfg.temperature > 0:  # sampled: each request its own seeded stream, as the inpainting's
        seeds = [request_seed(cfg, it.index, j) for j in range(2 * k)]
        call = Call.GENERATE.call((images, asks, seeds), (cfg.max_new_tokens, cfg.temperature), ("seeds",))
    else:
        call = Call.GENERATE.call((images, asks), (cfg.max_new_tokens,))
    answers = yield from it.rec.ask(call)
    return [prompts.parse_proposal(answers[j], answers[k + j], cfg.task, v.width, v.height) for j, v in enumerate(it.views)]


def contrast(it: Iteration, proposals: list[prompts.ViewProposal], previous: np.ndarray | None) -> Step[list[np.ndarray | None]]:
    """Step 3 (eq 4): X'_k for every view (uint8 [h_k, w_k, 3]), None where nothing is removed;
    what is removed: ``contrast.contrast_masks`` (P_B's boxes, later the previous soft map M_{i-1})."""
    to_remove = contrast_step.contrast_masks(it.views, proposals, previous, it.cfg)
    jobs = contrast_step.inpaint_jobs(it.seen, it.seen_crops, it.views, proposals, to_remove, it.cfg)
    it.trace.inpaint_jobs = len(jobs.images)
    if not jobs.images:
        return [None] * len(it.views)
    seeds = [request_seed(it.cfg, it.index, 0 if j is None else j) for j in jobs.views]
    call = Call.INPAINT.call((jobs.images, jobs.masks, jobs.positive, jobs.negative, seeds))
    filled = yield from it.rec.ask(call)
    return contrast_step.contrast_crops(jobs, filled, it.views)


def score(
    it: Iteration, contrasts: list[np.ndarray | None], candidates: list[str], known: dict | None
) -> Step[tuple[torch.Tensor, torch.Tensor]]:
    """Step 4 (eq 3's inputs): s(c | X_k) and s(c | X'_k), float64 [1, K, C], in one scoring call
    for all views x {before, after} x candidates; views without contrast all -inf. ``known``:
    before-scores of earlier iterations on the same views, reused (``ImageMemory``)."""
    active, rows, answers, asked = contrast_step.score_rows(it.seen_crops, contrasts, candidates, known)
    s = np.zeros(0)
    if rows:
        s = yield from it.rec.ask(Call.SCORE.call((rows, [prompts.name_prompt(it.cfg.task)] * len(rows), answers)))
    s_before, s_after = contrast_step.score_tensors(len(it.views), active, candidates, s, asked, known)
    it.trace.before_scores_reused = len(active) * len(candidates) - len(asked)
    return s_before, s_after


def mine(it: Iteration, s_before: torch.Tensor, s_after: torch.Tensor, candidates: list[str], weights: NameWeights) -> Step[str]:
    """Steps 5-6 (eq 3, 5-7): A_i^u, the candidate whose removal moves the VLM most, weighted by
    the progressive history W (``pnm``), through the ``Miner`` role; W is updated in ``weights``."""
    cfg, tr = it.cfg, it.trace
    history = weights.history(candidates) if cfg.pnm else torch.ones((1, len(candidates)), dtype=torch.float64)
    call = Call.MINE.call(([s_before[0]], [s_after[0]], [history[0]]), (cfg.eps,))
    ((index, scores, new_history),) = yield from it.rec.ask(call)
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


def select_name(
    it: Iteration,
    proposals: list[prompts.ViewProposal],
    previous: np.ndarray | None,
    weights: NameWeights,
    known: dict | None,
) -> Step[str]:
    """Steps 3-6: the candidates (eq 2), then contrast, score and mine them, unless the config or
    a single name leaves nothing to choose."""
    candidates = prompts.candidate_list(proposals)
    weights.observe(candidates)  # every iteration counts for W's start value (eq 6-7)
    it.trace.candidates = list(candidates)
    if not candidates:
        it.trace.pick_source = "task prompt (no candidate name parsed)"
        return it.cfg.task
    if not it.cfg.psnm or len(candidates) == 1:
        it.trace.pick_source = "most frequent name" if not it.cfg.psnm else "only candidate"
        return candidates[0]
    contrasts = yield from contrast(it, proposals, previous)
    s_before, s_after = yield from score(it, contrasts, candidates, known)
    return (yield from mine(it, s_before, s_after, candidates, weights))


def detect(it: Iteration, proposals: list[prompts.ViewProposal], pick: str) -> Step[list[np.ndarray]]:
    """Step 7 (eq 8): the boxes each view's SAM call gets, float32 [N_k, 4] in view pixels
    (``box_source``: GroundingDINO on every view, the VLM's own box, or none)."""
    cfg, tr = it.cfg, it.trace
    if cfg.box_source == "none":
        return [np.zeros((0, 4), np.float32) for _ in it.views]
    if cfg.box_source == "vlm":
        box = masks.vlm_prompt_box(proposals, it.views)
        tr.boxes, tr.box_scores = box.tolist(), [1.0] * len(box)
        return [patches.image_boxes_to_view(box, v, 0.0) for v in it.views]
    params = (cfg.box_threshold, cfg.text_threshold)
    found = yield from it.rec.ask(Call.DETECT.call((it.crops, [pick] * len(it.views)), params))
    merged, merged_scores = masks.merge_detections(found, it.views, cfg.nms_iou)
    tr.boxes, tr.box_scores = merged.tolist(), merged_scores.tolist()
    return masks.view_prompt_boxes(found, it.views, merged, cfg.view_boxes, cfg.view_box_overlap)


def segment(it: Iteration, boxes: list[np.ndarray], pick: str, backgrounds: list[str]) -> Step[list[np.ndarray]]:
    """Step 8 (eq 9): Spatial CLIP's points on every view, then SAM with those points and the
    view's boxes. Returns each view's probability, float32 [h_k, w_k]."""
    cfg, k = it.cfg, len(it.views)
    maps = yield from it.rec.ask(Call.SIMILARITY_MAPS.call((it.crops, [pick] * k, [backgrounds] * k)))
    fixed = (cfg.positive_points, cfg.negative_points) if cfg.points_rule == "fixed" else None
    requests = masks.sam_requests(it.crops, maps, boxes, cfg.points_grid, cfg.points_threshold, fixed)
    for entry, req in zip(it.trace.views, requests):  # view pixels
        entry["sam_boxes"], entry["points"] = np.round(req.boxes, 1).tolist(), int(len(req.points))
    return (yield from it.rec.ask(Call.SEGMENT.call((requests,))))


def segment_concepts(
    it: Iteration, proposals: list[prompts.ViewProposal], boxes: list[np.ndarray], pick: str
) -> Step[list[np.ndarray]]:
    """Steps 7-8 by a concept segmenter (``models.concept``, SAM 3; ``concept.py``): A_i^u as the
    concept, step 7's boxes as positive exemplars and, with ``sam3_negatives: mined``, the P_B
    boxes of the names step 6 rejected as negative ones. Returns each view's probability,
    float32 [h_k, w_k], as ``segment``."""
    cfg, tr = it.cfg, it.trace
    negatives, names = np.zeros((0, 4), np.float32), []
    if cfg.sam3_negatives == "mined":
        negatives, names = concept_step.rejected_boxes(proposals, it.views, pick, np.asarray(tr.boxes, np.float32))
    tr.concept_negatives = names
    requests = concept_step.concept_requests(it.crops, it.views, boxes, negatives, pick)
    for entry, req in zip(tr.views, requests):  # view pixels
        entry["sam_boxes"], entry["negative_boxes"] = np.round(req.positives, 1).tolist(), np.round(req.negatives, 1).tolist()
    return (yield from it.rec.ask(Call.SEGMENT_CONCEPTS.call((requests,), (cfg.concept_threshold,))))


def weight(it: Iteration, view_masks: list[np.ndarray], pick: str) -> Step[tuple[np.ndarray, np.ndarray]]:
    """Step 9 (eq 10-11): CLIP weighs the views' masks. Returns the iteration's soft map M_i
    (float32 [H, W] in [0, 1]) and segmentation M_i^bin (bool [H, W])."""
    cfg, tr, views = it.cfg, it.trace, it.views
    h, w = it.seen.shape[:2]
    pasted = torch.stack([patches.paste(torch.from_numpy(np.asarray(m, np.float32)), v, h, w) for m, v in zip(view_masks, views)])
    if not cfg.smg:
        soft = masks.union(pasted)
        return soft.numpy(), (soft > 0.5).numpy()
    canvas = (h, w) if cfg.mask_score_input == "canvas" else None
    todo, masked = masks.masked_views(it.crops, view_masks, views, canvas)
    sims: Any = []
    if todo:
        sims = yield from it.rec.ask(Call.IMAGE_TEXT_SIMILARITY.call((masked, [pick] * len(todo))))
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


def reweight(x: np.ndarray, original: np.ndarray, soft: np.ndarray, cfg: EngineConfig, rec: StepRecorder) -> np.ndarray:
    """Step 10 (eq 12): X_{i+1} from X_i (or the original X, ``reweight_base``) and M_i,
    float32 [H, W, 3]."""
    base = torch.from_numpy(original) if cfg.reweight_base == "original" else None
    out = fuse.reweight(torch.from_numpy(x), torch.from_numpy(soft), cfg.reweight_w, base).numpy()
    rec.charge("fuse")
    return out


def iteration_steps(
    original: np.ndarray,
    image: np.ndarray,
    previous: np.ndarray | None,
    weights: NameWeights,
    cfg: EngineConfig,
    rec: StepRecorder,
    memory: ImageMemory | None = None,
) -> Step[tuple[np.ndarray, np.ndarray]]:
    """One iteration of INT (SPEC steps 1-9): X the ``original`` image and X_i the reweighted
    ``image`` (float32 [H, W, 3] in 0..255), M_{i-1} the ``previous`` soft map or None. Returns
    M_i (float32 [H, W]) and M_i^bin (bool [H, W]). ``memory``: what the image's earlier
    iterations left for this one to reuse."""
    h, w = image.shape[:2]
    views = patches.views(h, w, cfg.active_splits)  # step 1
    crops = patches.uint8_crops(image, views)
    seen = original if cfg.vlm_image == "original" else image
    it = Iteration(
        cfg, rec.trace.iteration, rec, views, crops, seen, patches.uint8_crops(seen, views) if seen is not image else crops
    )
    rec.charge("patches")
    # the VLM sees the same original views in every iteration: what it answered (greedy) and what
    # it scored on them (teacher forced) holds for later iterations
    same_views = memory is not None and seen is original
    reusable = same_views and cfg.temperature == 0
    proposals = yield from propose(it, memory.proposals if reusable else None)  # step 2
    if reusable:
        memory.proposals = proposals
    known = memory.before_scores if same_views else None
    pick = yield from select_name(it, proposals, previous, weights, known)  # steps 3-6
    it.trace.pick = pick
    it.trace.views = [p.record(v) for v, p in zip(views, proposals)]
    boxes = yield from detect(it, proposals, pick)  # step 7
    if cfg.models.uses_concept:  # steps 7-8 by SAM 3, not in the paper: no Spatial CLIP map
        view_masks = yield from segment_concepts(it, proposals, boxes, pick)
    else:
        backgrounds = [b for b in dict.fromkeys(p.background for p in proposals if p.background) if b != pick]
        it.trace.clip_backgrounds = backgrounds if cfg.clip_background else []
        view_masks = yield from segment(it, boxes, pick, it.trace.clip_backgrounds)  # step 8
    soft, segmented = yield from weight(it, view_masks, pick)  # step 9
    record_masks(it.trace, soft, segmented)
    rec.charge("weight")
    return soft, segmented


def record_masks(tr: IterationTrace, soft: np.ndarray, segmented: np.ndarray) -> None:
    """The iteration's mask sizes in its trace: mean and max of M_i, the share of M_i^bin."""
    tr.mask_area, tr.soft_max, tr.binary_area = float(soft.mean()), float(soft.max()), float(segmented.mean())


def image_steps(
    image: np.ndarray,
    cfg: EngineConfig,
    source: str = "<array>",
    original_size: tuple[int, int] | None = None,
    conversions: tuple[str, ...] = (),
    on_iteration: Callable[[IterationUpdate], None] | None = None,
) -> Generator[ModelCall, Reply, Result]:
    """INT on one image (uint8 [H, W, 3] at working size): I iterations (fewer with
    ``early_stop``), then eq 13. ``on_iteration`` is called with each iteration's
    ``IterationUpdate`` as it lands (on the driver's thread; what it raises fails the image).

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
    memory = ImageMemory()
    for i in range(cfg.iterations):
        rec = StepRecorder(i)
        soft, segmented = yield from iteration_steps(original, x, previous, weights, cfg, rec, memory)
        # the padding is never the object, also not for eq 12 and the next eq 4
        soft, segmented = clear_padding(soft, region), clear_padding(segmented, region)
        rec.mark = time.perf_counter()
        x = reweight(x, original, soft, cfg, rec)  # step 10
        trace.iterations.append(rec.trace)
        softs.append(np.ascontiguousarray(crop_to_region(soft, region)))  # working size, unpadded
        segmentations.append(np.ascontiguousarray(crop_to_region(segmented, region)))
        previous = soft
        if on_iteration is not None:
            binary_i = to_original_size(segmentations[-1].astype(np.float32), original_size) >= 0.5
            on_iteration(IterationUpdate(i, to_original_size(softs[-1], original_size), binary_i, trace))
        if cfg.early_stop and i > 0 and (reason := early_stop_reason(trace, segmentations, cfg)):
            trace.stopped_early, trace.stop_reason = True, reason
            break
    best, _ = fuse.final_mask([torch.from_numpy(m) for m in segmentations])  # eq 13, among the segmentations
    trace.final_iteration = best
    soft_full = to_original_size(softs[best], original_size)
    binary = to_original_size(segmentations[best].astype(np.float32), original_size) >= 0.5
    trace.seconds_total = time.perf_counter() - start
    return Result(soft_full, binary, softs, trace, segmentations)


def early_stop_reason(trace: ImageTrace, segmentations: list[np.ndarray], cfg: EngineConfig) -> str | None:
    """SPEC "Early stop" on the last two iterations (``fuse.stop_reason``), measured on the
    image's own pixels (the segmentations are unpadded)."""
    picks = (trace.iterations[-2].pick, trace.iterations[-1].pick)
    masks_ = (torch.from_numpy(segmentations[-2]), torch.from_numpy(segmentations[-1]))
    return fuse.stop_reason(len(trace.iterations) - 1, picks, masks_, cfg.min_iterations, cfg.stop_iou)


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
