"""LLaVA-1.5's image frame: every image padded to a square with the image processor's mean colour.

LLaVA-1.5 was trained (and the INT/ProMaC authors run it) with ``image_aspect_ratio: pad``: the
LLaVA repo's ``expand2square`` pastes the image, centred, on a square of the CLIP mean colour
before the image processor resizes it. llava-hf's processor instead resizes the short side and
centre-crops, so on a non-square view the model would see only the central square, and its
normalised P_B box would be relative to that crop. Both VLM backends pad with ``pad_to_square``
before the processor, so the model sees what it was trained on and its boxes are normalised to
the padded square, which ``patches.normalised_box_to_view`` maps back to view pixels.
"""

from __future__ import annotations

import numpy as np

from ..io import centred_region


def processor_fill(image_processor) -> tuple[int, int, int]:
    """The padding colour (R, G, B) in 0..255: the image processor's ``image_mean`` x 255,
    truncated as LLaVA's ``tuple(int(x * 255) for x in image_processor.image_mean)`` does
    (CLIP's mean gives (122, 116, 104)), so the padding is the grey the model was trained on."""
    mean = [float(m) for m in image_processor.image_mean]
    if len(mean) != 3:
        raise ValueError(f"the image processor's image_mean must have 3 channels, got {mean}")
    r, g, b = (int(m * 255) for m in mean)
    return r, g, b


def pad_to_square(image: np.ndarray, fill: tuple[int, int, int]) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [S, S, 3], S = max(H, W): ``image`` centred as ``expand2square``
    places it, the rest ``fill``: at ``io.centred_region`` in the S x S frame, the place
    ``patches.square_frame`` gives too (the steps map the VLM's boxes back with it). A square
    image is returned as is."""
    h, w = image.shape[:2]
    side = max(h, w)
    top, left, _, _ = centred_region(h, w, (side, side))
    if side == h == w:
        return image
    out = np.empty((side, side, image.shape[2]), image.dtype)
    out[...] = np.asarray(fill, image.dtype)
    out[top : top + h, left : left + w] = image
    return out


def complete_processor(processor, model_config) -> None:
    """Fill in, from the model's config, the LlavaProcessor fields an older llava-hf snapshot's
    ``processor_config.json`` lacks: without ``patch_size`` the processor cannot count the
    "<image>" tokens and the first generate fails.

    ``patch_size`` comes from ``model_config.vision_config.patch_size``. A missing
    ``vision_feature_select_strategy`` comes from ``model_config``; "default" drops the vision
    tower's CLS token from the count, so when ``num_additional_image_tokens`` is 0 it becomes 1
    (that CLS token): the token count stays (side / patch)^2, what the model's features need.
    Fields already set are left alone.
    """
    if getattr(processor, "patch_size", 0) is None:
        processor.patch_size = int(model_config.vision_config.patch_size)
    if getattr(processor, "vision_feature_select_strategy", "") is None:
        strategy = getattr(model_config, "vision_feature_select_strategy", None)
        processor.vision_feature_select_strategy = strategy
        if strategy == "default" and getattr(processor, "num_additional_image_tokens", None) == 0:
            processor.num_additional_image_tokens = 1
