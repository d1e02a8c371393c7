"""The zoo's ``small`` scale (engine/models/tiny_*.py with scale="small"): the cheap roles
(SAM and CLIP) built at their near-real sizes, loaded through the real loader and run once;
and the manifest's scale, which keeps a tiny and a small zoo from standing in for each other."""

import json

import numpy as np
import pytest

from int_engine.bench.synthetic import make_scene
from int_engine.config import ROLES, ModelsConfig
from int_engine.models import tiny_clip, tiny_detector, tiny_inpaint, tiny_segmenter, tiny_vlm
from int_engine.models.load import load_role
from int_engine.models.zoo import MANIFEST, ZOO_VERSION, build_tiny_zoo, is_complete_zoo
from int_engine.protocols import SegmentRequest


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """``<root>/segmenter`` and ``<root>/clip`` at the small scale, and what their builders returned."""
    root = tmp_path_factory.mktemp("small-zoo")
    # built here, not taken from the tiny_zoo fixture: scale="small" on purpose (the zoo is "tiny")
    infos = {
        "segmenter": tiny_segmenter.build(root / "segmenter", seed=0, scale="small"),
        "clip": tiny_clip.build(root / "clip", seed=0, scale="small"),
    }
    return root, infos


@pytest.fixture(scope="module")
def scene():
    return make_scene(0, 128, 160)[0]


def test_small_sam_is_vit_b_shaped_at_256px_and_segments(small, scene):
    root, infos = small
    seg = load_role(ModelsConfig(), "segmenter", root)
    encoder = seg.sam.image_encoder
    assert encoder.img_size == 256
    assert encoder.patch_embed.proj.out_channels == 768 and len(encoder.blocks) == 6
    assert {b.attn.num_heads for b in encoder.blocks} == {12}
    # vit_b's global blocks 2 and 5; the others windowed
    assert [i for i, b in enumerate(encoder.blocks) if b.window_size == 0] == [2, 5]
    assert seg.sam.prompt_encoder.embed_dim == 256 and seg.sam.mask_decoder.transformer_dim == 256

    params = sum(p.numel() for p in seg.sam.parameters())
    assert params == infos["segmenter"]["params"]
    assert 45e6 < params < 52e6, params  # 48.2M: 6 of vit_b's 12 blocks plus the real decoder

    box = np.array([[30, 20, 120, 100]], np.float32)
    (mask,) = seg.segment([SegmentRequest(scene, boxes=box)])
    assert mask.shape == scene.shape[:2] and mask.dtype == np.float32
    assert 0.0 <= mask.min() and mask.max() <= 1.0  # SAM's mask probability


def test_small_clip_is_vit_b16_shaped_and_scores(small, scene):
    root, infos = small
    clip = load_role(ModelsConfig(), "clip", root)
    visual = clip.model.visual
    assert tuple(visual.image_size) == (224, 224) and tuple(visual.grid_size) == (14, 14)
    assert visual.transformer.width == 768 and len(visual.transformer.resblocks) == 6
    assert clip.model.transformer.width == 512 and clip.model.vocab_size == 49408

    params = sum(p.numel() for p in clip.model.parameters())
    assert params == infos["clip"]["params"]
    assert 85e6 < params < 92e6, params  # 88.2M, of which 25.3M is the 49408 x 512 token embedding

    (smap,) = clip.similarity_maps([scene], ["frog"])
    assert smap.shape == (14, 14) and 0.0 <= smap.min() < smap.max() <= 1.0  # ViT-B/16's patch grid
    sims = clip.image_text_similarity([scene, scene], ["frog", "a photo of a lizard"])
    assert sims.shape == (2,) and np.all(np.abs(sims) <= 1.0) and sims[0] != sims[1]


def _write_manifest(directory, **fields):
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {"zoo": "tiny", "version": ZOO_VERSION, "seed": 0, "models": {r: {} for r in ROLES}, **fields}
    (directory / MANIFEST).write_text(json.dumps(manifest))


def test_is_complete_zoo_accepts_only_the_requested_scale(tmp_path):
    _write_manifest(tmp_path / "small", zoo="small", scale="small")
    assert is_complete_zoo(tmp_path / "small", scale="small")
    assert not is_complete_zoo(tmp_path / "small")  # the default asks for tiny
    _write_manifest(tmp_path / "tiny", scale="tiny")
    assert is_complete_zoo(tmp_path / "tiny") and not is_complete_zoo(tmp_path / "tiny", scale="small")
    _write_manifest(tmp_path / "old")  # written before scales existed: tiny
    assert is_complete_zoo(tmp_path / "old") and not is_complete_zoo(tmp_path / "old", scale="small")


@pytest.mark.parametrize("builder", [tiny_vlm, tiny_inpaint, tiny_detector, tiny_segmenter, tiny_clip])
def test_builders_refuse_an_unknown_scale_before_writing(builder, tmp_path):
    with pytest.raises(ValueError, match="unknown zoo scale 'huge'"):
        builder.build(tmp_path / "m", scale="huge")
    assert not (tmp_path / "m").exists()


def test_zoo_refuses_an_unknown_scale(tmp_path):
    with pytest.raises(ValueError, match="unknown scale 'huge'"):
        build_tiny_zoo(tmp_path / "zoo", scale="huge")
    assert not (tmp_path / "zoo").exists()
