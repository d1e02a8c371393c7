"""SamSegmenter on the tiny zoo's SAM: masks, unions, batching, loading errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from int_engine.backends.segment_sam import PUBLISHED, SamSegmenter, arch_from_json, build_sam, resolve_checkpoint
from int_engine.errors import ModelLoadError
from int_engine.models.zoo import read_manifest
from int_engine.protocols import Segmenter, SegmentRequest

BOX_A = np.array([[5, 5, 40, 50]], np.float32)
BOX_B = np.array([[30, 40, 75, 90]], np.float32)


@pytest.fixture(scope="module")
def sam_dir(tiny_zoo, tiny_model):
    info = read_manifest(tiny_zoo)["models"]["segmenter"]
    assert info["format"] == "segment-anything" and info["params"] > 0
    return tiny_model("segmenter")


@pytest.fixture(scope="module")
def segmenter(sam_dir):
    return SamSegmenter.load(sam_dir)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, (96, 80, 3), dtype=np.uint8)


def test_implements_protocol(segmenter):
    assert isinstance(segmenter, Segmenter)


def test_mask_shape_dtype_and_values(segmenter, image):
    (mask,) = segmenter.segment([SegmentRequest(image, boxes=BOX_A)])
    assert mask.shape == (96, 80) and mask.dtype == np.float32
    assert 0.0 <= mask.min() and mask.max() <= 1.0 and len(np.unique(mask)) > 2  # a probability, not 0/1
    assert 0 < (mask > 0.5).sum() < mask.size  # the tiny model is random but not degenerate


def test_union_of_two_boxes_covers_each_box(segmenter, image):
    a, b, both = segmenter.segment(
        [
            SegmentRequest(image, boxes=BOX_A),
            SegmentRequest(image, boxes=BOX_B),
            SegmentRequest(image, boxes=np.concatenate([BOX_A, BOX_B])),
        ]
    )
    assert not np.array_equal(a, b)
    # Each box is decoded as its own row, so the request's probability is the max of the single
    # ones, up to the rounding of batch-size-dependent matmuls.
    np.testing.assert_allclose(both, np.maximum(a, b), atol=1e-4)


def test_points_only_and_points_with_boxes(segmenter, image):
    points, labels = np.array([[20, 30], [60, 70]], np.float32), np.array([1, 0])
    only, with_box = segmenter.segment(
        [SegmentRequest(image, points=points, labels=labels), SegmentRequest(image, boxes=BOX_A, points=points, labels=labels)]
    )
    assert only.shape == with_box.shape == (96, 80)
    assert only.sum() > 0 and not np.array_equal(only, with_box)


def test_no_prompt_gives_zeros(segmenter, image):
    (mask,) = segmenter.segment([SegmentRequest(image)])
    assert mask.shape == (96, 80) and mask.dtype == np.float32 and not mask.any()


def test_deterministic(segmenter, image):
    req = SegmentRequest(image, boxes=np.concatenate([BOX_A, BOX_B]))
    np.testing.assert_array_equal(segmenter.segment([req])[0], segmenter.segment([req])[0])


def test_batch_equals_one_by_one(segmenter):
    rng = np.random.default_rng(1)
    reqs = [
        SegmentRequest(rng.integers(0, 256, (64, 100, 3), dtype=np.uint8), boxes=BOX_A),
        SegmentRequest(rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)),
        SegmentRequest(
            rng.integers(0, 256, (50, 50, 3), dtype=np.uint8), points=np.array([[10, 12]], np.float32), labels=np.array([1])
        ),
        SegmentRequest(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), boxes=BOX_B),
    ]
    batched = segmenter.segment(reqs)
    single = [segmenter.segment([r])[0] for r in reqs]
    for got, want, req in zip(batched, single, reqs):
        assert got.shape == req.image.shape[:2]
        # The encoder's batched matmuls may round differently.
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_multimask_output_keeps_one_mask(sam_dir, image):
    """SPEC step 8: by default SAM gives its three masks per prompt and the best-scoring one is kept
    (the authors' setting); ``multimask_output=False`` takes SAM's single mask, another mask."""
    seg = SamSegmenter.load(sam_dir)
    assert seg.multimask_output is True
    request = SegmentRequest(image, points=np.array([[20, 30]], np.float32), labels=np.array([1]))
    (mask,) = seg.segment([request])
    assert mask.shape == (96, 80) and 0.0 <= mask.min() and mask.max() <= 1.0
    (single,) = SamSegmenter.load(sam_dir, multimask_output=False).segment([request])
    assert np.abs(mask - single).max() > 1e-3


def test_missing_dir(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match=str(missing)):
        SamSegmenter.load(missing)


def test_missing_state_dict(tmp_path):
    (tmp_path / "sam_arch.json").write_text(json.dumps({"model_type": "vit_b"}))
    with pytest.raises(ModelLoadError, match=r"missing sam\.pth") as err:
        SamSegmenter.load(tmp_path)
    assert str(tmp_path) in str(err.value)


@pytest.mark.parametrize("text", ["{not json", '{"model_type": "vit_x"}', '{"encoder_depth": 2}', '{"depth": 2}'])
def test_bad_arch_json(sam_dir, tmp_path, text):
    shutil.copy(sam_dir / "sam.pth", tmp_path / "sam.pth")
    (tmp_path / "sam_arch.json").write_text(text)
    with pytest.raises(ModelLoadError, match="sam_arch.json") as err:
        SamSegmenter.load(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_weights_not_matching_arch(sam_dir, tmp_path):
    # A tiny state dict under the published vit_b file name: the arch is read from the
    # name, and the load must fail loudly rather than leave weights random.
    shutil.copy(sam_dir / "sam.pth", tmp_path / "sam_vit_b_01ec64.pth")
    with pytest.raises(ModelLoadError, match="cannot load") as err:
        SamSegmenter.load(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_arch_from_model_type_and_file_name(tmp_path):
    assert arch_from_json({"model_type": "vit_h"}) == PUBLISHED["vit_h"]
    assert arch_from_json({"model_type": "vit_b", "image_size": 512}).image_size == 512
    (tmp_path / "sam_vit_l_0b3195.pth").write_bytes(b"")
    pth, arch = resolve_checkpoint(tmp_path)
    assert pth.name == "sam_vit_l_0b3195.pth" and arch == PUBLISHED["vit_l"]


def test_vit_h_structure_on_meta():
    arch = arch_from_json({"model_type": "vit_h"})
    with torch.device("meta"):  # the structure without 2.5 GB of weights
        sam = build_sam(arch)
    enc = sam.image_encoder
    assert len(enc.blocks) == 32 and enc.patch_embed.proj.out_channels == 1280
    assert [i for i, blk in enumerate(enc.blocks) if blk.window_size == 0] == [7, 15, 23, 31]
    assert enc.blocks[0].attn.num_heads == 16 and enc.img_size == 1024
    assert sam.prompt_encoder.embed_dim == 256
    n_params = sum(p.numel() for p in sam.parameters())
    assert 630e6 < n_params < 645e6  # SAM ViT-H has ~636M parameters


@pytest.mark.parametrize("model_type", sorted(PUBLISHED))
def test_builder_matches_segment_anything_registry(model_type):
    # Same state-dict keys and shapes as segment-anything's own builder: the published
    # .pth files load into what build_sam makes.
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        ours = build_sam(PUBLISHED[model_type]).state_dict()
        theirs = sam_model_registry[model_type]().state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
