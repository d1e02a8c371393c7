"""The whole pipeline on the five real backends (tiny zoo): structure, shapes, determinism."""

import re

import numpy as np
import pytest

from int_engine import IntEngine
from int_engine.bench.synthetic import make_scene
from int_engine.config import EngineConfig, apply_overrides
from int_engine.models.load import load_models
from int_engine.trace import STAGES


@pytest.fixture(scope="module")
def models(tiny_zoo):
    return load_models(EngineConfig().models, tiny_zoo)


def small_config(**kw):
    cfg = EngineConfig(iterations=2, max_new_tokens=12, **kw)
    return apply_overrides(cfg, ["models.inpaint.options.steps=2"])


def test_two_images_two_iterations_all_real_backends(models):
    engine = IntEngine(small_config(), models=models)
    for seed, (h, w) in enumerate([(96, 128), (80, 80)]):
        image, _ = make_scene(seed, h, w)
        r = engine.segment(image)
        assert r.soft.shape == (h, w) and r.soft.dtype == np.float32
        assert 0.0 <= r.soft.min() and r.soft.max() <= 1.0
        assert r.binary.shape == (h, w) and r.binary.dtype == bool
        t = r.trace
        assert len(t.iterations) == 2 and 0 <= t.final_iteration < 2
        for i, it in enumerate(t.iterations):
            assert it.iteration == i
            assert [v["name"] for v in it.views] == [
                "whole",
                "top",
                "bottom",
                "left",
                "right",
                "top_left",
                "top_right",
                "bottom_left",
                "bottom_right",
            ]
            assert it.pick and it.pick_source
            stages = {"patches", "detect", "segment", "weight", "fuse"} | ({"propose"} if i == 0 else set())
            assert set(it.seconds) <= set(STAGES) and stages <= set(it.seconds)
            assert it.answers_reused == (i > 0)  # greedy answers on the original views: asked once
            assert len(it.mask_weights) == 9
            assert abs(sum(it.mask_weights) - 1.0) < 1e-6 or sum(it.mask_weights) == 0
            if it.pick_source == "negative mining":
                assert set(it.scores) == set(it.candidates) and len(it.view_picks) == 9
            for box in it.boxes:
                assert 0 <= box[0] <= box[2] <= w and 0 <= box[1] <= box[3] <= h
        assert np.array_equal(r.soft, np.asarray(r.iteration_masks[t.final_iteration]))
        assert np.array_equal(r.binary, r.iteration_segmentations[t.final_iteration])
        assert all(s.dtype == bool and s.shape == (h, w) for s in r.iteration_segmentations)


def test_same_image_config_and_seed_give_identical_masks(models):
    image, _ = make_scene(3, 64, 96)
    a = IntEngine(small_config(), models=models).segment(image)
    b = IntEngine(small_config(), models=models).segment(image)
    assert np.array_equal(a.soft, b.soft)
    assert [it.pick for it in a.trace.iterations] == [it.pick for it in b.trace.iterations]


def test_ablations_change_the_trace_as_documented(models):
    image, _ = make_scene(4, 64, 64)
    r = IntEngine(small_config(hcg=False, psnm=False, smg=False), models=models).segment(image)
    for it in r.trace.iterations:
        assert [v["name"] for v in it.views] == ["whole"]
        assert "inpaint" not in it.seconds and "score" not in it.seconds
        assert it.mask_weights == []


def _frog_in_a_quarter():
    from int_engine.testing import ColourWorld, Thing
    from int_engine.testing.scenes import compose, ellipse

    world = ColourWorld(
        [
            Thing("bark", (120, 80, 40), kind="background"),
            Thing("frog", (70, 140, 50)),
            Thing("snake", (150, 40, 150), confusions={"bark": 0.08}),
        ]
    )
    return world, compose(world, "bark", [("frog", ellipse(128, 160, 120, 40, 14, 10))], 128, 160, seed=1)


def test_step6_a_name_first_seen_after_an_iteration_without_mining_starts_at_eps():
    """SPEC step 6: iteration 1 has one candidate (no mining); iteration 2 has two. The name seen in
    iteration 1 keeps W = 1, the name first seen in iteration 2 starts at ε."""
    from int_engine.pipeline import run
    from int_engine.testing import scripted_models

    world, scene = _frog_in_a_quarter()
    models = scripted_models(world)
    generate, calls = models.vlm.generate, []

    def first_iteration_sees_only_frogs(images, prompts, max_new_tokens, temperature=0.0, seeds=None):
        calls.append(1)
        answers = generate(images, prompts, max_new_tokens, temperature, seeds)
        return [re.sub("snake", "frog", a, flags=re.IGNORECASE) for a in answers] if len(calls) == 1 else answers

    models.vlm.generate = first_iteration_sees_only_frogs
    # sampled: the VLM is asked again in iteration 2 (greedy answers on the original views are not)
    r = run(scene.image, models, EngineConfig(iterations=2, temperature=0.1))
    one, two = r.trace.iterations
    assert one.candidates == ["frog"] and one.pick_source == "only candidate"
    assert set(two.candidates) == {"frog", "snake"} and two.pick_source == "negative mining"
    assert two.weights_before == {"frog": 1.0, "snake": 1e-3}


