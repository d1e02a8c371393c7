"""Each paper step, deliberately broken, makes the scenario that guards it fail on an outcome.

A mutation replaces one step function (monkeypatched where the pipeline looks it up), or turns a
default back to one of the engine's earlier readings; the scenarios named for it
(tests/scenarios.py) must then fail on an outcome a user sees (``scenarios.OutcomeFailure``: the
segmentation's IoU, the picked name, a distractor's pixels), with the scenarios' checks of the
trace switched off, so that no mutation is caught only by re-reading the broken function's own
output. Mutations that no scenario catches are listed in KNOWN_GAPS with the reason, and a test
keeps that list honest: if a gap starts being caught, it fails until the gap is moved to MUTATIONS.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import scenarios
import torch
from scenarios import SCENARIOS, OutcomeFailure

import int_engine.calls
import int_engine.contrast
import int_engine.fuse
import int_engine.masks
import int_engine.mining
import int_engine.patches
import int_engine.pipeline
import int_engine.prompts
from int_engine.config import EngineConfig

pytestmark = pytest.mark.scenario

Patch = Callable[[pytest.MonkeyPatch], None]


def eq3_sign_flipped(mp: pytest.MonkeyPatch) -> None:
    """d_k = p(c | X'_k) - p(c | X_k): the rise after removal instead of the drop."""
    original = int_engine.mining.view_gains
    flipped = lambda before, after: original(after, before)  # noqa: E731
    mp.setattr(int_engine.mining, "view_gains", flipped)
    mp.setattr(int_engine.pipeline, "view_gains", flipped)


def w_always_one(mp: pytest.MonkeyPatch) -> None:
    """Eq 6-7 off inside mine: the history W is ignored."""
    import int_engine.kernels.miner as miner

    original = miner.mine_fused  # the Miner's one launch: the kernel, or its torch fallback
    mp.setattr(miner, "mine_fused", lambda sb, sa, history, eps: original(sb, sa, torch.ones_like(history), eps))


def whole_view_only(mp: pytest.MonkeyPatch) -> None:
    """Step 1 makes only the whole image's view."""
    original = int_engine.patches.views
    mp.setattr(int_engine.patches, "views", lambda h, w, splits: original(h, w, ("whole",)))


def task_words_dropped(mp: pytest.MonkeyPatch) -> None:
    """Step 2's names skip every word of the task, the head noun too (the engine's earlier parser)."""
    p = int_engine.prompts

    def parse(text: str, task: str) -> tuple[str | None, str | None]:
        skip, names = set(p._WORD.findall(task.lower())), []
        for raw in p._WORD.findall((text or "").lower()):
            name = None if raw in skip else p.normalise_name(raw)
            if name and name not in names:
                names.append(name)
        return (names[0] if names else None, names[1] if len(names) > 1 else None)

    mp.setattr(p, "parse_names", parse)


def best_box_per_view(mp: pytest.MonkeyPatch) -> None:
    """Eq 8 keeps only each view's highest-scoring detection."""
    original = int_engine.masks.view_prompt_boxes

    def best(found, views, merged, rule, min_overlap):
        boxes = original(found, views, merged, rule, min_overlap)
        return [b[np.argsort(-d.scores)[:1]] if len(b) else b for b, d in zip(boxes, found)]

    mp.setattr(int_engine.masks, "view_prompt_boxes", best)


def with_default(**fields) -> Patch:
    """A mutation that turns the defaults back to an earlier reading of the engine's."""

    def patch(mp: pytest.MonkeyPatch) -> None:
        init = EngineConfig.__init__
        mp.setattr(EngineConfig, "__init__", lambda self, *a, **k: init(self, *a, **{**fields, **k}))

    return patch


def uniform_eq11_weights(mp: pytest.MonkeyPatch) -> None:
    """Eq 11 ignores CLIP: every view with a mask gets the same weight."""

    def uniform(similarity: np.ndarray, mode: str, temperature: float) -> torch.Tensor:
        valid = torch.isfinite(torch.as_tensor(similarity, dtype=torch.float64))
        return valid.double() / max(1, int(valid.sum()))

    mp.setattr(int_engine.masks, "normalise_weights", uniform)


def every_view_selected(mp: pytest.MonkeyPatch) -> None:
    """Step 9's segmentation unites every view's mask, not only those CLIP selects."""
    mp.setattr(int_engine.masks, "selected_views", lambda similarity, views, temperature, level: list(range(len(views))))


def eq11_without_rescale(mp: pytest.MonkeyPatch) -> None:
    """Eq 11's soft map is used as it is, not rescaled to [0, 1] over the image."""
    mp.setattr(int_engine.masks, "rescale", lambda m: m.clamp(0.0, 1.0).float())


def eq13_first_mask(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(int_engine.fuse, "final_mask", lambda masks: (0, masks[0]))


def eq13_last_mask(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(int_engine.fuse, "final_mask", lambda masks: (len(masks) - 1, masks[-1]))


def no_contrast(mp: pytest.MonkeyPatch) -> None:
    """Eq 4 never builds an inpainting mask: no view has a contrast image."""
    mp.setattr(int_engine.contrast, "contrast_masks", lambda views, proposals, previous, cfg: [None] * len(views))


def late_names_start_at_one(mp: pytest.MonkeyPatch) -> None:
    """Step 6: a name first seen after iteration 1 starts at W = 1 instead of ε."""

    def observe(self: int_engine.mining.NameWeights, candidates: list[str]) -> None:
        for name in candidates:
            self.weights.setdefault(name, 1.0)
        self.iterations += 1

    mp.setattr(int_engine.mining.NameWeights, "observe", observe)


def no_reweighting(mp: pytest.MonkeyPatch) -> None:
    """Eq 12 off: X_{i+1} = X_i."""
    mp.setattr(int_engine.fuse, "reweight", lambda image, mask, w, original=None: image)


# mutation -> the scenarios that must each fail with it, on an outcome
MUTATIONS: dict[str, tuple[Patch, tuple[str, ...]]] = {
    "eq 3 sign flipped": (eq3_sign_flipped, ("fig1",)),
    "W always 1 (eq 6-7)": (w_always_one, ("progressive",)),
    "whole view only (step 1)": (whole_view_only, ("patches_quarter",)),
    "task words dropped from the names (step 2)": (task_words_dropped, ("polyp", "skin_lesion")),
    "contrast mask from the thresholded, dilated map (eq 4)": (with_default(contrast_mask="threshold"), ("progressive",)),
    "no contrast (eq 4)": (no_contrast, ("fig1", "eq13")),
    "one box per view (eq 8)": (best_box_per_view, ("one_per_quarter",)),
    "merged boxes by the overlap rule (eq 8-9)": (with_default(view_boxes="overlap"), ("progressive",)),
    "3 + 1 points on a 16 x 16 grid (eq 9)": (with_default(points_rule="fixed", points_grid=16), ("eq13",)),
    "no background map in Spatial CLIP (eq 9)": (with_default(clip_background=False), ("eq13",)),
    "uniform eq 11 weights": (uniform_eq11_weights, ("clip_weighting",)),
    "every view in the segmentation (step 9)": (every_view_selected, ("clip_weighting", "two_instances")),
    "coverage-normalised soft map cut at 0.5 (step 9)": (
        with_default(mask_combine="coverage", segmentation="threshold"),
        ("clip_weighting",),
    ),
    "eq 11 without rescale": (eq11_without_rescale, ("eq13",)),
    "eq 13 first mask": (eq13_first_mask, ("eq13",)),
    "eq 13 last mask": (eq13_last_mask, ("eq13",)),
}

# mutation -> why no scenario catches it
KNOWN_GAPS: dict[str, tuple[Patch, str]] = {
    "late names start at W = 1": (
        late_names_start_at_one,
        "in every scenario the names are already proposed in "
        "iteration 1; tests/steps/test_pipeline.py::test_step6_a_name_first_seen_after_an_iteration_"
        "without_mining_starts_at_eps runs the pipeline with a name first seen in iteration 2",
    ),
    "no reweighting (eq 12)": (
        no_reweighting,
        "the scripted world tells things apart by chromaticity, which eq 12's "
        "brightness scaling leaves unchanged (on purpose: a thing stays the same thing in every "
        "iteration), so no scripted model can see the reweighting; tests/steps/test_fuse_masks.py "
        "checks eq 12's arithmetic",
    ),
    "eq 12 toward X_i instead of X": (
        with_default(reweight_base="current"),
        "as for eq 12 itself: brightness is invisible to the scripted models; "
        "tests/steps/test_fuse_masks.py::test_eq12_reweighting checks both bases",
    ),
    "VLM and inpainter on X_i instead of X": (
        with_default(vlm_image="reweighted"),
        "X_i differs from X by brightness only, which the scripted VLM does not see; "
        "tests/steps/test_pipeline.py::test_the_vlm_and_the_inpainter_see_the_original_image checks what they are given",
    ),
    "eq 10 on the masked view instead of the image-size canvas": (
        with_default(mask_score_input="crop"),
        "in the scenes the views CLIP prefers hold the same object either way, so the selection "
        "changes among good masks only; tests/steps/test_fuse_masks.py::test_eq10_pastes_the_masked_view_on_a_black_canvas "
        "checks the input",
    ),
}


@pytest.fixture
def outcomes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scenarios, "TRACE_CHECKS", False)


_HOLDS: set[str] = set()  # scenarios seen to hold unbroken (outcomes only) in this session


@pytest.mark.parametrize("mutation, scenario", [(m, s) for m, (_, names) in MUTATIONS.items() for s in names])
def test_scenario_fails_on_an_outcome_when_its_step_is_broken(mutation, scenario, monkeypatch, outcomes_only, capsys):
    if scenario not in _HOLDS:
        SCENARIOS[scenario]()  # it holds unbroken ...
        _HOLDS.add(scenario)
    MUTATIONS[mutation][0](monkeypatch)
    with pytest.raises(OutcomeFailure) as caught:
        SCENARIOS[scenario]()  # ... and fails broken, on what a user sees
    line = next(e for e in reversed(caught.traceback) if e.path.name == "scenarios.py" and e.name != "outcome")
    with capsys.disabled():
        print(f"\n[{mutation}] caught by {scenario}: {line.statement.lines[0].strip()} -> {caught.value}")


@pytest.mark.parametrize("mutation", list(KNOWN_GAPS))
def test_known_gaps_are_still_gaps(mutation, monkeypatch, outcomes_only):
    KNOWN_GAPS[mutation][0](monkeypatch)
    for run in SCENARIOS.values():
        run()
