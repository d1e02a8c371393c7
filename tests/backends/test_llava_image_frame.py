"""``llava_image.pad_to_square`` places a view where ``patches.square_frame`` says it sits: the
backend pads with ``io.centred_region`` (backends never import the steps), the steps map the VLM's
boxes back with ``square_frame``, which is built on the same function; the placement must be
LLaVA's ``expand2square`` (a wide image at (0, (W - H) // 2)), for every size."""

from __future__ import annotations

import numpy as np

from int_engine.backends.llava_image import pad_to_square
from int_engine.patches import square_frame


def test_pad_to_square_and_square_frame_agree_on_every_size():
    fill = (1, 2, 3)
    for h in range(1, 41):
        for w in range(1, 41):
            image = np.full((h, w, 3), 200, np.uint8)
            out = pad_to_square(image, fill)
            side, top, left = square_frame(h, w)
            assert out.shape == (side, side, 3), (h, w)
            inside = np.zeros((side, side), bool)
            inside[top : top + h, left : left + w] = True
            assert (out[inside] == 200).all() and (out[~inside] == fill).all(), (h, w)
