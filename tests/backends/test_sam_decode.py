"""Batched SAM decoding (int_engine.backends.sam_decode) against segment-anything's own code paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from int_engine.backends.sam_decode import PromptDecoder, decode_masks, flatten_prompts
from int_engine.backends.segment_sam import SamSegmenter
from int_engine.protocols import SegmentRequest


@pytest.fixture(scope="module")
def segmenter(tiny_model):
    return SamSegmenter.load(tiny_model("segmenter"))


def _requests(n: int = 6, seed: int = 0) -> list[SegmentRequest]:
    """Views of several sizes, some with boxes and points, some with points or boxes only."""
    rng = np.random.default_rng(seed)
    reqs = []
    for k in range(n):
        h, w = [(96, 128), (48, 64), (96, 64), (50, 70)][k % 4]
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        boxes = np.sort(rng.uniform(0, [w, h, w, h], (k % 3 + 1, 4)).reshape(-1, 2, 2), axis=1).reshape(-1, 4).astype(np.float32)
        points = rng.uniform(0, [w, h], (4, 2)).astype(np.float32)
        labels = np.array([1, 1, 0, 0])
        if k % 3 == 1:
            reqs.append(SegmentRequest(img, points=points, labels=labels))
        elif k % 3 == 2:
            reqs.append(SegmentRequest(img, boxes=boxes))
        else:
            reqs.append(SegmentRequest(img, boxes=boxes, points=points, labels=labels))
    return reqs


def test_decode_masks_equals_sams_decoder_on_one_image(segmenter):
    sam = segmenter.sam
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(1, 32, 8, 8, generator=gen)
    boxes = torch.sort(torch.rand(5, 2, 2, generator=gen) * 128, dim=1).values.reshape(5, 4)
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(None, boxes, None)
        want = sam.mask_decoder.predict_masks(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense)
        got = decode_masks(sam.mask_decoder, emb.expand(5, -1, -1, -1), sam.prompt_encoder.get_dense_pe(), sparse, dense)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_each_prompt_decodes_against_its_own_image(segmenter):
    sam = segmenter.sam
    gen = torch.Generator().manual_seed(1)
    emb = torch.randn(3, 32, 8, 8, generator=gen)
    coords, labels = flatten_prompts(torch.rand(3, 2, 2, generator=gen) * 128, torch.tensor([[1, 0]] * 3), None)
    no_mask, has = torch.zeros(1, 1, 32, 32), torch.zeros(1)
    decoder = PromptDecoder(sam)
    with torch.no_grad():
        together = decoder(emb, coords, labels, no_mask, has)
        alone = [decoder(emb[i : i + 1], coords[i : i + 1], labels[i : i + 1], no_mask, has) for i in range(3)]
        sparse, dense = sam.prompt_encoder((coords[:1, :2], labels[:1, :2]), None, None)
        sams_own = sam.mask_decoder.predict_masks(emb[:1], sam.prompt_encoder.get_dense_pe(), sparse, dense)
    for i in range(3):
        torch.testing.assert_close(together[0][i : i + 1], alone[i][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(together[1][i : i + 1], alone[i][1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together[0][:1], sams_own[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(together[0][0], together[0][1])  # another image, another mask


@pytest.mark.parametrize("multimask", [False, True])
def test_segmenter_equals_sam_predictor_request_by_request(segmenter, multimask):
    """The whole backend against segment-anything's SamPredictor (set_image + predict_torch)."""
    reqs = _requests()
    before, segmenter.multimask_output = segmenter.multimask_output, multimask
    try:
        got = segmenter.segment(reqs)
    finally:
        segmenter.multimask_output = before
    predictor = SamPredictor(segmenter.sam)
    for req, mask in zip(reqs, got):
        predictor.set_image(req.image)
        t = predictor.transform
        boxes = coords = labels = None
        if len(req.boxes):
            boxes = t.apply_boxes_torch(torch.as_tensor(req.boxes), req.image.shape[:2])
        if len(req.points):
            coords = t.apply_coords_torch(torch.as_tensor(req.points), req.image.shape[:2])[None]
            labels = torch.as_tensor(req.labels)[None]
            if boxes is not None:
                coords, labels = coords.repeat(len(boxes), 1, 1), labels.repeat(len(boxes), 1)
        with torch.no_grad():
            logits, scores, _ = predictor.predict_torch(coords, labels, boxes, multimask_output=multimask, return_logits=True)
        best = logits[torch.arange(len(logits)), scores.argmax(dim=1)]
        want = torch.sigmoid(best - segmenter.sam.mask_threshold).amax(dim=0).numpy()
        assert mask.shape == want.shape and 0 < (want > 0.5).sum() < want.size
        # Batched matmuls may round differently.
        np.testing.assert_allclose(mask, want, atol=1e-4)
        binary = best > segmenter.sam.mask_threshold  # SamPredictor's own masks
        assert np.mean((mask > 0.5) != binary.any(dim=0).numpy()) < 1e-3


def test_one_decoder_pass_for_all_requests_and_chunking_changes_nothing(segmenter):
    reqs = _requests(8, seed=3)
    n_prompts = {}
    for r in reqs:
        n_points = (len(r.points) + (2 if len(r.boxes) else 1)) if len(r.points) else 2
        n_prompts[n_points] = n_prompts.get(n_points, 0) + max(len(r.boxes), 1)
    calls = []
    decoder = segmenter.decoder
    segmenter.decoder = lambda *x: calls.append(len(x[0])) or decoder(*x)
    try:
        batched = segmenter.segment(reqs)
        segmenter.decode_batch = 1
        calls_before = len(calls)
        one_by_one = segmenter.segment(reqs)
    finally:
        segmenter.decoder, segmenter.decode_batch = decoder, 64
    # one pass per distinct number of points, whatever the number of images
    assert sorted(calls[:calls_before]) == sorted(n_prompts.values())
    assert len(calls) - calls_before == sum(n_prompts.values())
    for a, b in zip(batched, one_by_one):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("shape", [(96, 128), (50, 70), (300, 17), (17, 300)])
def test_prompts_scale_to_the_encoder_frame_as_segment_anything_does(segmenter, shape):
    """``_to_encoder_frame`` replaces ``ResizeLongestSide.apply_*_torch`` (whose deepcopy cost
    a third of prompt handling): the same float32 values, bit for bit, for boxes and points."""
    rng = np.random.default_rng(sum(shape))
    h, w = shape
    boxes = rng.uniform(0, [w, h, w, h], (5, 4)).astype(np.float32)
    points = rng.uniform(0, [w, h], (7, 2)).astype(np.float32)
    t = segmenter.transform
    assert torch.equal(
        segmenter._to_encoder_frame(boxes, shape).reshape(-1, 4), t.apply_boxes_torch(torch.as_tensor(boxes), shape)
    )
    assert torch.equal(segmenter._to_encoder_frame(points, shape), t.apply_coords_torch(torch.as_tensor(points), shape))
    # float64 input (a caller's numpy boxes) is cast once, like torch.as_tensor(...).float()
    assert torch.equal(
        segmenter._to_encoder_frame(boxes.astype(np.float64), shape).reshape(-1, 4),
        t.apply_boxes_torch(torch.as_tensor(boxes), shape),
    )
