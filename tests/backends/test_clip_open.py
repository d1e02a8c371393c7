"""OpenClipModel on the tiny zoo's CLIP: similarities, surgery maps, batching, loading errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from int_engine.backends.clip_open import OpenClipModel, surgery_forward
from int_engine.backends.open_clip_shim import vit_embeds
from int_engine.errors import ModelLoadError
from int_engine.models.zoo import read_manifest
from int_engine.protocols import Clip

TEXTS = ["a frog", "a snake on a branch", "a frog", "polyp"]


@pytest.fixture(scope="module")
def clip_dir(tiny_zoo, tiny_model):
    info = read_manifest(tiny_zoo)["models"]["clip"]
    assert info["format"] == "open_clip-hf" and info["params"] > 0
    return tiny_model("clip")


@pytest.fixture(scope="module")
def clip(clip_dir):
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
    for m in maps:
        assert m.shape == tuple(clip.model.visual.grid_size) and m.dtype == np.float32  # the patch grid
        assert np.all(np.isfinite(m)) and m.min() == 0.0 and m.max() == pytest.approx(1.0)


def _authors_map(clip, image, text, backgrounds, depth=6):
    """Spatial CLIP as the authors' ``clip_surgery`` computes it, written out from their formulas
    (ProMaC utils_mllm.py / clip.py, CLIP Surgery with ``attn_qkv_strategy: kk``) on open_clip's
    modules: attention with q = k in the last ``depth`` blocks on a path without MLPs, features
    divided by their norm over the tokens, the redundant "" subtracted from the prompt-ensembled
    text, per-text min-max, the background map subtracted, min-max again."""
    from int_engine.backends.clip_open import PROMPT_TEMPLATES

    visual = clip.model.visual
    with torch.inference_mode():
        x = vit_embeds(visual, clip._pixels([image]))
        blocks = visual.transformer.resblocks
        start = len(blocks) - depth
        for block in blocks[:start]:
            x = block(x)
        path = x
        for block in blocks[start:]:
            h = block.ln_1(x)
            attn = block.attn
            q, k, v = torch.nn.functional.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
            heads = attn.num_heads
            split = lambda t: t.view(1, t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
            q, k, v = split(q), split(k), split(v)
            scale = q.shape[-1] ** -0.5
            ori = ((q @ k.transpose(-2, -1)) * scale).softmax(-1) @ v
            kk = ((k @ k.transpose(-2, -1)) * scale).softmax(-1) @ v
            merge = lambda t: attn.out_proj(t.transpose(1, 2).reshape(1, -1, heads * t.shape[-1]))  # noqa: E731
            path = path + merge(kk)
            x = x + merge(ori)
            x = x + block.mlp(block.ln_2(x))
        path = path.clone()
        path[:, 0] = x[:, 0]  # the class token from the original path
        feats = visual.ln_post(path) @ visual.proj  # [1, 1 + P, D]
        feats = feats / feats.norm(dim=1, keepdim=True)

        def ensemble(t):
            e = clip.model.encode_text(clip.tokenizer([tpl.format(t) for tpl in PROMPT_TEMPLATES]))
            e = e / e.norm(dim=-1, keepdim=True)
            e = e.mean(0)
            return e / e.norm()

        redundant = ensemble("")

        def norm_map(t):
            sm = (feats @ (ensemble(t) - redundant))[0, 1:]
            return (sm - sm.min()) / (sm.max() - sm.min())

        sm = norm_map(text)
        if backgrounds:
            sm = sm - torch.stack([norm_map(b) for b in backgrounds]).mean(0)
            sm = (sm - sm.min()) / (sm.max() - sm.min())
    return sm.view(*visual.grid_size).numpy()


def test_maps_are_the_authors_spatial_clip(clip_dir, images):
    """SPEC step 8: the map equals the authors' computation, with and without background names."""
    deep = OpenClipModel.load(clip_dir, surgery_depth=2)  # the tiny tower has 2 blocks
    for image, text, backgrounds in [
        (images[0], "frog", ["bark"]),
        (images[1], "polyp", []),
        (images[2], "frog", ["bark", "leaf"]),
    ]:
        (got,) = deep.similarity_maps([image], [text], [backgrounds])
        np.testing.assert_allclose(got, _authors_map(deep, image, text, backgrounds, depth=2), atol=1e-5)


def test_each_of_the_authors_choices_changes_the_map(clip_dir, images):
    """kk vs CLIP Surgery's vv, the prompt ensemble, the norm over tokens, the background map:
    each is a real switch (the defaults are the authors')."""
    image, text = images[0], "frog"
    base = OpenClipModel.load(clip_dir)
    assert (base.surgery_attention, base.prompt_ensemble, base.feature_norm) == ("kk", True, "tokens")
    (ref,) = base.similarity_maps([image], [text], [["bark"]])
    variants = [
        OpenClipModel.load(clip_dir, surgery_attention="vv").similarity_maps([image], [text], [["bark"]])[0],
        OpenClipModel.load(clip_dir, prompt_ensemble=False).similarity_maps([image], [text], [["bark"]])[0],
        OpenClipModel.load(clip_dir, feature_norm="channels").similarity_maps([image], [text], [["bark"]])[0],
        base.similarity_maps([image], [text], [[]])[0],
        base.similarity_maps([image], [text])[0],
    ]
    for other in variants:
        assert np.abs(other - ref).max() > 1e-3
    np.testing.assert_array_equal(variants[3], variants[4])  # no background names: no subtraction
    with pytest.raises(ModelLoadError, match="surgery_attention"):
        OpenClipModel.load(clip_dir, surgery_attention="qq")


def test_openai_weights_need_quick_gelu(clip_dir, tmp_path):
    """OpenAI's CLIP was trained with QuickGELU, which open_clip builds only when model_cfg says so:
    a checkpoint named for OpenAI's weights without it is refused, with the fix in the message."""
    named = tmp_path / "models--timm--vit_base_patch16_clip_224.openai"
    shutil.copytree(clip_dir, named)
    with pytest.raises(ModelLoadError, match="quick_gelu") as err:
        OpenClipModel.load(named)
    assert str(named) in str(err.value) and "QuickGELU" in str(err.value)
    forced = OpenClipModel.load(named, quick_gelu=True)
    assert any(type(m).__name__ == "QuickGELU" for m in forced.model.visual.modules())
    config = json.loads((named / "open_clip_config.json").read_text())
    config["model_cfg"]["quick_gelu"] = True
    (named / "open_clip_config.json").write_text(json.dumps(config))
    from_config = OpenClipModel.load(named)
    assert any(type(m).__name__ == "QuickGELU" for m in from_config.model.visual.modules())
    plain = OpenClipModel.load(clip_dir)  # not OpenAI's by name: as its config says (GELU)
    assert not any(type(m).__name__ == "QuickGELU" for m in plain.model.visual.modules())


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
