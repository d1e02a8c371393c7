"""Qwen-VL boxes reach the engine's frame (engine/backends/qwen_boxes.py): a Qwen2.5-VL answer in
pixels of its resized input and a Qwen3-VL answer in 0-1000, in the JSON the models write, land
on the object after ``prompts.parse_box`` and ``patches.normalised_box_to_view``; the same
numbers read as LLaVA's frame do not."""

from __future__ import annotations

import json

import numpy as np
import pytest

from int_engine import patches, prompts
from int_engine.backends.qwen_boxes import (
    engine_box_text,
    find_box,
    qwen_box_to_view,
    resized_input_size,
    view_box_to_engine,
)

# The published processors' settings: Qwen2.5-VL patch 14, merge 2, 3136..12845056 pixels.
QWEN25 = {"patch_size": 14, "merge_size": 2, "min_pixels": 56 * 56, "max_pixels": 28 * 28 * 16384}

# (view width, height, true object box in view pixels x0, y0, x1, y1)
VIEWS = [
    pytest.param(1024, 768, (200.0, 150.0, 820.0, 700.0), id="large"),
    pytest.param(640, 480, (240.0, 180.0, 400.0, 300.0), id="central"),
    pytest.param(800, 520, (20.0, 330.0, 140.0, 480.0), id="off-centre"),
    pytest.param(1200, 300, (900.0, 40.0, 1150.0, 260.0), id="wide"),
    pytest.param(240, 900, (30.0, 600.0, 200.0, 860.0), id="tall"),
]


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


def qwen_answer(numbers, fence: bool) -> str:
    body = json.dumps([{"bbox_2d": [int(round(v)) for v in numbers], "label": "frog"}], indent=2)
    return f"```json\n{body}\n```" if fence else body


def landed(text: str, w: int, h: int) -> np.ndarray | None:
    box = prompts.parse_box(text, w, h)
    return None if box is None else patches.normalised_box_to_view(box, patches.View("view", 0, 0, w, h))


@pytest.mark.parametrize("w,h,true", VIEWS)
@pytest.mark.parametrize("fence", [False, True])
def test_qwen25_resized_pixels_land_on_the_object(w, h, true, fence):
    h_in, w_in = resized_input_size(h, w, **QWEN25)
    assert h_in % 28 == 0 and w_in % 28 == 0
    answer = qwen_answer([true[0] * w_in / w, true[1] * h_in / h, true[2] * w_in / w, true[3] * h_in / h], fence)
    text = engine_box_text(answer, "qwen2_5_vl", w, h, (h_in, w_in))
    assert '"label": "frog"' in text and ("```json" in text) == fence  # the rest of the text kept
    assert iou(landed(text, w, h), true) > 0.95
    # read as LLaVA's frame (pixels of the padded square), the raw numbers miss the object
    raw = landed(answer.replace("bbox_2d", "bbox"), w, h)
    assert raw is None or iou(raw, true) < 0.8


@pytest.mark.parametrize("w,h,true", VIEWS)
@pytest.mark.parametrize("fence", [False, True])
def test_qwen3_thousandths_land_on_the_object(w, h, true, fence):
    answer = qwen_answer([true[0] / w * 1000, true[1] / h * 1000, true[2] / w * 1000, true[3] / h * 1000], fence)
    text = engine_box_text(answer, "qwen3_vl", w, h)
    assert '"label": "frog"' in text
    assert iou(landed(text, w, h), true) > 0.95
    raw = landed(answer.replace("bbox_2d", "bbox"), w, h)
    assert raw is None or iou(raw, true) < 0.8


def test_resized_size_is_the_processors():
    """``resized_input_size`` is the size the real image processor gives the view (its grid x patch)."""
    from transformers import Qwen2VLImageProcessor

    proc = Qwen2VLImageProcessor(patch_size=14, merge_size=2, min_pixels=QWEN25["min_pixels"], max_pixels=QWEN25["max_pixels"])
    for w, h in [(333, 250), (700, 180)]:
        grid = proc(images=[np.zeros((h, w, 3), np.uint8)], return_tensors="pt")["image_grid_thw"][0]
        assert (int(grid[1]) * 14, int(grid[2]) * 14) == resized_input_size(h, w, **QWEN25)


def test_parse_box_alone_misreads_qwen_json():
    """Why the key is renamed: parse_box takes the first four numbers, and "bbox_2d" holds a 2."""
    answer = '[{"bbox_2d": [10, 20, 300, 400], "label": "cat"}]'
    assert find_box(answer)[1] == [10.0, 20.0, 300.0, 400.0]
    assert prompts.parse_box(answer, 500, 500) != prompts.parse_box(engine_box_text(answer, "qwen3_vl", 500, 500), 500, 500)
    assert '"bbox"' in engine_box_text(answer, "qwen3_vl", 500, 500)


def test_plain_numbers_and_no_box():
    assert engine_box_text("no box here", "qwen3_vl", 100, 50) == "no box here"
    text = engine_box_text("(0, 0, 1000, 1000) whole image", "qwen3_vl", 200, 100)
    assert text.endswith(") whole image")
    assert np.allclose(landed(text, 200, 100), [0, 0, 200, 100], atol=0.1)


def test_frames_are_inverse():
    for w, h in [(300, 100), (100, 300), (256, 256)]:
        box = (10.0, 20.0, 90.0, 95.0)
        norm = view_box_to_engine(box, w, h)
        back = patches.normalised_box_to_view(norm, patches.View("v", 0, 0, w, h))
        assert np.allclose(back, box, atol=1e-3)
    assert np.allclose(qwen_box_to_view((0, 0, 500, 1000), "qwen3_vl", 640, 480), [0, 0, 320, 480])
    with pytest.raises(ValueError):
        qwen_box_to_view((0, 0, 5, 5), "qwen2_5_vl", 10, 10)
    with pytest.raises(ValueError):
        qwen_box_to_view((0, 0, 5, 5), "llava", 10, 10)
