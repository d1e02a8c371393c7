"""Runtime "compile" of the SAM 2.1 and SAM 3 backends (``hf_images``): the image encoder pass
under ``torch.compile`` on the tiny models gives the eager outputs, compiles once for its one
padded batch shape, and an unknown runtime is refused.

The compiled segmenters are module fixtures whose first call (3 distinct images, batches of 2:
the last one padded) is the only compilation: about 40 s (SAM 2.1) and 20 s (SAM 3) on 2 CPU
cores with a cold inductor cache, a few seconds with a warm one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from int_engine.backends.segment_sam2 import Sam2Segmenter
from int_engine.backends.segment_sam3 import Sam3ConceptSegmenter
from int_engine.errors import ConfigError
from int_engine.models import tiny_sam2, tiny_sam3
from int_engine.protocols import ConceptRequest, SegmentRequest

# Inductor's fused kernels reorder float32 sums: measured <= 1e-6 on the features, less on the
# probabilities; 1e-5 absolute is the bound of the backends' own parity tests.
TOL = 1e-5
BATCH = 2
RNG = np.random.default_rng(3)
IMAGES = [RNG.integers(0, 256, shape, dtype=np.uint8) for shape in [(60, 90, 3), (80, 50, 3), (47, 47, 3)]]


def sam2_requests(images) -> list[SegmentRequest]:
    box = np.array([[5, 5, 40, 40]], np.float32)
    points, labels = np.array([[20, 30]], np.float32), np.array([1], np.int64)
    return [SegmentRequest(image, box, points, labels) for image in images]


def sam3_requests(images) -> list[ConceptRequest]:
    return [ConceptRequest(image, "frog", positives=np.array([[5, 5, 30, 30]], np.float32)) for image in images]


@pytest.fixture(scope="module")
def sam2(tmp_path_factory):
    path = tmp_path_factory.mktemp("sam2") / "segmenter"
    tiny_sam2.build(path)
    eager = Sam2Segmenter.load(path, batch_size=BATCH)
    compiled = Sam2Segmenter.load(path, batch_size=BATCH, runtime="compile")
    first = compiled.segment(sam2_requests(IMAGES))  # compiles, the last batch padded to 2
    return path, eager, compiled, first


@pytest.fixture(scope="module")
def sam3(tmp_path_factory):
    path = tmp_path_factory.mktemp("sam3")
    tiny_sam3.build(path, seed=0)
    eager = Sam3ConceptSegmenter.load(path, image_batch=BATCH)
    compiled = Sam3ConceptSegmenter.load(path, image_batch=BATCH, runtime="compile")
    first = compiled.segment_concepts(sam3_requests(IMAGES), 0.0)  # compiles, the last batch padded
    return path, eager, compiled, first


def assert_close(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == np.float32
        np.testing.assert_allclose(g, w, atol=TOL, rtol=0)


def test_sam2_compiled_equals_eager(sam2):
    _, eager, compiled, first = sam2
    assert compiled.runtime == "compile" and eager.runtime == "eager"
    assert_close(first, eager.segment(sam2_requests(IMAGES)))
    assert compiled.work == eager.work == {"encoder_images": len(IMAGES)}  # the padding not counted
    with torch.inference_mode():
        for got, want in zip(compiled._encode(IMAGES), eager._encode(IMAGES)):
            np.testing.assert_allclose(got.numpy(), want.numpy(), atol=TOL, rtol=0)


def test_sam3_compiled_equals_eager(sam3):
    _, eager, compiled, first = sam3
    assert_close(first, eager.segment_concepts(sam3_requests(IMAGES), 0.0))
    assert compiled.work["encoder_images"] == len(IMAGES)
    with torch.inference_mode():
        (got, got_pos), (want, want_pos) = compiled._encode(IMAGES), eager._encode(IMAGES)
    for g, w in zip(got + got_pos, want + want_pos):
        np.testing.assert_allclose(g.numpy(), w.numpy(), atol=TOL, rtol=0)


def test_another_batch_does_not_recompile(sam2, sam3):
    """Calls of 1 and 3 images after the first: torch.compiler's "fail_on_recompile" stance
    raises on any recompilation, and does for an unpadded batch of 1 (the control)."""
    (_, eager2, compiled2, _), (_, eager3, compiled3, _) = sam2, sam3
    with torch.compiler.set_stance("fail_on_recompile"):
        for images in (IMAGES[1:2], IMAGES[::-1]):
            assert_close(compiled2.segment(sam2_requests(images)), eager2.segment(sam2_requests(images)))
            want = eager3.segment_concepts(sam3_requests(images), 0.0)
            assert_close(compiled3.segment_concepts(sam3_requests(images), 0.0), want)
        pixels = compiled2.processor.image_processor(images=IMAGES[:1], return_tensors="pt")["pixel_values"]
        with torch.inference_mode(), pytest.raises(RuntimeError, match="fail_on_recompile"):
            compiled2.encoder(pixels)


@pytest.mark.parametrize("runtime", ["onnx", "tensorrt", "Compile", ""])
def test_unknown_runtime_is_refused_naming_the_choices(sam2, sam3, runtime):
    for cls, path, role in ((Sam2Segmenter, sam2[0], "segmenter"), (Sam3ConceptSegmenter, sam3[0], "concept")):
        with pytest.raises(ConfigError, match=rf"^{role}: runtime must be one of eager, compile, got '{runtime}'$"):
            cls.load(path, runtime=runtime)
