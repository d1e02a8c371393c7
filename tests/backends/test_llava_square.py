"""LLaVA sees what it was trained on (issue 12, item 3): every view padded to a square with the
image processor's mean colour before the VLM, and its P_B boxes read in that square's frame."""

from __future__ import annotations

import importlib.util
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from scenarios import bark_world

import int_engine.contrast as contrast
import int_engine.pipeline as pipeline
from int_engine.backends.llava_image import complete_processor, pad_to_square, processor_fill
from int_engine.backends.vlm_hf import HFLlavaVLM
from int_engine.backends.vlm_vllm import VLLMLlavaVLM
from int_engine.config import EngineConfig
from int_engine.patches import View, normalised_box_to_view, square_frame, views
from int_engine.prompts import parse_box
from int_engine.testing import ModelErrors, ScriptedVLM, scripted_models
from int_engine.testing.scenes import compose, ellipse

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed (pip install 'int-engine[vllm]')")
CLIP_FILL = (122, 116, 104)  # int(255 * CLIP's image_mean), as LLaVA's expand2square is called
PROMPT_B = "This image pertains to the camouflaged animal detection task, output the bounding box of the camouflaged animal."


# ---- padding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("h,w,top,left", [(20, 56, 18, 0), (21, 56, 17, 0), (90, 40, 0, 25), (33, 33, 0, 0)])
def test_pad_to_square_centres_the_image_as_expand2square(h, w, top, left):
    rng = np.random.default_rng(h * w)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    fill = (10, 20, 30)
    out = pad_to_square(image, fill)
    side = max(h, w)
    assert out.shape == (side, side, 3) and out.dtype == np.uint8
    assert square_frame(h, w) == (side, top, left)
    np.testing.assert_array_equal(out[top : top + h, left : left + w], image)  # the round trip
    band = np.ones((side, side), bool)
    band[top : top + h, left : left + w] = False
    assert (out[band] == fill).all()
    if h == w:
        assert out is image


def test_fill_colour_is_the_processors_mean(tiny_zoo):
    vlm = HFLlavaVLM.load(tiny_zoo / "vlm")
    assert processor_fill(vlm.processor.image_processor) == CLIP_FILL
    assert processor_fill(SimpleNamespace(image_mean=(0.5, 0.5, 0.5))) == (127, 127, 127)
    with pytest.raises(ValueError, match="3 channels"):
        processor_fill(SimpleNamespace(image_mean=[0.5]))


# ---- the box frame ------------------------------------------------------------------------------


@pytest.mark.parametrize("h,w", [(64, 160), (160, 64), (50, 50)])
def test_a_square_frame_box_lands_on_the_object_in_the_view(h, w):
    obj = (40.0, 10.0, 60.0, 30.0) if w > h else (10.0, 40.0, 30.0, 48.0)  # view pixels
    side, top, left = square_frame(h, w)
    answer = ((obj[0] + left) / side, (obj[1] + top) / side, (obj[2] + left) / side, (obj[3] + top) / side)
    np.testing.assert_allclose(normalised_box_to_view(answer, View("v", 0, 0, w, h)), obj, atol=1e-4)
    # the parser keeps the answer's frame; pixels are the padded square's
    assert parse_box(f"[{answer[0]:.4f}, {answer[1]:.4f}, {answer[2]:.4f}, {answer[3]:.4f}]", w, h) == pytest.approx(
        answer, abs=1e-4
    )
    px = parse_box(f"[{answer[0] * side}, {answer[1] * side}, {answer[2] * side}, {answer[3] * side}]", w, h)
    assert px == pytest.approx(answer, abs=1e-4)


def test_a_box_on_the_padding_is_clipped_or_none():
    v = View("top", 0, 0, 160, 64)  # S = 160, the view at rows 48..112 of the square
    np.testing.assert_allclose(normalised_box_to_view((0.0, 0.0, 1.0, 1.0), v), [0, 0, 160, 64])
    np.testing.assert_allclose(normalised_box_to_view((0.25, 0.25, 0.5, 0.5), v), [40, 0, 80, 32])
    assert parse_box("[0.1, 0.05, 0.5, 0.25]", 160, 64) is None  # only on the top band
    assert parse_box("[0.1, 0.05, 0.5, 0.25]") is not None  # without the view's size: unchecked


