"""GroundingDINO's text position embeddings: transformers issue 47674 and our fix.

In transformers 5.16-5.19 the encoder passes int64 position ids to
``encode_sinusoidal_position_embedding``, which casts its sin/cos back to int64, so the
embedding collapses to {-1, 0, 1}. ``detect_gdino.fix_text_positions`` probes for that at
load time and casts the ids to float on the loaded model's encoder layers only.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers
from packaging.version import Version
from transformers.models.grounding_dino import modeling_grounding_dino as gd

from int_engine.backends.detect_gdino import (
    GroundingDinoDetector,
    caption,
    fix_text_positions,
    text_positions_collapse,
)

CAPTION = caption("the camouflaged animal in the tree. a frog on a leaf")


def _library_method(d_model: int = 8):
    """The installed, unpatched ``get_text_position_embeddings``, bound to a stand-in layer."""
    method = gd.GroundingDinoEncoderLayer.get_text_position_embeddings
    return functools.partial(method, SimpleNamespace(d_model=d_model))


def _formula(ids: np.ndarray, d_model: int, dtype) -> np.ndarray:
    """The float embedding from its definition: channel k of position p is sin (k even) or
    cos (k odd) of 2 pi p / 10000 ** (2 floor(k / 2) / d_model)."""
    k = np.arange(d_model)
    dim_t = (10000.0 ** (2 * (k // 2) / d_model)).astype(dtype)
    arg = ids.astype(dtype)[..., None] * dtype(2 * math.pi) / dim_t
    return np.where(k % 2 == 0, np.sin(arg), np.cos(arg)).astype(dtype)


@pytest.fixture(scope="module")
def detector(tiny_model) -> GroundingDinoDetector:
    return GroundingDinoDetector.load(tiny_model("detector"))


def _encoder_layers(detector):
    return [m for m in detector.model.modules() if isinstance(m, gd.GroundingDinoEncoderLayer)]


def _position_ids(detector) -> torch.Tensor:
    ids = torch.tensor([detector.processor.tokenizer(CAPTION).input_ids])
    return gd.generate_masks_with_special_tokens_and_transfer_map(ids)[1]


def test_probe_detects_the_bug_in_the_installed_transformers():
    ids = torch.arange(8).unsqueeze(0)
    emb = _library_method(256)(torch.zeros(1, 8, 256), None, ids)
    buggy = not emb.is_floating_point() or (emb == 0).float().mean() > 0.5
    assert text_positions_collapse(_library_method()) is buggy
    if Version(transformers.__version__) < Version("5.20"):
        # every version setup.py allows (5.16.1-5.19.x) has it: int64 out, ~93% zeros
        assert buggy and emb.dtype == torch.int64 and (emb == 0).float().mean() > 0.9
        assert text_positions_collapse(_library_method()) is True


def test_probe_reports_fixed_on_a_fixed_function():
    def fixed(text_features, text_position_embedding, text_position_ids, d_model=8):
        # transformers PR 47675: the ids in text_features' dtype before the embedding
        return gd.encode_sinusoidal_position_embedding(
            text_position_ids[..., None].to(text_features.dtype), num_pos_feats=d_model
        )

    assert text_positions_collapse(fixed) is False


def test_load_applies_the_fix_only_where_needed(detector):
    layers = _encoder_layers(detector)
    assert layers
    needed = text_positions_collapse(_library_method())
    assert detector.text_position_fix is needed
    for layer in layers:
        assert ("get_text_position_embeddings" in vars(layer)) is needed
        assert not text_positions_collapse(layer.get_text_position_embeddings, layer.d_model)
    # the class itself is untouched: other models in the process see the library as it is
    assert text_positions_collapse(_library_method()) is needed
    # applying it again to a fixed model does nothing
    assert fix_text_positions(detector.model) is False


def test_fixed_embedding_equals_the_float_formula(detector):
    layer = _encoder_layers(detector)[0]
    ids = _position_ids(detector)
    assert ids.dtype == torch.int64 and ids.max() >= 3  # positions restart in each phrase
    features = torch.zeros(*ids.shape, layer.d_model)
    emb = layer.get_text_position_embeddings(features, None, ids)
    assert emb.dtype == torch.float32 and emb.shape == (*ids.shape, layer.d_model)
    ids_np = ids.numpy()
    np.testing.assert_allclose(emb.numpy(), _formula(ids_np, layer.d_model, np.float32), rtol=0, atol=1e-6)
    np.testing.assert_allclose(emb.numpy(), _formula(ids_np, layer.d_model, np.float64), rtol=0, atol=1e-5)
    # half precision: the embedding comes back in the features' dtype, from the float32 values
    half = layer.get_text_position_embeddings(features.to(torch.bfloat16), None, ids)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half, emb.to(torch.bfloat16), rtol=0, atol=0)


def test_detections_change_with_the_fix_on_and_off(detector):
    """The embedding reaches the outputs: without the fix the same inputs give other text
    features and scores. The tiny zoo's random weights make the effect small (scores move
    by ~2e-5), but the outputs are bit-for-bit repeatable, so any change is the fix's."""
    if not detector.text_position_fix:
        pytest.skip("the installed transformers does not need the fix")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (100, 160, 3), dtype=np.uint8)]
    texts = [CAPTION]
    inputs = detector.processor(images=images, text=texts, return_tensors="pt", input_data_format="channels_last")
    layers = _encoder_layers(detector)

    def run():
        with torch.inference_mode():
            text = detector.model(**inputs).encoder_last_hidden_state_text
        return text, detector.detect(images, texts, 0.0, 0.25)[0]

    fixed_text, fixed = run()
    patched = [vars(layer).pop("get_text_position_embeddings") for layer in layers]
    try:
        assert text_positions_collapse(layers[0].get_text_position_embeddings, layers[0].d_model)
        broken_text, broken = run()
    finally:
        for layer, fn in zip(layers, patched):
            layer.get_text_position_embeddings = fn
    again_text, again = run()
    torch.testing.assert_close(again_text, fixed_text, rtol=0, atol=0)
    np.testing.assert_array_equal(again.scores, fixed.scores)
    np.testing.assert_array_equal(again.boxes, fixed.boxes)
    assert (fixed_text - broken_text).abs().max() > 2e-5
    assert fixed.scores.shape == broken.scores.shape
    assert np.abs(fixed.scores - broken.scores).max() > 5e-6
