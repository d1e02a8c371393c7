"""What the transformers image backends of SAM 2.1 (``segment_sam2``) and SAM 3 (``segment_sam3``)
share: their dtype and runtime options, loading a model with its processor offline, and encoding
the distinct images of a call once, in bounded batches.

A call's requests often share images (several prompts or phrases on one view); each distinct
image (the same array, or equal shape and pixels) goes through the image encoder once, and each
request reads its image's row of the stacked features.

Runtime "compile" (as the ``sam`` and ``sd`` backends' ``runtime="compile"``) wraps the image
encoder pass, nearly all of a call's compute, with ``torch.compile(..., dynamic=False)`` (mode:
torch's default, inductor), once at load; the graph is built at the first call. Its input is
always [batch_size, 3, S, S]: the processor resizes every image to S, and ``encode_in_batches``
pads a call's last, short batch to ``batch_size`` with copies of its last image (their features
are dropped), so every later call reuses that one graph instead of compiling one per batch size.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError, ModelLoadError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
RUNTIMES = ("eager", "compile")


def torch_dtype(role: str, dtype: str) -> torch.dtype:
    """The torch dtype named ``dtype`` (one of ``DTYPES``); ``ConfigError`` for another name."""
    if dtype not in DTYPES:
        raise ConfigError(f"{role}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def check_runtime(role: str, runtime: str) -> None:
    """ConfigError unless ``runtime`` is one of ``RUNTIMES`` (worded as ``export.runtime.check_runtime``)."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"{role}: runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")


def encoder_runtime(runtime: str, encode: Callable[..., Any]) -> Callable[..., Any]:
    """The image encoder pass ``encode`` as is ("eager") or compiled once for one static batch
    shape ("compile", module docstring); ``check_runtime`` first."""
    return torch.compile(encode, dynamic=False) if runtime == "compile" else encode


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
    pad: bool = False,
) -> list[torch.Tensor]:
    """``images`` (uint8 [H, W, 3]) through ``processor.image_processor`` and ``encode`` at most
    ``batch_size`` at a time: ``encode`` takes pixel values [b, 3, S, S] (on the CPU) and returns
    the feature levels [b, C_l, h_l, w_l]; returns each level for all images, float32
    [len(images), C_l, h_l, w_l]. pad: b is always ``batch_size``, a short last batch padded with
    copies of its last image whose features are dropped (a compiled encoder's one shape)."""
    levels: list[list[torch.Tensor]] = []
    for start in range(0, len(images), batch_size):
        chunk = list(images[start : start + batch_size])
        pixels = processor.image_processor(images=chunk, return_tensors="pt", input_data_format="channels_last")
        pixels = pixels["pixel_values"]
        if pad and len(chunk) < batch_size:
            pixels = torch.cat([pixels, pixels[-1:].expand(batch_size - len(chunk), -1, -1, -1)])
        levels.append([level[: len(chunk)].float() for level in encode(pixels)])
    return [torch.cat(level) for level in zip(*levels)]
