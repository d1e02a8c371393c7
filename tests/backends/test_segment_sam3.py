"""SAM 3 concept segmenter (engine/backends/segment_sam3.py) on the tiny random SAM 3.

The reference is transformers' documented path, request by request: ``Sam3Processor(images,
text, input_boxes, input_boxes_labels)`` -> ``Sam3Model`` -> ``post_process_instance_segmentation``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from transformers import Sam3Model, Sam3Processor

from int_engine.backends.segment_sam3 import Sam3ConceptSegmenter
from int_engine.errors import ModelLoadError
from int_engine.models import tiny_sam3
from int_engine.protocols import ConceptRequest

TOL = 1e-5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_sam3")
    info = tiny_sam3.build(out, seed=0)
    assert info["format"] == "hf-sam3" and info["params"] > 0
    return out


@pytest.fixture(scope="module")
def seg(model_dir) -> Sam3ConceptSegmenter:
    return Sam3ConceptSegmenter.load(model_dir, max_batch=3)


@pytest.fixture(scope="module")
def reference(model_dir):
    """The library's own model and processor, loaded independently of the backend."""
    return Sam3Model.from_pretrained(model_dir).eval(), Sam3Processor.from_pretrained(model_dir)


def boxes(*rows) -> np.ndarray:
    return np.asarray(rows, np.float32).reshape(-1, 4)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(60, 90, 3), (80, 50, 3), (47, 47, 3)]]


@pytest.fixture(scope="module")
def requests(images):
    a, b, c = images
    return [
        ConceptRequest(a, "frog"),
        ConceptRequest(a, "green snake", positives=boxes([10, 10, 40, 40])),
        ConceptRequest(b, "owl", positives=boxes([5, 5, 30, 30], [10, 20, 40, 70]), negatives=boxes([0, 0, 10, 10])),
        ConceptRequest(b.copy(), "frog", negatives=boxes([0, 50, 20, 80])),
        ConceptRequest(c, "camouflaged animal"),
        ConceptRequest(c, "lizard", positives=boxes([3, 4, 20, 30]), negatives=boxes([25, 25, 45, 45], [0, 0, 5, 5])),
    ]


def library_outputs(reference, req: ConceptRequest):
    """``Sam3Model``'s raw outputs for one request, its inputs built by ``Sam3Processor``."""
    model, processor = reference
    kwargs = {}
    if len(req.positives) + len(req.negatives):
        kwargs["input_boxes"] = [np.concatenate([req.positives, req.negatives]).tolist()]
        kwargs["input_boxes_labels"] = [[1] * len(req.positives) + [0] * len(req.negatives)]
    inputs = processor(images=req.image, text=req.text, return_tensors="pt", **kwargs)
    with torch.inference_mode():
        return model(**inputs)


