"""What the transformers image backends of SAM 2.1 (``segment_sam2``) and SAM 3 (``segment_sam3``)
share: their dtype option, loading a model with its processor offline, and encoding the distinct
images of a call once, in bounded batches.

A call's requests often share images (several prompts or phrases on one view); each distinct
image (the same array, or equal shape and pixels) goes through the image encoder once, and each
request reads its image's row of the stacked features.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError, ModelLoadError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(role: str, dtype: str) -> torch.dtype:
    """The torch dtype named ``dtype`` (one of ``DTYPES``); ``ConfigError`` for another name."""
    if dtype not in DTYPES:
        raise ConfigError(f"{role}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model_and_processor(
    role: str, fmt: str, root: Path, device: str, model_class: str, processor_class: str
) -> tuple[torch.nn.Module, Any]:
    """transformers' ``model_class`` (float32, on ``device``, in eval mode) and
    ``processor_class`` from the directory ``root``, offline; any library failure is a
    ``ModelLoadError`` naming ``fmt`` and ``root``."""
    try:
        import transformers

        processor = getattr(transformers, processor_class).from_pretrained(root, local_files_only=True)
        model = getattr(transformers, model_class).from_pretrained(root, local_files_only=True, dtype=torch.float32)
        model.to(torch.device(device)).eval()
    except Exception as err:  # any library failure is a load failure of this path
        raise ModelLoadError(f"{role}: cannot load {fmt} from {root}: {err}") from err
    return model, processor


def distinct_images(images: Sequence[np.ndarray]) -> tuple[list[int], list[np.ndarray]]:
    """Each image's row among the distinct ones (the same array, or equal shape and pixels), and those."""
    rows: dict[object, int] = {}
    distinct: list[np.ndarray] = []
    image_of = []
    for image in images:
        row = rows.get(id(image))
        if row is None:
            digest = (image.shape, hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).digest())
            row = rows.get(digest)
            if row is None:
                row = rows[digest] = len(distinct)
                distinct.append(image)
            rows[id(image)] = row
        image_of.append(row)
    return image_of, distinct


def encode_in_batches(
    processor: Any,
    images: Sequence[np.ndarray],
    batch_size: int,
    encode: Callable[[torch.Tensor], Sequence[torch.Tensor]],
) -> list[torch.Tensor]:
    """``images`` (uint8 [H, W, 3]) through ``processor.image_processor`` and ``encode`` at most
    ``batch_size`` at a time: ``encode`` takes pixel values [b, 3, S, S] (on the CPU) and returns
    the feature levels [b, C_l, h_l, w_l]; returns each level for all images, float32
    [len(images), C_l, h_l, w_l]."""
    levels: list[list[torch.Tensor]] = []
    for start in range(0, len(images), batch_size):
        chunk = list(images[start : start + batch_size])
        pixels = processor.image_processor(images=chunk, return_tensors="pt", input_data_format="channels_last")
        levels.append([level.float() for level in encode(pixels["pixel_values"])])
    return [torch.cat(level) for level in zip(*levels)]
