"""Qwen2.5-VL and Qwen3-VL under vLLM's offline ``LLM`` engine: the throughput form of
``vlm_qwen.HFQwenVLM``, one class for both families (config.json ``model_type``).

Same contract as the transformers backend, request for request: the prompt goes through the
checkpoint's chat template (``QwenInputs.chat_text``: an image then the prompt in a ChatML user
turn, up to ``<|im_start|>assistant\\n``), the text is tokenised by us into the ids vLLM is handed
(``prompt_token_ids``, one ``<|image_pad|>`` that vLLM's processor expands to the image's merged
patches, as transformers' processor does), a scored answer is the stripped answer's own tokens
appended to those ids (``QwenInputs.answer_ids``), and a score is the mean teacher-forced
log-prob of those tokens, read off vLLM's prompt log-probs. Images are shown as they are (the
processor resizes them; no padding to a square), and ``generate`` rewrites each answer's box
into the engine's frame (``qwen_boxes.engine_box_text``, ``box_frame`` "engine") exactly as
the transformers backend does, or leaves the model's text alone ("native").

What changes is the batching: one ``LLM.generate`` call per ``generate`` / ``score``, vLLM's
scheduler packing the rows and its prefix cache sharing a view's image and prompt between its
candidates (a hit that reaches into an answer is scored again without the cache, as in
``vlm_vllm``). Process handling, lifetime and options are ``vlm_vllm``'s (both on ``vllm_engine``):
the engine runs in this process by default, ``load`` restores what vLLM's CPU worker changes, one
in-process engine (of either vLLM backend) at a time; use it as a context manager or call
``close()``.

Options: every ``vllm.EngineArgs`` field (``vllm_options``) but ``model``, ``tokenizer`` and
``dtype``; ``limit_mm_per_prompt`` defaults to one image and no video (the engine sends one image
per request; vLLM would otherwise reserve room for video). Plus ``multiprocessing`` and
``box_frame``. On CPU the KV cache is 1 GiB by default (``vllm_options.CPU_KV_CACHE_BYTES``):
vLLM refuses to start when one request of ``max_model_len`` (the checkpoint's, 128k for the
real models) does not fit it, so real checkpoints need ``max_model_len`` (e.g. 8192) or more
``kv_cache_memory_bytes``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import ConfigError
from ..models.checks import require_files
from .llava_common import chat_texts
from .qwen_boxes import engine_box_text
from .qwen_inputs import QwenInputs, check_score_args, read_family
from .vllm_engine import VLLMEngine, check_engine_options, engine_requests, engine_settings, start_engine
from .vllm_options import engine_option_types
from .vlm_qwen import BOX_FRAMES, EXPECTED

if TYPE_CHECKING:
    from transformers import ProcessorMixin
    from vllm import LLM

ROLE = "vlm"
FORMAT = "Qwen2.5-VL / Qwen3-VL (vLLM)"
EXPECTED_FILES = EXPECTED
DTYPES = ("float32", "bfloat16", "float16")
# This backend's defaults over vllm_options.ENGINE_DEFAULTS: one image, no video per request.
QWEN_ENGINE_DEFAULTS: dict[str, Any] = {"limit_mm_per_prompt": {"image": 1, "video": 0}}


class VLLMQwenVLM(QwenInputs, VLLMEngine):
    """The ``VLM`` protocol on a vLLM ``LLM`` serving a Qwen2.5-VL or Qwen3-VL checkpoint.

    ``calls`` counts the engine calls; ``stats`` / ``last_stats`` and ``work`` count tokens as
    ``vlm_vllm.VLLMLlavaVLM`` does (prefix, answer and prefix-cache-served tokens: ``VLLMEngine``).
    """

    def __init__(
        self,
        llm: "LLM",
        processor: "ProcessorMixin",
        family: str,
        prefix_caching: bool,
        in_process: bool = False,
        box_frame: str = "engine",
    ) -> None:
        VLLMEngine.__init__(self, llm, prefix_caching, in_process)
        self.processor, self.family = processor, family
        self.tokenizer = processor.tokenizer
        self.box_frame = box_frame

    @classmethod
    def option_types(cls) -> dict[str, Any]:
        """The options ``load`` takes, name -> type: every ``vllm.EngineArgs`` field it forwards
        plus ``multiprocessing`` and ``box_frame``."""
        return engine_option_types() | {"multiprocessing": bool, "box_frame": str}

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "cpu",
        dtype: str = "float32",
        multiprocessing: bool = False,
        box_frame: str = "engine",
        **engine_options: Any,
    ) -> "VLLMQwenVLM":
        """Start a vLLM engine on a Qwen2.5-VL / Qwen3-VL directory (offline).

        ``dtype`` float32 by default (as ``vlm_vllm``: vLLM's own default would downcast);
        ``engine_options``: any ``vllm.EngineArgs`` field but ``model``, ``tokenizer``, ``dtype``,
        over ``vllm_options.engine_kwargs``' defaults (prefix caching on, ``seed`` 0, the KV cache
        bound by device) and ``QWEN_ENGINE_DEFAULTS``; ``multiprocessing``: run the engine core
        in a spawned process; ``box_frame``: "engine" or "native" (``HFQwenVLM.load``).
        """
        p = require_files(ROLE, path, EXPECTED_FILES, FORMAT)
        if dtype not in DTYPES:
            raise ConfigError(f"{ROLE}: unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
        check_engine_options(FORMAT, engine_options)  # a stray option first: it names the mistake
        if box_frame not in BOX_FRAMES:
            raise ConfigError(f"{ROLE}: unknown box_frame {box_frame!r}; expected one of {', '.join(BOX_FRAMES)}")
        family = read_family(p, FORMAT)
        engine = engine_settings(p, device, dtype, QWEN_ENGINE_DEFAULTS | engine_options)
        llm, processor = start_engine(p, device, dtype, engine, not multiprocessing, FORMAT, read_processor)
        vlm = cls(llm, processor, family, bool(engine.get("enable_prefix_caching")), not multiprocessing, box_frame)
        vlm.claim_slot()
        return vlm

    # ---- requests ----------------------------------------------------------------------------

    def text_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each chat text's ids, its one ``<|image_pad|>`` unexpanded (vLLM expands it), each
        distinct text tokenised once, no special tokens added (the template writes them)."""
        distinct = list(dict.fromkeys(texts))
        ids = dict(zip(distinct, self.tokenizer(distinct, add_special_tokens=False)["input_ids"]))
        return [list(ids[t]) for t in texts]

    def _requests(self, images: Sequence[np.ndarray], texts: list[str]) -> list[dict]:
        """One request per row of chat texts (``text_ids``), the view shown as it is (the
        processor resizes it); a view repeated over rows is converted (and checked) once."""
        return engine_requests(images, self.text_ids(texts))

    # ---- the protocol (``generate``: ``VLLMEngine``'s) ------------------------------------------

    def engine_frame(self, images: Sequence[np.ndarray], answers: list[str]) -> list[str]:
        """``answers`` with their boxes in the engine's frame (``box_frame`` "engine", as
        ``HFQwenVLM.generate``), each knowing its view's size and its resized input's
        (``QwenInputs.input_size``); "native": as the model wrote them."""
        if self.box_frame == "native":
            return answers
        return [engine_box_text(a, self.family, im.shape[1], im.shape[0], self.input_size(im)) for a, im in zip(answers, images)]

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """Mean log-probability of ``answers[j]``'s own tokens (stripped, tokenised alone) after
        ``images[j]`` and the chat-templated ``prompts[j]``, teacher forced: float32
        [len(answers)], each <= 0. One engine call over all rows reading vLLM's prompt log-probs
        at the answer positions; rows whose prefix-cache hit reached into the answer (no
        log-probs there) are scored again without reading the cache, in a second call
        (``VLLMEngine._score_requests``)."""
        self._check_open()
        check_score_args(images, prompts, answers)
        if not answers:
            return np.zeros(0, np.float32)
        answer_ids = self.answer_ids(answers)
        prefixes = self.text_ids(chat_texts(self.chat_text, prompts))
        ids = [p + a for p, a in zip(prefixes, answer_ids)]
        return self._score_requests(engine_requests(images, ids), answer_ids)


def read_processor(path: Path) -> "ProcessorMixin":
    """The checkpoint's processor (its tokenizer, chat template and image processor)."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path, local_files_only=True)
