"""The GroundingDINO detector backend on the tiny zoo model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from int_engine.backends.detect_gdino import GroundingDinoDetector, caption
from int_engine.errors import ModelLoadError
from int_engine.models import tiny_detector
from int_engine.models.zoo import read_manifest
from int_engine.protocols import Detector

H1, W1 = 100, 160  # resized by the tiny processor to 80 x 128
H2, W2 = 90, 60  # resized to 128 x 85: a different size, so a different forward pass
H3, W3 = 50, 80  # same aspect as image 1: shares its forward pass


@pytest.fixture(scope="module")
def model_dir(tiny_zoo, tiny_model) -> Path:
    info = read_manifest(tiny_zoo)["models"]["detector"]
    assert info["format"] == "hf-grounding-dino"
    assert 0 < info["params"] < 2_000_000
    return tiny_model("detector")


@pytest.fixture(scope="module")
def detector(model_dir) -> GroundingDinoDetector:
    return GroundingDinoDetector.load(model_dir)


def _images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(H1, W1), (H2, W2), (H3, W3)]]


TEXTS = ["a frog", "Leaf.", "the camouflaged animal in the tree"]


def test_layout_is_the_published_one(model_dir):
    from transformers import AutoProcessor, GroundingDinoProcessor

    names = {p.name for p in model_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
    } <= names
    assert sum(p.stat().st_size for p in model_dir.iterdir()) < 5_000_000
    assert json.loads((model_dir / "config.json").read_text())["model_type"] == "grounding-dino"
    assert isinstance(AutoProcessor.from_pretrained(model_dir, local_files_only=True), GroundingDinoProcessor)


def test_vocab_puts_grounding_dino_special_tokens_at_their_hard_coded_ids(detector, model_dir):
    from transformers.models.grounding_dino.modeling_grounding_dino import SPECIAL_TOKENS

    tok = detector.processor.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in ["[CLS]", "[SEP]", ".", "?"]]
    assert ids == [101, 102, 1012, 1029] == list(SPECIAL_TOKENS)
    vocab = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert [vocab[i] for i in SPECIAL_TOKENS] == ["[CLS]", "[SEP]", ".", "?"]
    enc = tok("frog. leaf?").input_ids
    assert enc[0] == 101 and enc[-1] == 102 and 1012 in enc and enc[-2] == 1029


def test_text_mask_keeps_phrases_apart(detector):
    from transformers.models.grounding_dino.modeling_grounding_dino import (
        generate_masks_with_special_tokens_and_transfer_map,
    )

    ids = torch.tensor([detector.processor.tokenizer("a frog. leaf.").input_ids])
    assert ids.shape[1] == 7  # [CLS] a frog . leaf . [SEP]
    mask, pos = generate_masks_with_special_tokens_and_transfer_map(ids)
    assert mask[0, 2, 1] and mask[0, 2, 3]  # "frog" sees "a" and its closing "."
    assert not mask[0, 2, 4] and not mask[0, 4, 2]  # "frog" and "leaf" do not see each other
    assert pos[0].tolist() == [0, 0, 1, 0, 0, 0, 0]  # positions restart in every phrase


def test_build_is_deterministic(model_dir, tmp_path):
    tiny_detector.build(tmp_path / "again", seed=0)
    for p in model_dir.iterdir():
        assert (tmp_path / "again" / p.name).read_bytes() == p.read_bytes(), p.name
    tiny_detector.build(tmp_path / "other", seed=1)
    assert (tmp_path / "other" / "model.safetensors").read_bytes() != (model_dir / "model.safetensors").read_bytes()


def test_implements_protocol(detector):
    assert isinstance(detector, Detector)


def test_caption_is_lower_case_and_ends_with_a_dot():
    assert caption("  A Frog ") == "a frog."
    assert caption("Leaf.") == "leaf."


def test_boxes_lie_inside_each_image(detector):
    images = _images()[:2]
    dets = detector.detect(images, TEXTS[:2], box_threshold=0.0, text_threshold=0.25)
    assert len(dets) == 2
    for det, im in zip(dets, images):
        h, w = im.shape[:2]
        assert det.boxes.dtype == np.float32 and det.scores.dtype == np.float32
        assert det.boxes.shape == (len(det.scores), 4) and len(det.scores) > 0
        assert (det.boxes[:, [0, 2]] >= 0).all() and (det.boxes[:, [0, 2]] <= w).all()
        assert (det.boxes[:, [1, 3]] >= 0).all() and (det.boxes[:, [1, 3]] <= h).all()
        assert (det.boxes[:, 2] >= det.boxes[:, 0]).all() and (det.boxes[:, 3] >= det.boxes[:, 1]).all()
        assert ((det.scores > 0) & (det.scores <= 1)).all()
    # pixel, not normalised, coordinates
    assert max(d.boxes.max() for d in dets) > 1.5


def test_boxes_are_the_model_boxes_in_pixels(detector):
    """Threshold 0 keeps every query in order: compare with the raw (cx, cy, w, h) output."""
    im, text = _images()[0], TEXTS[0]
    proc = detector.processor
    inputs = proc(images=[im], text=[caption(text)], return_tensors="pt", input_data_format="channels_last")
    with torch.inference_mode():
        raw = detector.model(**inputs).pred_boxes[0].numpy()
    cx, cy, bw, bh = raw.T
    want = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1) * [W1, H1, W1, H1]
    want = np.clip(want, 0, [W1, H1, W1, H1]).astype(np.float32)
    det = detector.detect([im], [text], 0.0, 0.25)[0]
    assert det.boxes.shape == (detector.model.config.num_queries, 4)
    np.testing.assert_allclose(det.boxes, want, atol=1e-3)


def test_thresholds(detector):
    images = _images()
    everything = detector.detect(images, TEXTS, 0.0, 0.25)
    assert all(len(d.scores) == detector.model.config.num_queries for d in everything)
    nothing = detector.detect(images, TEXTS, 1.01, 0.25)
    assert all(d.boxes.shape == (0, 4) and d.scores.shape == (0,) for d in nothing)
    half = detector.detect(images, TEXTS, 0.5, 0.25)
    for h, e in zip(half, everything):
        assert (h.scores > 0.5).all()
        np.testing.assert_array_equal(h.scores, e.scores[e.scores > 0.5])


def test_batch_equals_one_by_one(detector):
    images, texts = _images(1), TEXTS
    batched = detector.detect(images, texts, 0.0, 0.25)
    single = [detector.detect([im], [t], 0.0, 0.25)[0] for im, t in zip(images, texts)]
    for b, s in zip(batched, single):
        np.testing.assert_allclose(b.boxes, s.boxes, atol=1e-3)
        np.testing.assert_allclose(b.scores, s.scores, atol=1e-4)


def test_same_size_images_share_a_forward_pass(detector):
    images = _images()
    assert sorted(map(sorted, detector._batches(images))) == [[0, 2], [1]]


def test_text_is_normalised(detector):
    im = _images()[0]
    a = detector.detect([im], ["A Frog"], 0.0, 0.25)[0]
    b = detector.detect([im], ["a frog."], 0.0, 0.25)[0]
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_deterministic_across_calls_and_loads(detector, model_dir):
    images = _images(2)
    first = detector.detect(images, TEXTS, 0.0, 0.25)
    again = detector.detect(images, TEXTS, 0.0, 0.25)
    reloaded = GroundingDinoDetector.load(model_dir).detect(images, TEXTS, 0.0, 0.25)
    for a, b, c in zip(first, again, reloaded):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.boxes, c.boxes)
        np.testing.assert_array_equal(a.scores, c.scores)


def test_empty_batch_and_mismatched_lengths(detector):
    assert detector.detect([], [], 0.35, 0.25) == []
    with pytest.raises(ValueError, match="2 images but 1 texts"):
        detector.detect(_images()[:2], ["frog"], 0.35, 0.25)


def test_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match=str(missing)):
        GroundingDinoDetector.load(missing)


def test_directory_without_config(model_dir, tmp_path):
    broken = tmp_path / "noconfig"
    shutil.copytree(model_dir, broken)
    (broken / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"config\.json") as err:
        GroundingDinoDetector.load(broken)
    assert str(broken) in str(err.value)


def test_wrong_model_type_and_corrupt_weights(model_dir, tmp_path):
    other = tmp_path / "bert"
    shutil.copytree(model_dir, other)
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="grounding-dino") as err:
        GroundingDinoDetector.load(other)
    assert str(other) in str(err.value)

    corrupt = tmp_path / "corrupt"
    shutil.copytree(model_dir, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match=str(corrupt)):
        GroundingDinoDetector.load(corrupt)