def library_probability(reference, req: ConceptRequest, threshold: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(max probability over the kept instances, the post-processing's binary union, kept count).

    The instances kept and their scores are the post-processing's (checked here); it returns
    binary masks, so the probabilities are its sigmoid + bilinear resize of those instances."""
    _, processor = reference
    out = library_outputs(reference, req)
    size = req.image.shape[:2]
    result = processor.post_process_instance_segmentation(out, threshold=threshold, mask_threshold=0.5, target_sizes=[size])[0]
    scores = out.pred_logits[0].sigmoid() * out.presence_logits[0].sigmoid()
    keep = scores > threshold
    torch.testing.assert_close(scores[keep], result["scores"], rtol=0, atol=0)
    prob = torch.zeros(size)
    if keep.any():
        masks = F.interpolate(out.pred_masks[:, keep].sigmoid(), size=size, mode="bilinear", align_corners=False)[0]
        prob = masks.amax(0)
    union = result["masks"].any(0).numpy() if len(result["masks"]) else np.zeros(size, bool)
    return prob.numpy(), union, int(keep.sum())


def test_parity_with_the_documented_path(seg, reference, requests):
    threshold = 0.45
    ours = seg.segment_concepts(requests, threshold)
    kept = []
    for req, got in zip(requests, ours):
        want, union, n = library_probability(reference, req, threshold)
        kept.append(n)
        assert got.dtype == np.float32 and got.shape == req.image.shape[:2]
        assert np.abs(got - want).max() <= TOL
        decided = np.abs(want - 0.5) > TOL  # pixels not on the fence of the binary threshold
        assert np.array_equal((got > 0.5)[decided], union[decided])
    # the threshold splits the queries: some requests keep some instances and drop others
    assert any(0 < n < 20 for n in kept), kept
    assert any(o.std() > 0.01 for o in ours)


def test_batch_equals_one_by_one(model_dir, requests):
    seg = Sam3ConceptSegmenter.load(model_dir, image_batch=2, max_batch=2)
    together = seg.segment_concepts(requests, 0.3)
    # 3 distinct images (request 3's image is a copy of request 2's): one vision pass each;
    # each distinct phrase through the text encoder once
    texts = len({r.text for r in requests})
    assert texts < len(requests)
    assert seg.work == {"encoder_images": 3, "texts_encoded": texts, "requests": len(requests)}
    for req, got in zip(requests, together):
        alone = seg.segment_concepts([req], 0.3)[0]
        assert np.abs(got - alone).max() <= TOL
    assert not np.allclose(together[0], together[1], atol=1e-3)  # different texts, same image


def test_negative_exemplars_reach_the_model(seg, reference, images):
    a = images[0]
    pos, neg = boxes([10, 10, 40, 40]), boxes([50, 20, 85, 55])
    plain = ConceptRequest(a, "frog", positives=pos)
    with_negative = ConceptRequest(a, "frog", positives=pos, negatives=neg)
    as_positive = ConceptRequest(a, "frog", positives=np.concatenate([pos, neg]))
    # the raw instance scores change when a negative box is added, and differ from the same box as a positive
    scores = [
        (lambda o: o.pred_logits[0].sigmoid() * o.presence_logits[0].sigmoid())(library_outputs(reference, r))
        for r in (plain, with_negative, as_positive)
    ]
    assert (scores[0] - scores[1]).abs().max() > 1e-4
    assert (scores[1] - scores[2]).abs().max() > 1e-4
    # and the backend passes the negative through: its output follows the library's, not the plain one
    ours = seg.segment_concepts([plain, with_negative, as_positive], 0.0)
    want = library_probability(reference, with_negative, 0.0)[0]
    assert np.abs(ours[1] - want).max() <= TOL
    assert np.abs(ours[1] - ours[0]).max() > 1e-4
    assert np.abs(ours[1] - ours[2]).max() > 1e-4


def test_threshold_zero_keeps_every_instance_and_one_keeps_none(seg, reference, requests):
    req = requests[2]
    out = library_outputs(reference, req)
    scores = out.pred_logits[0].sigmoid() * out.presence_logits[0].sigmoid()
    size = req.image.shape[:2]
    every = F.interpolate(out.pred_masks.sigmoid(), size=size, mode="bilinear", align_corners=False)[0]
    zero, one, top = (
        seg.segment_concepts([req, req, req], 0.0)[:1]
        + seg.segment_concepts([req], 1.0)
        + seg.segment_concepts([req], float(scores.max()))
    )
    assert np.abs(zero - every.amax(0).numpy()).max() <= TOL and zero.min() > 0
    assert float(scores.max()) < 1.0  # SAM 3 clamps its logits, so no score reaches 1
    assert one.dtype == np.float32 and one.shape == size and not one.any()
    # a score equal to the threshold is kept (>=): exactly the best instance
    assert np.abs(top - every[int(scores.argmax())].numpy()).max() <= TOL
    assert seg.segment_concepts([], 0.5) == []


def test_bad_path_names_the_role_and_what_is_missing(tmp_path):
    with pytest.raises(ModelLoadError, match=r"concept: model path .*nowhere does not exist"):
        Sam3ConceptSegmenter.load(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=r"concept: .* is not a hf-sam3 directory: missing model.safetensors"):
        Sam3ConceptSegmenter.load(tmp_path)


def test_bad_requests_are_refused(seg, images):
    with pytest.raises(ValueError, match="uint8"):
        seg.segment_concepts([ConceptRequest(images[0].astype(np.float32), "frog")], 0.5)
    with pytest.raises(ValueError, match=r"positives must be \[N, 4\]"):
        seg.segment_concepts([ConceptRequest(images[0], "frog", positives=np.zeros((2, 3), np.float32))], 0.5)


def test_bfloat16_backbone_stays_close_to_float32(model_dir, seg, requests):
    half = Sam3ConceptSegmenter.load(model_dir, dtype="bfloat16")
    for want, got in zip(seg.segment_concepts(requests[:3], 0.3), half.segment_concepts(requests[:3], 0.3)):
        assert got.dtype == np.float32
        assert np.abs(got - want).max() < 0.05  # bf16 features, float32 heads: measured ~0.01
        assert ((got > 0.5) != (want > 0.5)).mean() < 0.01
