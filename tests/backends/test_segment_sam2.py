"""Sam2Segmenter on a tiny SAM 2.1 (transformers' Sam2Model at toy sizes): parity with the model
called the documented way, one prompt at a time; batching; the multimask choice; loading."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import Sam2Model, Sam2Processor, Sam2VideoConfig

from int_engine.backends.segment_sam2 import FORMAT, Sam2Segmenter
from int_engine.errors import ModelLoadError
from int_engine.models import tiny_sam2
from int_engine.models.load import backend_options
from int_engine.protocols import Segmenter, SegmentRequest

RNG = np.random.default_rng(0)
SQUARE = RNG.integers(0, 256, (96, 96, 3), dtype=np.uint8)
WIDE = RNG.integers(0, 256, (60, 170, 3), dtype=np.uint8)
TALL = RNG.integers(0, 256, (150, 70, 3), dtype=np.uint8)
BOX_A = np.array([[5, 5, 40, 50]], np.float32)
BOX_B = np.array([[30, 40, 90, 92]], np.float32)
POINTS = np.array([[20, 30], [60, 70]], np.float32)
LABELS = np.array([1, 0], np.int64)


@pytest.fixture(scope="module")
def sam2_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sam2") / "segmenter"
    info = tiny_sam2.build(out)
    assert info["format"] == FORMAT and info["params"] > 0
    return out


@pytest.fixture(scope="module")
def segmenter(sam2_dir):
    return Sam2Segmenter.load(sam2_dir, batch_size=2, decode_batch=3)


@pytest.fixture(scope="module")
def library(sam2_dir):
    """The model and processor as a user of transformers loads them."""
    return Sam2Model.from_pretrained(sam2_dir).eval(), Sam2Processor.from_pretrained(sam2_dir)


def prompt_outputs(library, image, box=None, points=None, labels=None, multimask=True):
    """One prompt the documented way: processor -> model(...) -> post_process_masks.
    Returns the mask logits at the image's size [M, H, W] and the IoU scores [M]."""
    model, processor = library
    kwargs = {}
    if box is not None:
        kwargs["input_boxes"] = [[[float(v) for v in box]]]
    if points is not None and len(points):
        kwargs["input_points"] = [[points.tolist()]]
        kwargs["input_labels"] = [[labels.tolist()]]
    inputs = processor(images=image, return_tensors="pt", **kwargs)
    with torch.no_grad():
        out = model(**inputs, multimask_output=multimask)
    masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"], binarize=False)[0]
    return masks[0], out.iou_scores[0, 0]


def reference(library, req: SegmentRequest, multimask=True) -> np.ndarray:
    """The protocol's rules over one-prompt calls: per prompt the highest-IoU mask; the maximum
    over boxes (each with all the points); the points alone without a box; zeros with neither."""
    if not len(req.boxes) and not len(req.points):
        return np.zeros(req.image.shape[:2], np.float32)
    best = None
    for box in list(req.boxes) or [None]:
        masks, scores = prompt_outputs(library, req.image, box, req.points, req.labels, multimask)
        prob = torch.sigmoid(masks[scores.argmax()])
        best = prob if best is None else torch.maximum(best, prob)
    return best.numpy()


def mixed_requests() -> list[SegmentRequest]:
    return [
        SegmentRequest(SQUARE, boxes=BOX_A),
        SegmentRequest(SQUARE, points=POINTS, labels=LABELS),
        SegmentRequest(SQUARE, boxes=BOX_B, points=POINTS, labels=LABELS),
        SegmentRequest(SQUARE, boxes=np.concatenate([BOX_A, BOX_B])),
        SegmentRequest(SQUARE),
        SegmentRequest(WIDE, boxes=np.array([[10, 5, 150, 50], [0, 0, 60, 30]], np.float32)),
        SegmentRequest(TALL, points=np.array([[35, 100]], np.float32), labels=np.array([1])),
        SegmentRequest(
            TALL, boxes=np.array([[5, 20, 60, 140]], np.float32), points=np.array([[30, 60]], np.float32), labels=np.array([1])
        ),
        SegmentRequest(SQUARE.copy(), boxes=BOX_B),  # equal pixels: encoded once with SQUARE
    ]


def test_implements_protocol_and_typed_options(segmenter):
    assert isinstance(segmenter, Segmenter)
    assert backend_options(Sam2Segmenter) == {
        "multimask_output": bool,
        "batch_size": int,
        "decode_batch": int,
        "runtime": str,
    }


@pytest.mark.parametrize("index", range(len(mixed_requests())))
def test_each_request_matches_the_library_one_prompt_at_a_time(segmenter, library, index):
    req = mixed_requests()[index]
    (got,) = segmenter.segment([req])
    np.testing.assert_allclose(got, reference(library, req), atol=1e-5, rtol=0)


def test_mixed_batch_equals_one_by_one(segmenter, library):
    requests = mixed_requests()
    before = segmenter.work["encoder_images"]
    batch = segmenter.segment(requests)
    assert segmenter.work["encoder_images"] - before == 3  # SQUARE (and its copy), WIDE, TALL
    for req, got in zip(requests, batch):
        (alone,) = segmenter.segment([req])
        assert got.shape == req.image.shape[:2] and got.dtype == np.float32
        np.testing.assert_allclose(got, alone, atol=1e-5, rtol=0)
        np.testing.assert_allclose(got, reference(library, req), atol=1e-5, rtol=0)
    assert not batch[4].any()  # no prompt at all
    assert not np.allclose(batch[0], batch[2], atol=1e-2)  # prompts matter


