"""LLaVA-1.5 under vLLM's offline ``LLM`` engine: the throughput VLM backend.

Same contract as the transformers backend (``vlm_hf.py``), request for request: the prompt is
wrapped in the same chat format (LLaVA's "llava_v1" conversation by default, ``llava_common``),
tokenised by the same rule into the ids vLLM is handed (``prompt_token_ids``: vLLM would tokenise
a text prompt in one piece, not split at the image as LLaVA does), an answer's tokens are those
that follow the prompt when ``prompt + " " + answer`` is tokenised, and
a score is the mean teacher-forced log-prob of those tokens. What changes is the batching: ``generate`` sends every request to vLLM in one
``LLM.generate`` call, and ``score`` sends every (image, prompt + answer) in one call that asks
for prompt log-probs, so vLLM's scheduler packs the work and its prefix cache shares the
image and prompt of requests about the same image.

The engine runs in this process by default (``multiprocessing=False``): 2 s to start instead
of ~20 s for a spawned engine core, and no ``if __name__ == "__main__"`` guard needed. vLLM's
CPU worker then changes process state (thread count, ``torch.set_num_threads``, RNG seeds),
which ``load`` puts back. Use it as a context manager, or call ``close()``: otherwise vLLM
force-kills its engine at exit.

Options: every ``vllm.EngineArgs`` field of the installed vLLM (``tensor_parallel_size``,
``quantization``, ``limit_mm_per_prompt``, ``cpu_offload_gb``, ``compilation_config``, ...),
its names and types read off the dataclass (``engine_option_types``), except ``model``,
``tokenizer`` and ``dtype``, which come from the role's path and dtype; plus ``multiprocessing``
and ``chat_format`` (as the transformers backend's).

Memory on CUDA and the options' types: ``vllm_options``. The engine's start, lifetime, call and
scoring loop, shared with the Qwen-VL backend (``vlm_qwen_vllm``): ``vllm_engine``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import ConfigError
from ..models.checks import require_files
from .llava_common import chat_format_of, check_lengths, scoring_texts
from .llava_image import complete_processor, processor_fill
from .llava_tokens import LlavaText, answer_token_ids
from .vllm_engine import VLLMEngine, check_engine_options, engine_requests, engine_settings, start_engine
from .vllm_options import engine_option_types
from .vlm_hf import EXPECTED_FILES

if TYPE_CHECKING:
    from transformers import ProcessorMixin
    from vllm import LLM

ROLE = "vlm"
FORMAT = "llava-hf LlavaForConditionalGeneration (vLLM)"
DTYPES = ("float32", "bfloat16", "float16")
# In-process engines share vLLM's process-global distributed state; closing one tears it
# down under the others. So one at a time, for every vLLM backend: ``vllm_slot``.


class VLLMLlavaVLM(LlavaText, VLLMEngine):
    """The ``VLM`` protocol on a vLLM ``LLM``: one engine call per ``generate`` / ``score``.

    ``calls`` counts the engine calls made, so a caller can check the batching; ``stats`` /
    ``last_stats`` the scoring work in the shape of ``HFLlavaVLM.stats`` plus the prompt tokens
    vLLM's prefix cache served, ``work`` the prompt tokens computed and cached (``VLLMEngine``).
    """

    def __init__(
        self,
        llm: "LLM",
        processor: "ProcessorMixin",
        prefix_caching: bool,
        in_process: bool = False,
        chat_format: str = "llava_v1",
    ) -> None:
        VLLMEngine.__init__(self, llm, prefix_caching, in_process)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.chat_format = chat_format

    @classmethod
    def option_types(cls) -> dict[str, Any]:
        """The options ``load`` takes, name -> type: every ``vllm.EngineArgs`` field it forwards
        (``engine_option_types``) plus ``multiprocessing``; checked by ``int_engine.models.load``
        before anything is loaded."""
        return engine_option_types() | {"multiprocessing": bool, "chat_format": str | None}

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", dtype: str = "float32", **options) -> "VLLMLlavaVLM":
        """Start a vLLM engine on a llava-hf directory (offline).

        ``dtype`` defaults to float32: vLLM's own default downcasts a float32 checkpoint to
        bfloat16, which moves scores by ~0.1. Options: any ``vllm.EngineArgs`` field but
        ``model``, ``tokenizer`` and ``dtype`` (None: vLLM's default), with this backend's
        defaults (``engine_kwargs``): ``enable_prefix_caching`` True, ``enforce_eager`` False
        (True skips torch.compile: faster start, slower steps), ``seed`` 0, and on CUDA
        ``gpu_memory_utilization`` 0.5 (module docstring), on CPU ``kv_cache_memory_bytes``
        1 GiB (there ``gpu_memory_utilization`` is a share of the NUMA node's RAM, less this
        process's); ``multiprocessing`` (run the engine core in a spawned process;
        default False); and ``chat_format`` ("llava_v1", the default for LLaVA-1.5, or
        "checkpoint": ``HFLlavaVLM.load``).

        float32 on CUDA is refused before vLLM starts when the weights alone exceed the engine's
        share of the GPU (``gpu_memory_utilization``, per tensor/pipeline-parallel GPU;
        ``llava_common.check_weights_fit``), unless ``quantization`` or ``cpu_offload_gb`` changes
        what the GPU holds.
        """
        p = require_files(ROLE, path, EXPECTED_FILES, FORMAT)
        if dtype not in DTYPES:
            raise ConfigError(f"{ROLE}: unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
        multiprocessing = bool(options.pop("multiprocessing", False))
        chat_format = options.pop("chat_format", None)
        chat_format_of(ROLE, chat_format, None)  # a bad name is refused before anything starts
        check_engine_options(FORMAT, options)
        engine = engine_settings(p, device, dtype, options)
        llm, (processor, config) = start_engine(p, device, dtype, engine, not multiprocessing, FORMAT, read_processor)
        vlm = cls(
            llm,
            processor,
            bool(engine.get("enable_prefix_caching")),
            in_process=not multiprocessing,
            chat_format=chat_format_of(ROLE, chat_format, config),
        )
        vlm.claim_slot()
        return vlm

    # ---- text --------------------------------------------------------------------------------

    def _answer_ids(self, prompt_texts: list[str], full_texts: list[str]) -> list[list[int]]:
        """Each answer's token ids: those of the full text after its shared prefix with the
        prompt's tokenisation (the rule of ``HFLlavaVLM._answer_lengths``)."""
        return answer_token_ids(self.tokenizer, prompt_texts, full_texts, self.image_split)

    def _requests(self, images: Sequence[np.ndarray], texts: list[str]) -> list[dict]:
        """One request per row, its text as token ids (``token_ids``); a view repeated over rows is
        converted (and checked) once."""
        # Padded to a square as LLaVA-1.5 was trained, not centre-cropped by vLLM's processor.
        return engine_requests(images, self.token_ids(texts), processor_fill(self.processor.image_processor))

    # ---- the protocol (``generate``: ``VLLMEngine``'s) ------------------------------------------

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """Mean log-probability of ``answers[j]``'s tokens given ``images[j]`` and the
        chat-templated ``prompts[j]``, teacher forced: float32 [len(answers)], each <= 0.

        One engine call over all (image, prompt + " " + answer) requests, reading vLLM's prompt
        log-probs at the answer's positions. With prefix caching on, requests may reuse cached
        KV blocks of an earlier request's image and prompt. A cache hit that reaches into the
        answer leaves no log-probs there (vLLM only scores the positions it computes), so those
        few requests are scored again without reading the cache, in a second call
        (``VLLMEngine._score_requests``).
        """
        self._check_open()
        if not answers:
            check_lengths(images, prompts, "prompts")
            return np.zeros(0, np.float32)
        prompt_texts, full_texts = scoring_texts(self.chat_text, images, prompts, answers)
        answer_ids = self._answer_ids(prompt_texts, full_texts)
        return self._score_requests(self._requests(images, full_texts), answer_ids)


def read_processor(path: Path) -> tuple["ProcessorMixin", Any]:
    """The checkpoint's processor, completed (an older snapshot's lacks ``patch_size``; vLLM counts
    image tokens itself), and its config."""
    from transformers import AutoConfig, AutoProcessor

    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    complete_processor(processor, config)
    return processor, config
