"""OpenClipModel on the tiny zoo's CLIP: similarities, surgery maps, batching, loading errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from int_engine.backends.clip_open import OpenClipModel, surgery_forward
from int_engine.errors import ModelLoadError
from int_engine.models import tiny_clip
from int_engine.protocols import Clip

TEXTS = ["a frog", "a snake on a branch", "a frog", "polyp"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_clip")
    info = tiny_clip.build(out, seed=0)
    assert info["format"] == "open_clip-hf" and info["params"] > 0
    return out


@pytest.fixture(scope="module")
def clip(clip_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return OpenClipModel.load(clip_dir)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    sizes = [(96, 80), (50, 120), (64, 64), (33, 47)]
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def test_implements_protocol(clip):
    assert isinstance(clip, Clip)


def test_similarity_shape_and_range(clip, images):
    sim = clip.image_text_similarity(images, TEXTS)
    assert sim.shape == (4,) and sim.dtype == np.float32
    assert np.all(np.abs(sim) <= 1.0) and np.all(np.isfinite(sim))
    assert len(np.unique(sim)) > 1


def test_similarity_is_cosine_of_encoders(clip, images):
    # Independent of the backend's batching and text de-duplication: one pair by hand.
    with torch.inference_mode():
        img = clip.model.encode_image(clip._pixels(images[:1]), normalize=True)
        txt = clip.model.encode_text(clip.tokenizer(TEXTS[:1]), normalize=True)
    want = float((img * txt).sum())
    assert clip.image_text_similarity(images[:1], TEXTS[:1])[0] == pytest.approx(want, abs=1e-5)


def test_maps_shape_range_and_not_constant(clip, images):
    maps = clip.similarity_maps(images, TEXTS)
    assert len(maps) == len(images)
    for m, image in zip(maps, images):
        assert m.shape == image.shape[:2] and m.dtype == np.float32
        assert np.all(np.isfinite(m)) and m.min() >= 0.0 and m.max() <= 1.0
        assert m.max() - m.min() > 0.1


def test_maps_depend_on_text(clip, images):
    a, b = clip.similarity_maps([images[0], images[0]], ["a frog", "a snake on a branch"])
    assert np.abs(a - b).max() > 1e-3


def test_batch_equals_one_by_one(clip, images):
    sim = clip.image_text_similarity(images, TEXTS)
    maps = clip.similarity_maps(images, TEXTS)
    for j in range(len(images)):
        assert clip.image_text_similarity([images[j]], [TEXTS[j]])[0] == pytest.approx(sim[j], abs=1e-5)
        np.testing.assert_allclose(clip.similarity_maps([images[j]], [TEXTS[j]])[0], maps[j], atol=1e-4)


def test_deterministic(clip, images):
    np.testing.assert_array_equal(clip.image_text_similarity(images, TEXTS), clip.image_text_similarity(images, TEXTS))
    for a, b in zip(clip.similarity_maps(images, TEXTS), clip.similarity_maps(images, TEXTS)):
        np.testing.assert_array_equal(a, b)


def test_empty_batch(clip):
    assert clip.image_text_similarity([], []).shape == (0,)
    assert clip.similarity_maps([], []) == []


def test_surgery_keeps_the_usual_path(clip, images):
    # The dual path's usual branch must be exactly the model's own forward: this checks the
    # hand-written attention against nn.MultiheadAttention.
    pixels = clip._pixels(images)
    with torch.inference_mode():
        pooled, tokens = surgery_forward(clip.model.visual, pixels, depth=2)
        want = clip.model.visual(pixels)
    torch.testing.assert_close(pooled, want, atol=1e-5, rtol=1e-4)
    assert tokens.shape == (4, 8 * 8, 32)


def test_surgery_depth_changes_the_map(clip_dir, clip, images):
    shallow = OpenClipModel.load(clip_dir, surgery_depth=1)
    a = clip.similarity_maps(images[:1], TEXTS[:1])[0]
    b = shallow.similarity_maps(images[:1], TEXTS[:1])[0]
    assert np.abs(a - b).max() > 1e-3


def test_missing_dir(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match=str(missing)):
        OpenClipModel.load(missing)


def test_missing_config(clip_dir, tmp_path):
    shutil.copy(clip_dir / "open_clip_model.safetensors", tmp_path)
    with pytest.raises(ModelLoadError, match="open_clip_config.json") as err:
        OpenClipModel.load(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_missing_weights(clip_dir, tmp_path):
    shutil.copy(clip_dir / "open_clip_config.json", tmp_path)
    with pytest.raises(ModelLoadError, match="open_clip_model.safetensors") as err:
        OpenClipModel.load(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_config_without_model_cfg(clip_dir, tmp_path):
    shutil.copy(clip_dir / "open_clip_model.safetensors", tmp_path)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"preprocess_cfg": {}}))
    with pytest.raises(ModelLoadError, match="cannot load") as err:
        OpenClipModel.load(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_weights_not_matching_config(clip_dir, tmp_path):
    shutil.copy(clip_dir / "open_clip_model.safetensors", tmp_path)
    config = json.loads((clip_dir / "open_clip_config.json").read_text())
    config["model_cfg"]["vision_cfg"]["width"] = 128
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="cannot load"):
        OpenClipModel.load(tmp_path)
