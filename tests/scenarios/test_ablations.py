"""Each ablation switch (paper Table 3c) changes exactly its step: the other steps' model
calls, inputs and outputs, are unchanged. Baselines are configurations of the same engine."""

import numpy as np
import pytest

from int_engine.config import EngineConfig, preset_config
from int_engine.pipeline import run
from int_engine.testing import ColourWorld, Thing, scripted_models
from int_engine.testing.recorder import Recorder, same
from int_engine.testing.scenes import compose, ellipse

H, W = 128, 160
WORLD = ColourWorld(
    [
        Thing("bark", (120, 80, 40), kind="background"),
        Thing("frog", (70, 140, 50)),
        Thing("snake", (150, 40, 150), confusions={"bark": 0.08}),
    ]
)


def recorded(scene, **cfg):
    rec = Recorder(scripted_models(WORLD))
    result = run(scene.image, rec.wrapped(), EngineConfig(**cfg))
    return rec, result


def assert_same_calls(a, b, role, method):
    ca, cb = a.of(role, method), b.of(role, method)
    assert len(ca) == len(cb) > 0, (role, method, len(ca), len(cb))
    for x, y in zip(ca, cb):
        assert same(x.args, y.args) and same(x.result, y.result), (role, method)


@pytest.fixture(scope="module")
def big_frog():
    """A frog the VLM names in most views (snake in the others): mining and frequency agree."""
    return compose(WORLD, "bark", [("frog", ellipse(H, W, 80, 40, 40, 22))], H, W, seed=11)


@pytest.fixture(scope="module")
def hidden_frog():
    return compose(WORLD, "bark", [("frog", ellipse(H, W, 120, 40, 14, 10))], H, W, seed=12)


def test_psnm_off_removes_only_inpainting_and_scoring(big_frog):
    on, r_on = recorded(big_frog, iterations=2)
    off, r_off = recorded(big_frog, iterations=2, psnm=False)
    assert [it.pick for it in r_on.trace.iterations] == [it.pick for it in r_off.trace.iterations] == ["frog", "frog"]
    assert on.of("inpainter", "inpaint") and on.of("vlm", "score")
    assert not off.of("inpainter", "inpaint") and not off.of("vlm", "score")
    for role, method in [
        ("vlm", "generate"),
        ("detector", "detect"),
        ("segmenter", "segment"),
        ("clip", "similarity_maps"),
        ("clip", "image_text_similarity"),
    ]:
        assert_same_calls(on, off, role, method)
    assert np.array_equal(r_on.soft, r_off.soft)


def test_pnm_off_changes_only_the_weights_of_eq_6_7(hidden_frog):
    on, r_on = recorded(hidden_frog, iterations=3)
    off, r_off = recorded(hidden_frog, iterations=3, pnm=False)
    for role, method in [
        ("vlm", "generate"),
        ("vlm", "score"),
        ("inpainter", "inpaint"),
        ("detector", "detect"),
        ("segmenter", "segment"),
        ("clip", "similarity_maps"),
        ("clip", "image_text_similarity"),
    ]:
        assert_same_calls(on, off, role, method)
    for it_on, it_off in zip(r_on.trace.iterations[1:], r_off.trace.iterations[1:]):
        assert set(it_off.weights_before.values()) == {1.0}
        assert it_on.weights_before != it_off.weights_before
        for name, score in it_off.scores.items():  # Ď = D · W: only W differs
            assert it_on.scores[name] == pytest.approx(score * it_on.weights_before[name])


def test_smg_off_removes_only_the_clip_mask_weighting(hidden_frog):
    on, r_on = recorded(hidden_frog, iterations=1)
    off, r_off = recorded(hidden_frog, iterations=1, smg=False)
    for role, method in [
        ("vlm", "generate"),
        ("vlm", "score"),
        ("inpainter", "inpaint"),
        ("detector", "detect"),
        ("segmenter", "segment"),
        ("clip", "similarity_maps"),
    ]:
        assert_same_calls(on, off, role, method)
    assert on.of("clip", "image_text_similarity") and not off.of("clip", "image_text_similarity")
    view_masks = on.of("segmenter", "segment")[0].result
    union = np.zeros((H, W), np.float32)
    for view, m in zip(r_on.trace.iterations[0].views, view_masks):
        x0, y0, x1, y1 = view["box"]
        union[y0:y1, x0:x1] = np.maximum(union[y0:y1, x0:x1], (m > 0.5).astype(np.float32))
    assert np.array_equal(r_off.soft, union)  # M_i = union of SAM's binary masks


def test_hcg_off_keeps_only_the_whole_image_view(hidden_frog):
    on, _ = recorded(hidden_frog, iterations=1)
    off, r_off = recorded(hidden_frog, iterations=1, hcg=False)
    (g_on,), (g_off,) = on.of("vlm", "generate"), off.of("vlm", "generate")
    images_on, prompts_on, _ = g_on.args
    images_off, prompts_off, _ = g_off.args
    k = len(images_on) // 2  # [P_B for every view] + [P_A for every view]; the whole image is first
    assert len(images_off) == 2
    assert same([images_on[0], images_on[k]], list(images_off))
    assert [prompts_on[0], prompts_on[k]] == list(prompts_off)
    assert [g_on.result[0], g_on.result[k]] == g_off.result
    assert [v["name"] for v in r_off.trace.iterations[0].views] == ["whole"]


def test_baseline_presets_are_configurations_of_the_same_engine():
    gensam, promac = preset_config("gensam"), preset_config("promac")
    assert (gensam.hcg, gensam.psnm, gensam.pnm, gensam.smg) == (False, False, False, True)
    assert (promac.hcg, promac.psnm, promac.pnm, promac.smg) == (True, True, False, True)


def test_cli_ablation_and_preset_flags_reach_the_config():
    from int_engine.cli import _config, build_parser
    from int_engine.errors import ConfigError

    args = build_parser().parse_args(
        ["segment", "x.png", "--out", "o", "--preset", "promac", "--ablation", "smg=off", "--ablation", "hcg=off"]
    )
    cfg = _config(args)
    assert (cfg.hcg, cfg.psnm, cfg.pnm, cfg.smg) == (False, True, False, False)
    args = build_parser().parse_args(["segment", "x.png", "--out", "o", "--ablation", "pnm=maybe"])
    with pytest.raises(ConfigError, match="pnm=maybe"):
        _config(args)