def test_trace_says_when_no_view_moved_and_records_the_mask_it_made():
    from int_engine.pipeline import run
    from int_engine.testing import scripted_models

    world, scene = _frog_in_a_quarter()
    # no boxes: iteration 1 has several names but nothing to remove, so Σ Ď = 0
    r = run(scene.image, scripted_models(world, gives_boxes=False), EngineConfig(iterations=1))
    it = r.trace.iterations[0]
    assert len(it.candidates) > 1 and all(g == 0 for g in it.view_gains)
    assert it.pick == it.candidates[0] and it.pick_source == "no view moved (most frequent name)"
    mask = r.iteration_masks[0]
    assert it.soft_max == pytest.approx(float(mask.max()))
    assert it.binary_area == pytest.approx(float(r.iteration_segmentations[0].mean()))
    found = run(scene.image, scripted_models(world), EngineConfig(iterations=1)).trace.iterations[0]
    assert found.pick_source == "negative mining" and found.soft_max == 1.0 and 0 < found.binary_area < 0.1


@pytest.mark.parametrize("scope", ["image", "view"])
def test_inpaint_scope_image_is_one_job_per_iteration_and_views_crop_it(scope):
    from int_engine.pipeline import run
    from int_engine.testing import scripted_models
    from int_engine.testing.recorder import Recorder

    world, scene = _frog_in_a_quarter()
    rec = Recorder(scripted_models(world))
    r = run(scene.image, rec.wrapped(), EngineConfig(iterations=2, inpaint_scope=scope))
    calls = rec.of("inpainter", "inpaint")
    assert [it.inpaint_jobs for it in r.trace.iterations] == [len(c.args[0]) for c in calls]
    if scope == "view":
        assert all(len(c.args[0]) > 1 for c in calls)
        return
    assert all(len(c.args[0]) == 1 for c in calls)
    (image,), (mask,), (positive,), (negative,), _ = calls[0].args
    assert image.shape == scene.image.shape and mask.shape == scene.image.shape[:2]
    # every view whose crop of the union mask is non-empty is scored on its crop of the one result
    score = rec.of("vlm", "score")[0]
    filled = calls[0].result[0]
    after = {id(im) for im in score.args[0][len(score.args[0]) // 2 :]}
    assert len(after) == sum(
        1 for v in r.trace.iterations[0].views if mask[v["box"][1] : v["box"][3], v["box"][0] : v["box"][2]].any()
    )
    for im in score.args[0][len(score.args[0]) // 2 :]:
        assert any(np.array_equal(im, filled[y0:y1, x0:x1]) for x0, y0, x1, y1 in [v["box"] for v in r.trace.iterations[0].views])
    assert "high quality" in positive and "is not a" in negative


def test_the_vlm_and_the_inpainter_see_the_original_image():
    """SPEC step 10: from iteration 2 the VLM (generate and score) and the inpainter see the
    original image X, the detector, Spatial CLIP and SAM the reweighted X_i; ``vlm_image:
    reweighted`` shows X_i to all of them."""
    from int_engine import patches
    from int_engine.pipeline import run
    from int_engine.testing import scripted_models
    from int_engine.testing.recorder import Recorder

    world, scene = _frog_in_a_quarter()
    for setting in ("original", "reweighted"):
        rec = Recorder(scripted_models(world))
        r = run(scene.image, rec.wrapped(), EngineConfig(iterations=2, vlm_image=setting))
        whole = lambda call: call.args[0][0]  # noqa: E731 - the first request's image (the whole view)
        gen, det, inp = rec.of("vlm", "generate"), rec.of("detector", "detect"), rec.of("inpainter", "inpaint")
        score = rec.of("vlm", "score")
        assert not np.array_equal(whole(det[0]), whole(det[1]))  # X_2 differs from X_1 = X
        assert np.array_equal(whole(det[0]), scene.image)
        seen = scene.image if setting == "original" else whole(det[1])  # what iteration 2's VLM and inpainter see
        assert np.array_equal(whole(gen[-1]), scene.image if setting == "original" else seen)
        assert np.array_equal(whole(inp[-1]), seen)
        crops = [patches.crop(seen, v) for v in patches.views(*seen.shape[:2], EngineConfig().splits)]
        rows = score[-1].args[0]
        it2 = r.trace.iterations[1]
        n_before = len(rows) - len(it2.candidates) * sum(p is not None for p in it2.view_picks)  # the rows on X_k asked
        assert all(any(np.array_equal(im, c) for c in crops) for im in rows[:n_before])
        assert n_before + it2.before_scores_reused == len(rows) - n_before  # every view's before-rows, asked or known
        if setting == "original":  # a view scored with the same answers in iteration 1 is not asked again
            assert it2.before_scores_reused > 0
        else:
            assert it2.before_scores_reused == 0


def test_sampled_answers_follow_the_seed():
    """temperature > 0: the VLM samples with one seed per request, from ``seed``: the same seed, the
    same run; another seed, other answers (SPEC "Decoding")."""
    from int_engine.pipeline import run
    from int_engine.testing import scripted_models
    from int_engine.testing.recorder import Recorder

    world, scene = _frog_in_a_quarter()
    answers = []
    for seed in (1, 1, 2):
        rec = Recorder(scripted_models(world))
        run(scene.image, rec.wrapped(), EngineConfig(iterations=1, temperature=0.5, seed=seed))
        (gen,) = rec.of("vlm", "generate")
        images, prompts, max_new_tokens, temperature, seeds = gen.args
        assert temperature == 0.5 and len(seeds) == len(prompts) == 18 and len(set(seeds)) == 18
        answers.append(gen.result)
    assert answers[0] == answers[1] and answers[0] != answers[2]
    rec = Recorder(scripted_models(world))
    run(scene.image, rec.wrapped(), EngineConfig(iterations=1))
    assert len(rec.of("vlm", "generate")[0].args) == 3  # greedy: the three-argument call any VLM answers


@pytest.mark.parametrize("preset", ["promac", "gensam"])
def test_baseline_presets_give_sam_the_vlms_box_or_none(preset):
    """``promac``: the VLM's own box, no GroundingDINO; ``gensam``: no box at all."""
    from int_engine.config import preset_config
    from int_engine.patches import View, normalised_box_to_view
    from int_engine.pipeline import run
    from int_engine.testing import scripted_models
    from int_engine.testing.recorder import Recorder

    world, scene = _frog_in_a_quarter()
    rec = Recorder(scripted_models(world))
    cfg = preset_config(preset)
    r = run(scene.image, rec.wrapped(), apply_overrides(cfg, ["iterations=1"]))
    assert rec.of("detector", "detect") == []
    (seg,) = rec.of("segmenter", "segment")
    requests, it = seg.args[0], r.trace.iterations[0]
    assert len(requests) == len(it.views) == (5 if preset == "promac" else 1)
    if preset == "gensam":
        assert all(len(q.boxes) == 0 for q in requests) and all(len(q.points) for q in requests)
        return
    whole = it.views[0]
    assert whole["name"] == "whole" and whole["box_parsed"] is not None  # this scene's whole view gave a box
    box = normalised_box_to_view(whole["box_parsed"], View("whole", 0, 0, 160, 128))
    np.testing.assert_allclose(requests[0].boxes, box[None], atol=1e-4)  # image pixels = the whole view's
    np.testing.assert_allclose(it.boxes, [box], atol=1e-4)


def test_greedy_answers_on_the_original_views_are_asked_once_per_image():
    """The VLM sees the original views in every iteration (SPEC step 10): greedy decoding would
    answer word for word again, so step 2 asks once per image and later iterations reuse the
    answers; sampled, or on X_i, it asks every iteration."""
    from int_engine.pipeline import run
    from int_engine.testing import scripted_models
    from int_engine.testing.recorder import Recorder

    world, scene = _frog_in_a_quarter()
    for settings, asked in [({}, 1), ({"temperature": 0.5}, 3), ({"vlm_image": "reweighted"}, 3)]:
        rec = Recorder(scripted_models(world))
        r = run(scene.image, rec.wrapped(), EngineConfig(iterations=3, **settings))
        assert len(rec.of("vlm", "generate")) == asked, settings
        assert [it.answers_reused for it in r.trace.iterations] == [False] + [asked == 1] * 2
        answers = [[(v["answer_box"], v["answer_name"]) for v in it.views] for it in r.trace.iterations]
        assert asked > 1 or answers[1] == answers[2] == answers[0]
