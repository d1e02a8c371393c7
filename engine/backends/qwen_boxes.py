"""Qwen-VL boxes into the engine's box frame: pure functions, shared by the Qwen VLM backends.

The engine reads a P_B box with ``prompts.parse_box`` in ONE frame, LLaVA-1.5's: fractions
(0-1) of the view padded to a centred square (S = max(w, h), the view at ``io.centred_region``, as ``patches.square_frame``), mapped
back to view pixels by ``patches.normalised_box_to_view``. Qwen models write boxes in their own:

- Qwen2.5-VL (``model_type`` "qwen2_5_vl"): absolute pixels of its RESIZED input, the image the
  processor made of the view (``smart_resize``: each side a multiple of patch x merge, the area
  within [min_pixels, max_pixels]); x_view = x * w / w_in, y_view = y * h / h_in.
- Qwen3-VL ("qwen3_vl"): relative coordinates in 0-1000 of the image; x_view = x / 1000 * w.

Both write JSON, ``[{"bbox_2d": [x0, y0, x1, y1], "label": "frog"}]``, often in a ```json fence.
``engine_box_text`` rewrites such an answer: the box's four numbers become the engine's
fractions (4 decimals), the rest of the text is kept, except that the key ``"bbox_2d"`` is
written ``"bbox"``: ``parse_box`` reads the first four numbers of a text, and the key's "2"
would be the first. An answer with no box (fewer than four numbers) is returned unchanged.
"""

from __future__ import annotations

import re

import numpy as np

from ..io import centred_region

FAMILIES = ("qwen2_5_vl", "qwen3_vl")
# Qwen3-VL's relative coordinates run 0..QWEN3_SCALE over the image.
QWEN3_SCALE = 1000.0
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")  # as prompts.parse_box reads numbers
_BBOX_LIST = re.compile(r'"bbox_2d"\s*:\s*\[([^\]]*)\]')
_BBOX_KEY = re.compile(r'"bbox_2d"')


def resized_input_size(
    height: int, width: int, patch_size: int, merge_size: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """(h_in, w_in): the size the Qwen image processor resizes a ``height`` x ``width`` view to
    (transformers' public ``smart_resize`` with factor patch x merge), the frame of Qwen2.5-VL's
    absolute boxes. The backend reads it off ``image_grid_thw`` x patch instead; this is for
    callers without the processor's output (and for the tests)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    h, w = smart_resize(height, width, factor=patch_size * merge_size, min_pixels=min_pixels, max_pixels=max_pixels)
    return int(h), int(w)


def qwen_box_to_view(
    box: tuple[float, float, float, float],
    family: str,
    width: int,
    height: int,
    input_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """A Qwen box (x0, y0, x1, y1) in ``family``'s frame -> float32 [4] view pixels, corners
    ordered and clipped to ``[0, width] x [0, height]``. ``input_size`` (h_in, w_in): the
    resized input's size, needed for "qwen2_5_vl"."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if family == "qwen2_5_vl":
        if input_size is None:
            raise ValueError("qwen2_5_vl boxes are pixels of the resized input: input_size (h_in, w_in) is needed")
        sy, sx = height / input_size[0], width / input_size[1]
    elif family == "qwen3_vl":
        sy, sx = height / QWEN3_SCALE, width / QWEN3_SCALE
    else:
        raise ValueError(f"unknown Qwen-VL family {family!r}; expected one of {', '.join(FAMILIES)}")
    xs = np.clip(sorted((x0 * sx, x1 * sx)), 0, width)
    ys = np.clip(sorted((y0 * sy, y1 * sy)), 0, height)
    return np.array([xs[0], ys[0], xs[1], ys[1]], np.float32)


def view_box_to_engine(box: np.ndarray | tuple[float, ...], width: int, height: int) -> tuple[float, float, float, float]:
    """View pixels (x0, y0, x1, y1) -> the engine's frame: fractions of the view padded to a
    centred square (the inverse of ``patches.normalised_box_to_view``), each in [0, 1]."""
    side = max(height, width)
    top, left, _, _ = centred_region(height, width, (side, side))  # where patches.square_frame puts it
    x0, y0, x1, y1 = (float(v) for v in box)
    return ((x0 + left) / side, (y0 + top) / side, (x1 + left) / side, (y1 + top) / side)


def find_box(text: str) -> tuple[list[tuple[int, int]], list[float]] | None:
    """The spans (start, end) in ``text`` and values of an answer's four box numbers: those of
    the first ``"bbox_2d": [...]`` list when there is one, else the text's first four numbers
    (as ``parse_box`` would read them); None when there are not four."""
    match = _BBOX_LIST.search(text or "")
    if match:
        found = list(_NUMBER.finditer(text, match.start(1), match.end(1)))
    else:
        found = list(_NUMBER.finditer(text or ""))
    if len(found) < 4:
        return None
    found = found[:4]
    return [m.span() for m in found], [float(m.group()) for m in found]


def engine_box_text(text: str, family: str, width: int, height: int, input_size: tuple[int, int] | None = None) -> str:
    """``text`` with its box (``find_box``) rewritten from ``family``'s frame into the engine's
    (``qwen_box_to_view`` then ``view_box_to_engine``, 4 decimals) and ``"bbox_2d"`` keys written
    ``"bbox"`` so that ``prompts.parse_box(result, width, height)`` reads this box; the rest of
    the text kept. Unchanged when it holds no box."""
    found = find_box(text)
    if found is None:
        return text
    spans, values = found
    view = qwen_box_to_view(tuple(values), family, width, height, input_size)
    numbers = [f"{v:.4f}" for v in view_box_to_engine(view, width, height)]
    pieces, last = [], 0
    for (start, end), number in zip(spans, numbers):
        pieces += [text[last:start], number]
        last = end
    out = "".join(pieces) + text[last:]
    return _BBOX_KEY.sub('"bbox"', out)
