"""LLaVA-1.5 through transformers: the reference (and CPU) VLM backend.

Loads a llava-hf style directory (``llava-hf/llava-1.5-13b-hf`` or the tiny zoo's) with
``AutoProcessor`` and ``LlavaForConditionalGeneration``, offline. Every prompt is wrapped in
LLaVA's "llava_v1" conversation, the one LLaVA-1.5 was trained on and the INT authors ran
(system prompt, then ``USER: <image>\\n{prompt} ASSISTANT:``; ``llava_common``), or with
``chat_format: checkpoint`` in the checkpoint's own chat template.

Memory, for the real LLaVA-1.5-13B in float16 (Llama-2-13B: 40 layers, 5120 wide, MLP 13824,
vocab 32064; CLIP ViT-L/14 at 336 px: 24 layers, 577 tokens; an image is 576 tokens, a scoring
row ~620). Weights: 13.35e9 parameters x 2 B = 26.7 GB.

- KV cache: 2 (K, V) x 40 layers x 5120 x 2 B = 800 KiB per token. Transformers builds one
  unless told otherwise (``use_cache`` is True in the config): 256 rows x 620 tokens = 159k
  tokens would hold 130 GB. Scoring builds one only where it is read: with ``shared_prefix``
  (default) each pass's distinct prefixes (image + prompt) run once with ``use_cache=True``
  and their candidates' answers on that cache, never copied per candidate: at most
  ``max_batch_tokens`` x 800 KiB, the bound ``generate`` has (arithmetic in ``llava_prefix``).
  The answer pass and the full-sequence path (``shared_prefix: false``) run ``use_cache=False``.
- Activations of a pass without a cache: one decoder layer's at a time, at its MLP's peak the
  residual and normed input (2 x 10 KB) and gate, up and their product (3 x 27.6 KB), ~100 KB
  a token, ~150 KB with attention's and the kept last hidden state (measured on the small zoo's
  LLaVA in float32, 1024 wide: ~60 KB a token; x 2.5 for 5120 wide in float16).
- Logits: 32064 x 4 B = 128 KB a token in float32. ``answer_logprob_means`` applies the LM head
  only at the positions that predict an answer token ([A, V] for A answer tokens), in float32
  whatever the model's dtype (``answer_logprobs``), reading the head's weight in float32 blocks
  of ``HEAD_BLOCK`` words: 8192 x 5120 x 4 B = 168 MB transient, not the whole 656 MB copy.
- Vision tower: run up to the selected layer only, one layer's states at a time (~14 MB
  transient per distinct image), not all 25 hidden states (29.5 MB per image). Pixels: only
  the distinct images go to the device (3 x 336 x 336 x 2 B = 677 KB each), not one per row.

So a pass's memory is set by its padded tokens, ``max_batch_tokens`` (rows x longest row, +
``max_new_tokens`` per row when generating), not by the rows of a call. The default, 16384
(~26 rows of 620 tokens), holds ~2.5 GB of scoring activations, and in ``generate`` a KV cache
of at most 16384 x 800 KiB = 13.4 GB plus the prefill's 2.5 GB: with the weights ~43 GB of an
80 GB GPU, leaving the other roles (~20 GB, see ``vllm_options``) ample room. ``max_batch_size``
(rows, default 256) stays an upper bound; on CPU both bound host memory the same way.

The backend is one class, ``HFLlavaVLM``, built from a module per idea: ``vlm_hf_load`` (files,
dtypes, options, the processor and model), ``vlm_hf_inputs`` (texts, token ids, passes,
processor tensors), ``vlm_hf_vision`` (the vision tower and the image-token merge),
``vlm_hf_generate`` (``generate``), ``vlm_hf_score`` (``score``, and what ``llava_prefix``
reads) and ``vlm_hf_head`` (the LM head at the answer positions, in float32).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .llava_common import chat_format_of
from .llava_tokens import ExpandedIds, ImageSplit
from .vlm_hf_generate import LlavaGenerate
from .vlm_hf_inputs import LlavaInputs
from .vlm_hf_load import (
    DEFAULT_MAX_BATCH_TOKENS,
    DTYPES,
    EXPECTED_FILES,
    FORMAT,
    ROLE,
    check_shared_prefix_api,
    load_llava,
    load_option_types,
    load_settings,
)
from .vlm_hf_score import LlavaScore
from .vlm_hf_vision import LlavaVision

if TYPE_CHECKING:
    from transformers import LlavaForConditionalGeneration, ProcessorMixin

# What other modules read off this one (models.check_role, vlm_vllm, bench.cost), defined in vlm_hf_load.
__all__ = ["DEFAULT_MAX_BATCH_TOKENS", "DTYPES", "EXPECTED_FILES", "FORMAT", "HFLlavaVLM", "ROLE"]


class HFLlavaVLM(LlavaInputs, LlavaVision, LlavaGenerate, LlavaScore):
    """The ``VLM`` protocol on a transformers Llava model; greedy generation and
    teacher-forced scoring, in passes of at most ``max_batch_tokens`` padded tokens and
    ``max_batch_size`` rows (see ``vlm_hf_inputs.token_passes`` and the module docstring's arithmetic)."""

    def __init__(
        self,
        model: "LlavaForConditionalGeneration",
        processor: "ProcessorMixin",
        device: torch.device,
        max_batch_size: int | None = None,
        max_batch_tokens: int | None = None,
        shared_prefix: bool = True,
        chat_format: str = "llava_v1",
    ) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.device = device
        self.dtype = next(model.parameters()).dtype
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.shared_prefix = shared_prefix
        self.chat_format = chat_format
        # "llava_v1" texts are tokenised split at the image token, as LLaVA's tokenizer_image_token
        self.image_split: ImageSplit = (processor.image_token, model.config.image_token_id) if chat_format == "llava_v1" else None
        # Scoring work, summed over calls (``last_stats``: the latest call's): language-model
        # tokens run for the prefixes (image + prompt; once per distinct prefix and pass when
        # shared) and for the answers, rows scored, calls.
        self.stats = dict.fromkeys(("calls", "rows", "prefix_tokens", "answer_tokens"), 0)
        self.last_stats = dict(self.stats)
        self._image_tokens: int | None = None  # tokens one "<image>" expands to; see _row_lengths
        self._expanded: ExpandedIds | None = None  # the rows' ids with "<image>" expanded (llava_tokens)
        self.work = {"prefill_tokens": 0}  # int_engine.work: prompt tokens computed (generate + score)

    @classmethod
    def option_types(cls) -> dict[str, Any]:
        """The options ``load`` takes, name -> type: checked by ``int_engine.models.load``
        before anything is loaded."""
        return load_option_types()

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", dtype: str = "float32", **options) -> "HFLlavaVLM":
        """Load a llava-hf directory. Options: ``max_batch_tokens`` (padded tokens per forward
        pass, rows x longest row, plus ``max_new_tokens`` per row when generating; default
        ``DEFAULT_MAX_BATCH_TOKENS``, sized in the module docstring; None = no token bound) and
        ``max_batch_size`` (rows per pass at most, default 256; None = no row bound): one call
        of thousands of rows runs in passes within both, so memory does not grow with the
        number of candidates. ``shared_prefix`` (default True): score the rows that share an
        (image, prompt) on one run of that prefix (``llava_prefix``); False runs every row's
        full sequence. ``chat_format``: "llava_v1" (the default for a LLaVA-1.5 checkpoint: the
        conversation it was trained on and the authors ran, with its system prompt, which
        llava-hf's template drops; ``llava_common``) or "checkpoint" (the checkpoint's own chat
        template; the default for any other checkpoint).

        float32 on a CUDA device is refused before loading when the weights alone exceed the
        GPU's memory (``llava_common.check_weights_fit``)."""
        p, settings = load_settings(path, device, dtype, options)
        if settings["shared_prefix"]:
            check_shared_prefix_api(p)
        model, processor = load_llava(p, device, dtype)
        return cls(
            model,
            processor,
            torch.device(device),
            settings["max_batch_size"],
            settings["max_batch_tokens"],
            settings["shared_prefix"],
            chat_format_of(ROLE, settings["chat_format"], model.config),
        )