def test_scripted_vlm_answers_in_the_square_frame():
    world = bark_world()
    frog = ellipse(64, 160, 120, 30, 14, 10)
    scene = compose(world, "bark", [("frog", frog)], 64, 160, seed=0)
    vlm = ScriptedVLM(world, errors=ModelErrors.exact())
    (answer,) = vlm.generate([scene.image], [PROMPT_B], 48)
    ys, xs = np.nonzero(frog)
    expected = [xs.min() / 160, (ys.min() + 48) / 160, (xs.max() + 1) / 160, (ys.max() + 49) / 160]
    assert json.loads(answer) == pytest.approx(expected, abs=6e-4)


def test_iteration_one_contrast_masks_cover_the_object(monkeypatch):
    """pipeline.run with exact scripted models on 128 x 160: every view is non-square (the top
    half is 64 x 160), and each view's P_B box removes the frog it shows, not a shifted box."""
    world = bark_world()
    frog = ellipse(128, 160, 120, 30, 14, 10)
    scene = compose(world, "bark", [("frog", frog)], 128, 160, seed=1)
    seen = []

    def spy(vs, proposals, previous, cfg):
        out = original(vs, proposals, previous, cfg)
        seen.append((vs, out, previous is None))
        return out

    original = contrast.contrast_masks
    monkeypatch.setattr(contrast, "contrast_masks", spy)
    cfg = EngineConfig(iterations=1)
    pipeline.run(scene.image, scripted_models(world, errors=ModelErrors.exact()), cfg)
    vs, masks, first = seen[0]
    assert first and [v.name for v in vs] == [v.name for v in views(128, 160, cfg.active_splits)]
    checked = []
    for v, m in zip(vs, masks):
        gt = frog[v.y0 : v.y1, v.x0 : v.x1]
        if gt.sum() < 20:  # a sliver of the frog, or none: not this view's object
            continue
        assert m is not None, v.name
        ys, xs = np.nonzero(gt)
        box = np.zeros_like(gt)
        box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
        assert m[gt].all(), v.name  # the whole frog is removed ...
        assert m.sum() <= box.sum() + 2 * (box.shape[0] + box.shape[1]), v.name  # ... by its own box
        checked.append(v.name)
    assert {"whole", "top", "right", "top_right"} <= set(checked)


# ---- the real backends see a square ---------------------------------------------------------------


def _wide_red() -> np.ndarray:
    image = np.zeros((20, 56, 3), np.uint8)
    image[..., 0] = 255
    return image


def test_vlm_hf_feeds_the_processor_a_padded_square(tiny_zoo):
    vlm = HFLlavaVLM.load(tiny_zoo / "vlm")
    ip = vlm.processor.image_processor
    pixels = vlm._inputs([_wide_red()], [vlm.chat_text(PROMPT_B)], "left")["pixel_values"][0].float().numpy()
    norm = lambda rgb: (np.asarray(rgb) / 255.0 - np.asarray(ip.image_mean)) / np.asarray(ip.image_std)  # noqa: E731
    assert pixels.shape == (3, 56, 56)  # the tiny zoo's 56 px: a 56 x 56 square, resized as is
    # rows 0..17 and 38..55 are the mean-colour bands, the middle the (red) view: nothing cropped
    np.testing.assert_allclose(pixels[:, :16].reshape(3, -1).mean(1), norm(CLIP_FILL), atol=0.02)
    np.testing.assert_allclose(pixels[:, 40:].reshape(3, -1).mean(1), norm(CLIP_FILL), atol=0.02)
    np.testing.assert_allclose(pixels[:, 20:36].reshape(3, -1).mean(1), norm((255, 0, 0)), atol=0.02)