def test_several_boxes_are_the_maximum_of_single_boxes(segmenter):
    a, b, both = segmenter.segment(
        [
            SegmentRequest(SQUARE, boxes=BOX_A),
            SegmentRequest(SQUARE, boxes=BOX_B),
            SegmentRequest(SQUARE, boxes=np.concatenate([BOX_A, BOX_B])),
        ]
    )
    assert np.abs(a - b).max() > 0.1
    np.testing.assert_allclose(both, np.maximum(a, b), atol=1e-5, rtol=0)


def test_multimask_choice_takes_the_highest_iou_score(segmenter, library):
    boxes = [np.array([[x, y, x + 40, y + 35]], np.float32) for x, y in [(0, 0), (50, 10), (20, 55), (40, 40)]]
    picked = set()
    for box in boxes:
        (got,) = segmenter.segment([SegmentRequest(SQUARE, boxes=box)])
        masks, scores = prompt_outputs(library, SQUARE, box[0])
        probs = torch.sigmoid(masks).numpy()
        best = int(scores.argmax())
        picked.add(best)
        np.testing.assert_allclose(got, probs[best], atol=1e-5, rtol=0)
        for other in set(range(len(probs))) - {best}:
            assert np.abs(got - probs[other]).max() > 1e-2  # another choice would be visible
    assert len(picked) > 1, "every prompt picked the same output: the test cannot tell argmax from a fixed index"


def test_single_mask_option_matches_the_library(sam2_dir, library):
    single = Sam2Segmenter.load(sam2_dir, multimask_output=False)
    req = SegmentRequest(
        WIDE, boxes=np.array([[10, 5, 150, 50]], np.float32), points=np.array([[80, 30]], np.float32), labels=np.array([1])
    )
    (got,) = single.segment([req])
    np.testing.assert_allclose(got, reference(library, req, multimask=False), atol=1e-5, rtol=0)


def test_shapes_and_probability_range(segmenter):
    requests = mixed_requests()
    for req, mask in zip(requests, segmenter.segment(requests)):
        assert mask.shape == req.image.shape[:2] and mask.dtype == np.float32
        assert 0.0 <= mask.min() and mask.max() <= 1.0
    (mask,) = segmenter.segment([SegmentRequest(WIDE, boxes=np.array([[10, 5, 150, 50]], np.float32))])
    assert len(np.unique(mask)) > 2  # a probability, not 0/1
    assert 0 < (mask > 0.5).sum() < mask.size  # random but not degenerate


def test_half_precision_encoder_stays_close(sam2_dir, segmenter):
    half = Sam2Segmenter.load(sam2_dir, dtype="bfloat16")
    assert half.model.vision_encoder.backbone.patch_embed.projection.weight.dtype == torch.bfloat16
    assert half.model.mask_decoder.iou_token.weight.dtype == torch.float32
    req = SegmentRequest(SQUARE, boxes=BOX_B, points=POINTS, labels=LABELS)
    (got,), (want,) = half.segment([req]), segmenter.segment([req])
    assert got.dtype == np.float32 and 0.0 <= got.min() and got.max() <= 1.0
    assert np.abs(got - want).mean() < 0.05


def test_video_checkpoint_loads_its_image_model(sam2_dir, segmenter, tmp_path):
    """facebook/sam2.1-hiera-* ship the video model (model_type sam2_video); Sam2Model reads it."""
    video = tmp_path / "video"
    shutil.copytree(sam2_dir, video)
    image_config = Sam2Model.from_pretrained(sam2_dir).config
    Sam2VideoConfig(
        vision_config=image_config.vision_config.to_dict(),
        prompt_encoder_config=image_config.prompt_encoder_config.to_dict(),
        mask_decoder_config=image_config.mask_decoder_config.to_dict(),
        image_size=tiny_sam2.IMAGE_SIZE,
    ).save_pretrained(video)
    assert json.loads((video / "config.json").read_text())["model_type"] == "sam2_video"
    req = SegmentRequest(TALL, boxes=np.array([[5, 20, 60, 140]], np.float32))
    np.testing.assert_allclose(Sam2Segmenter.load(video).segment([req])[0], segmenter.segment([req])[0], atol=1e-6)


def test_bad_paths_give_clear_errors(sam2_dir, tmp_path):
    with pytest.raises(ModelLoadError, match=r"segmenter: model path .*nowhere does not exist.*hf-sam2"):
        Sam2Segmenter.load(tmp_path / "nowhere")
    partial = tmp_path / "partial"
    shutil.copytree(sam2_dir, partial)
    (partial / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"segmenter: .*partial is not a hf-sam2 directory: missing model.safetensors"):
        Sam2Segmenter.load(partial)
    other = tmp_path / "other"
    shutil.copytree(sam2_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "sam"}))
    with pytest.raises(ModelLoadError, match=r"model_type 'sam', expected one of sam2, sam2_video"):
        Sam2Segmenter.load(other)


def test_bad_requests_are_refused(segmenter):
    with pytest.raises(ValueError, match="2 points but 1 labels"):
        segmenter.segment([SegmentRequest(SQUARE, points=POINTS, labels=np.array([1]))])
    with pytest.raises(ValueError, match="uint8"):
        segmenter.segment([SegmentRequest(SQUARE.astype(np.float32), boxes=BOX_A)])
