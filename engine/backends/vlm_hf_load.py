"""Loading a llava-hf directory for ``vlm_hf.HFLlavaVLM``: its files, dtype and options checked
before anything is read, then the processor and the model, offline (``HFLlavaVLM.load``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConfigError, ModelLoadError
from ..models.checks import require_files
from .llava_common import chat_format_of, refuse_float32_overflow
from .llava_image import complete_processor

if TYPE_CHECKING:
    from transformers import LlavaForConditionalGeneration, ProcessorMixin

ROLE = "vlm"
FORMAT = "llava-hf LlavaForConditionalGeneration"
EXPECTED_FILES = (
    "config.json",
    "model.safetensors|model.safetensors.index.json",
    "tokenizer.json|tokenizer.model",
    "preprocessor_config.json|processor_config.json",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Padded tokens per forward pass (rows x longest row, + max_new_tokens per row when
# generating): ``vlm_hf``'s module docstring's arithmetic for LLaVA-1.5-13B on an 80 GB GPU.
DEFAULT_MAX_BATCH_TOKENS = 16384


def load_option_types() -> dict[str, Any]:
    """The options ``load_settings`` takes, name -> type (``HFLlavaVLM.option_types``)."""
    return {"max_batch_size": int | None, "max_batch_tokens": int | None, "shared_prefix": bool, "chat_format": str | None}


def load_settings(path: str | Path, device: str, dtype: str, options: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The checked directory and the options with their defaults (``max_batch_size``,
    ``max_batch_tokens``, ``shared_prefix``, ``chat_format``), all refused before anything loads:
    missing files, an unknown dtype or option, a bound below 1, an unknown chat format, float32
    weights that cannot fit the CUDA device (``llava_common.refuse_float32_overflow``)."""
    p = require_files(ROLE, path, EXPECTED_FILES, FORMAT)
    if dtype not in DTYPES:
        raise ConfigError(f"{ROLE}: unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    max_batch_size = options.pop("max_batch_size", 256)
    max_batch_tokens = options.pop("max_batch_tokens", DEFAULT_MAX_BATCH_TOKENS)
    shared_prefix = options.pop("shared_prefix", True)
    chat_format = options.pop("chat_format", None)
    if options:
        raise ConfigError(f"{ROLE}: unknown option(s) for {FORMAT}: {', '.join(sorted(options))}")
    if max_batch_size is not None and int(max_batch_size) < 1:
        raise ConfigError(f"{ROLE}: max_batch_size must be >= 1, got {max_batch_size}")
    if max_batch_tokens is not None and int(max_batch_tokens) < 1:
        raise ConfigError(f"{ROLE}: max_batch_tokens must be >= 1, got {max_batch_tokens}")
    chat_format_of(ROLE, chat_format, None)  # a bad name is refused before anything loads
    refuse_float32_overflow(p, device, dtype)
    settings = {
        "max_batch_size": _optional_int(max_batch_size),
        "max_batch_tokens": _optional_int(max_batch_tokens),
        "shared_prefix": bool(shared_prefix),
        "chat_format": chat_format,
    }
    return p, settings


def check_shared_prefix_api(p: Path) -> None:
    """The cache internals ``llava_prefix`` builds on, checked before loading (``hf_cache_shim``):
    a ``ModelLoadError`` naming the missing piece."""
    from .hf_cache_shim import check_cache_api
    from .private_api import PrivateAPIError

    try:
        check_cache_api()
    except PrivateAPIError as err:
        raise ModelLoadError(f"{ROLE}: cannot load {FORMAT} from {p} with shared_prefix: {err}") from None


def load_llava(p: Path, device: str, dtype: str) -> tuple["LlavaForConditionalGeneration", "ProcessorMixin"]:
    """The processor and the model (on ``device``, in eval mode) of a checked directory; any
    library failure, or a weight missing from the checkpoint, is a ``ModelLoadError``."""
    # Imported here so that merely importing the backends does not pay transformers' import.
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    try:
        processor = AutoProcessor.from_pretrained(p, local_files_only=True)
        model, info = LlavaForConditionalGeneration.from_pretrained(
            p, local_files_only=True, dtype=DTYPES[dtype], output_loading_info=True
        )
        # A missing weight would be silently random-initialised: refuse it instead.
        if info["missing_keys"]:
            raise ValueError(f"weights missing from the checkpoint: {sorted(info['missing_keys'])[:5]}")
        complete_processor(processor, model.config)  # an older snapshot's processor lacks patch_size
        model = model.to(torch.device(device)).eval()
    except Exception as err:
        raise ModelLoadError(f"{ROLE}: cannot load {FORMAT} from {p}: {err}") from err
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return model, processor


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)
