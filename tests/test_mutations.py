"""Each paper step, deliberately broken, makes the scenario that guards it fail.

A mutation replaces one step function (monkeypatched where the pipeline looks it up) with a
broken variant; the scenarios named for it (tests/scenarios.py) must then raise AssertionError.
Mutations that no scenario catches are listed in KNOWN_GAPS with the reason, and a test keeps
that list honest: if a gap starts being caught, it fails until the gap is moved to MUTATIONS.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
from scenarios import SCENARIOS

import int_engine.calls
import int_engine.fuse
import int_engine.masks
import int_engine.mining
import int_engine.patches
import int_engine.pipeline

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
    original = int_engine.calls.mine
    mp.setattr(int_engine.calls, "mine", lambda sb, sa, history, eps: original(sb, sa, torch.ones_like(history), eps))


def whole_view_only(mp: pytest.MonkeyPatch) -> None:
    """Step 1 makes only the whole image's view."""
    original = int_engine.patches.views
    mp.setattr(int_engine.patches, "views", lambda h, w, splits: original(h, w, ("whole",)))


def one_box_after_nms(mp: pytest.MonkeyPatch) -> None:
    """Eq 8 keeps only the highest-scoring box of all views."""
    original = int_engine.masks.merge_detections
    mp.setattr(int_engine.masks, "merge_detections", lambda *a: tuple(x[:1] for x in original(*a)))


def uniform_eq11_weights(mp: pytest.MonkeyPatch) -> None:
    """Eq 11 ignores CLIP: every view with a mask gets the same weight."""

    def uniform(similarity: np.ndarray, mode: str, temperature: float) -> torch.Tensor:
        valid = torch.isfinite(torch.as_tensor(similarity, dtype=torch.float64))
        return valid.double() / max(1, int(valid.sum()))

    mp.setattr(int_engine.masks, "normalise_weights", uniform)


def eq11_without_rescale(mp: pytest.MonkeyPatch) -> None:
    """Eq 11's M̃_i is used as it is, not rescaled to [0, 1] over the image."""
    mp.setattr(int_engine.masks, "rescale", lambda m: m.clamp(0.0, 1.0).float())


def eq11_plain_sum(mp: pytest.MonkeyPatch) -> None:
    """Eq 11 as the plain weighted sum (mask_combine="sum") instead of the coverage-normalised one."""
    original = int_engine.masks.weighted_sum
    mp.setattr(int_engine.masks, "weighted_sum", lambda masks, weights, views=None: original(masks, weights, None))


def eq13_first_mask(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(int_engine.fuse, "final_mask", lambda masks: (0, masks[0]))


def eq13_last_mask(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(int_engine.fuse, "final_mask", lambda masks: (len(masks) - 1, masks[-1]))


def no_contrast(mp: pytest.MonkeyPatch) -> None:
    """Eq 4 never builds an inpainting mask: no view has a contrast image."""
    mp.setattr(int_engine.pipeline, "contrast_masks", lambda views, proposals, previous, cfg: [None] * len(views))


def eq11_best_view_only(mp: pytest.MonkeyPatch) -> None:
    """Eq 11 keeps only the view with the highest CLIP score."""

    def best(similarity: np.ndarray, mode: str, temperature: float) -> torch.Tensor:
        s = torch.as_tensor(similarity, dtype=torch.float64)
        out = torch.zeros_like(s)
        if torch.isfinite(s).any():
            out[int(s.argmax())] = 1.0
        return out

    mp.setattr(int_engine.masks, "normalise_weights", best)


def late_names_start_at_one(mp: pytest.MonkeyPatch) -> None:
    """Step 6: a name first seen after iteration 1 starts at W = 1 instead of ε."""

    def observe(self: int_engine.mining.NameWeights, candidates: list[str]) -> None:
        for name in candidates:
            self.weights.setdefault(name, 1.0)
        self.iterations += 1

    mp.setattr(int_engine.mining.NameWeights, "observe", observe)


def no_reweighting(mp: pytest.MonkeyPatch) -> None:
    """Eq 12 off: X_{i+1} = X_i."""
    mp.setattr(int_engine.fuse, "reweight", lambda image, mask, w: image)


# mutation -> the scenarios that must each fail with it
MUTATIONS: dict[str, tuple[Patch, tuple[str, ...]]] = {
    "eq3 sign flipped": (eq3_sign_flipped, ("fig1",)),
    "W always 1": (w_always_one, ("progressive",)),
    "whole view only": (whole_view_only, ("patches_quarter",)),
    "one box after NMS": (one_box_after_nms, ("two_instances",)),
    "uniform eq 11 weights": (uniform_eq11_weights, ("clip_weighting",)),
    "eq 11 without rescale": (eq11_without_rescale, ("centred_large", "fig1")),
    "eq 11 plain sum": (eq11_plain_sum, ("centred_large", "filling_most")),
    "eq 11 best view only": (eq11_best_view_only, ("centred_large", "filling_most")),
    "eq 13 first mask": (eq13_first_mask, ("eq13",)),
    "eq 13 last mask": (eq13_last_mask, ("eq13",)),
    "no contrast": (no_contrast, ("fig1", "eq13")),
}

# mutation -> why no scenario catches it
KNOWN_GAPS: dict[str, tuple[Patch, str]] = {
    "late names start at W = 1": (
        late_names_start_at_one,
        "in every scenario the names are already proposed in "
        "iteration 1; tests/test_pipeline.py::test_step6_a_name_first_seen_after_an_iteration_"
        "without_mining_starts_at_eps runs the pipeline with a name first seen in iteration 2",
    ),
    "no reweighting (eq 12)": (
        no_reweighting,
        "the scripted world tells things apart by chromaticity, which eq 12's "
        "brightness scaling leaves unchanged (on purpose: a thing stays the same thing in every "
        "iteration), so no scripted model can see the reweighting; tests/test_fuse_masks.py "
        "checks eq 12's arithmetic",
    ),
}


@pytest.mark.parametrize("mutation, scenario", [(m, s) for m, (_, names) in MUTATIONS.items() for s in names])
def test_scenario_fails_when_its_step_is_broken(mutation, scenario, monkeypatch):
    SCENARIOS[scenario]()  # it holds unbroken ...
    MUTATIONS[mutation][0](monkeypatch)
    with pytest.raises(AssertionError):
        SCENARIOS[scenario]()  # ... and fails broken


@pytest.mark.parametrize("mutation", list(KNOWN_GAPS))
def test_known_gaps_are_still_gaps(mutation, monkeypatch):
    KNOWN_GAPS[mutation][0](monkeypatch)
    for run in SCENARIOS.values():
        run()