def test_vlm_vllm_requests_carry_a_padded_square(tiny_zoo):
    """The images vLLM is handed (its own processor then only resizes them); no engine needed."""
    hf = HFLlavaVLM.load(tiny_zoo / "vlm")
    vlm = VLLMLlavaVLM(None, hf.processor, prefix_caching=False)
    tall = np.full((90, 40, 3), 7, np.uint8)
    requests = vlm._requests([_wide_red(), tall, _wide_red()], ["a", "b", "c"])
    sizes = [r["multi_modal_data"]["image"].size for r in requests]
    assert sizes == [(56, 56), (90, 90), (56, 56)]
    wide = np.asarray(requests[0]["multi_modal_data"]["image"])
    assert (wide[:18] == CLIP_FILL).all() and (wide[18:38] == (255, 0, 0)).all() and (wide[38:] == CLIP_FILL).all()
    padded_tall = np.asarray(requests[1]["multi_modal_data"]["image"])
    assert (padded_tall[:, :25] == CLIP_FILL).all() and (padded_tall[:, 25:65] == 7).all()


# ---- an older snapshot without patch_size -----------------------------------------------------------


def _old_snapshot(tiny_zoo, tmp_path, drop: tuple[str, ...]):
    out = tmp_path / "vlm"
    shutil.copytree(tiny_zoo / "vlm", out)
    path = out / "processor_config.json"
    fields = json.loads(path.read_text())
    for key in drop:
        fields.pop(key, None)
    path.write_text(json.dumps(fields))
    return out


@pytest.mark.parametrize(
    "drop", [("patch_size",), ("patch_size", "vision_feature_select_strategy", "num_additional_image_tokens")]
)
def test_an_older_snapshot_without_patch_size_generates(tiny_zoo, tmp_path, drop):
    images = [_wide_red(), np.random.default_rng(0).integers(0, 256, (70, 50, 3), dtype=np.uint8)]
    prompts = [PROMPT_B, PROMPT_B]
    expected = HFLlavaVLM.load(tiny_zoo / "vlm").generate(images, prompts, max_new_tokens=6)
    old = HFLlavaVLM.load(_old_snapshot(tiny_zoo, tmp_path, drop))
    assert old.processor.patch_size == 14 and old.processor.vision_feature_select_strategy == "default"
    assert old.generate(images, prompts, max_new_tokens=6) == expected
    assert old.score(images, prompts, ["frog", "tree"]).shape == (2,)


def test_complete_processor_leaves_set_fields_alone():
    config = SimpleNamespace(vision_config=SimpleNamespace(patch_size=14), vision_feature_select_strategy="default")
    proc = SimpleNamespace(patch_size=16, vision_feature_select_strategy="full", num_additional_image_tokens=0)
    complete_processor(proc, config)
    assert (proc.patch_size, proc.vision_feature_select_strategy, proc.num_additional_image_tokens) == (16, "full", 0)
    proc = SimpleNamespace(patch_size=None, vision_feature_select_strategy=None, num_additional_image_tokens=0)
    complete_processor(proc, config)
    assert (proc.patch_size, proc.vision_feature_select_strategy, proc.num_additional_image_tokens) == (14, "default", 1)


@needs_vllm
def test_vllm_on_an_older_snapshot_equals_transformers(tiny_zoo, tmp_path, monkeypatch):
    from int_engine.models.cache import cache_root

    monkeypatch.setenv("VLLM_CACHE_ROOT", str(cache_root() / "vllm"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "inductor"))
    monkeypatch.setenv("VLLM_RPC_BASE_PATH", str(tmp_path / "rpc"))
    monkeypatch.setenv("VLLM_NO_USAGE_STATS", "1")
    monkeypatch.setenv("VLLM_DO_NOT_TRACK", "1")
    old = _old_snapshot(tiny_zoo, tmp_path, ("patch_size",))
    images = [_wide_red(), np.random.default_rng(1).integers(0, 256, (70, 50, 3), dtype=np.uint8)]
    expected = HFLlavaVLM.load(old).generate(images, [PROMPT_B] * 2, max_new_tokens=6)
    with VLLMLlavaVLM.load(old, enforce_eager=True, kv_cache_memory_bytes=64 << 20, block_size=32, max_model_len=512) as vlm:
        assert vlm.processor.patch_size == 14
        assert vlm.generate(images, [PROMPT_B] * 2, max_new_tokens=6) == expected
