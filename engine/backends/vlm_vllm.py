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

Memory on CUDA and the options' types: ``vllm_options``.
"""

from __future__ import annotations

import os
import random
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, ModelLoadError
from ..models.checks import require_files
from . import vllm_slot
from .llava_common import (
    _check_image,
    _check_lengths,
    chat_format_of,
    chat_texts,
    distinct_rows,
    refuse_float32_overflow,
    scoring_texts,
)
from .llava_image import complete_processor, pad_to_square, processor_fill
from .llava_tokens import LlavaText, answer_token_ids
from .vllm_options import engine_kwargs, engine_option_types
from .vlm_hf import EXPECTED_FILES

if TYPE_CHECKING:
    from transformers import ProcessorMixin
    from vllm import LLM

ROLE = "vlm"
FORMAT = "llava-hf LlavaForConditionalGeneration (vLLM)"
DTYPES = ("float32", "bfloat16", "float16")
SHUTDOWN_TIMEOUT_S = 30
# In-process engines share vLLM's process-global distributed state; closing one tears it
# down under the others. So one at a time, for every vLLM backend: ``vllm_slot``.


class VLLMLlavaVLM(LlavaText):
    """The ``VLM`` protocol on a vLLM ``LLM``: one engine call per ``generate`` / ``score``.

    ``calls`` counts the engine calls made, so a caller can check the batching.
    """

    def __init__(
        self,
        llm: "LLM",
        processor: "ProcessorMixin",
        prefix_caching: bool,
        in_process: bool = False,
        chat_format: str = "llava_v1",
    ) -> None:
        self.llm = llm
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.prefix_caching = prefix_caching
        self.in_process = in_process
        self.chat_format = chat_format
        self.calls = 0
        # Scoring work, summed over calls (``last_stats``: the latest call's), the shape of
        # ``HFLlavaVLM.stats``: prefix (image + prompt) and answer tokens vLLM computed, and the
        # prompt tokens its prefix cache served instead (each output's ``num_cached_tokens``).
        self.stats = dict.fromkeys(("calls", "rows", "prefix_tokens", "answer_tokens", "cached_tokens"), 0)
        self.last_stats = dict(self.stats)
        # int_engine.work: prompt tokens computed, and those a prefix-cache hit spared
        self.work = {"prefill_tokens": 0, "prefill_cached_tokens": 0}
        self._closed = False

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
        unknown = sorted(set(options) - set(engine_option_types()))
        if unknown:
            raise ConfigError(f"{ROLE}: unknown option(s) for {FORMAT}: {', '.join(unknown)}")
        engine = engine_kwargs(device, options)
        if not engine.get("quantization") and not engine.get("cpu_offload_gb"):
            # with kv_cache_memory_bytes alone vLLM sizes no share: the weights must fit the GPU
            gpus = int(engine.get("tensor_parallel_size", 1)) * int(engine.get("pipeline_parallel_size", 1))
            refuse_float32_overflow(p, device, dtype, float(engine.get("gpu_memory_utilization", 1.0)), gpus)

        # Imported here: vllm is an optional extra, and importing it takes seconds.
        try:
            from vllm import LLM
        except ImportError as err:
            raise ModelLoadError(f"{ROLE}: the vllm backend needs vLLM (pip install 'int-engine[vllm]'): {err}") from None
        from transformers import AutoConfig, AutoProcessor
        from vllm.platforms import current_platform

        # vLLM has no device argument: each build runs on one kind of device.
        if torch.device(device).type != current_platform.device_type:
            raise ConfigError(
                f"{ROLE}: device {device!r} asked for, but the installed vLLM runs on {current_platform.device_type!r}"
            )
        if not multiprocessing:
            vllm_slot.require_free(ROLE)
        try:
            processor = AutoProcessor.from_pretrained(p, local_files_only=True)
            config = AutoConfig.from_pretrained(p, local_files_only=True)
            # an older snapshot's processor lacks patch_size (vLLM counts image tokens itself)
            complete_processor(processor, config)
            with process_state_kept(in_process=not multiprocessing):
                llm = LLM(str(p), tokenizer=str(p), dtype=dtype, **engine)
        except Exception as err:
            raise ModelLoadError(f"{ROLE}: cannot load {FORMAT} from {p}: {err}") from err
        vlm = cls(
            llm,
            processor,
            bool(engine.get("enable_prefix_caching")),
            in_process=not multiprocessing,
            chat_format=chat_format_of(ROLE, chat_format, config),
        )
        if vlm.in_process:
            vllm_slot.claim(ROLE, vlm)
        return vlm

    # ---- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the engine (waits up to 30 s for it to finish cleanly). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.llm.llm_engine.engine_core.shutdown(timeout=SHUTDOWN_TIMEOUT_S)
        finally:
            vllm_slot.release(self)

    def __enter__(self) -> "VLLMLlavaVLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- text --------------------------------------------------------------------------------

    def _answer_ids(self, prompt_texts: list[str], full_texts: list[str]) -> list[list[int]]:
        """Each answer's token ids: those of the full text after its shared prefix with the
        prompt's tokenisation (the rule of ``HFLlavaVLM._answer_lengths``)."""
        return answer_token_ids(self.tokenizer, prompt_texts, full_texts, self.image_split)

    def _requests(self, images: Sequence[np.ndarray], texts: list[str]) -> list[dict]:
        """One request per row, its text as token ids (``token_ids``); a view repeated over rows is
        converted (and checked) once."""
        firsts, inverse = distinct_rows(images)
        # Padded to a square as LLaVA-1.5 was trained, not centre-cropped by vLLM's processor.
        fill = processor_fill(self.processor.image_processor)
        pil = [Image.fromarray(pad_to_square(_check_image(images[j], j), fill)) for j in firsts]
        ids = self.token_ids(texts)
        return [{"prompt_token_ids": row, "multi_modal_data": {"image": pil[u]}} for row, u in zip(ids, inverse)]

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{ROLE}: the vLLM engine was closed")

    def _run(self, requests: list[dict], params) -> list:
        self._check_open()
        self.calls += 1
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        cached = sum(getattr(out, "num_cached_tokens", None) or 0 for out in outputs)
        self.work["prefill_tokens"] += sum(len(out.prompt_token_ids) for out in outputs) - cached
        self.work["prefill_cached_tokens"] += cached
        return outputs

    # ---- the protocol ------------------------------------------------------------------------

    def generate(
        self,
        images: Sequence[np.ndarray],
        prompts: Sequence[str],
        max_new_tokens: int,
        temperature: float = 0.0,
        seeds: Sequence[int] | None = None,
    ) -> list[str]:
        """One answer per (image, prompt) pair, without special tokens and surrounding spaces:
        greedy, or sampled at ``temperature`` > 0 with vLLM's per-request ``seed`` (each
        request's own random stream); all requests in one engine call."""
        self._check_open()
        from vllm import SamplingParams

        _check_lengths(images, prompts, "prompts")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature > 0 and (seeds is None or len(seeds) != len(prompts)):
            raise ValueError(f"{ROLE}: sampling needs one seed per prompt ({len(prompts)}), got {seeds!r}")
        if not prompts:
            return []
        # Decoded here, not by vLLM: its incremental detokenizer holds back an unfinished
        # UTF-8 byte sequence at the end, where transformers' batch_decode writes U+FFFD.
        if temperature > 0:
            params = [
                SamplingParams(temperature=temperature, seed=int(s) % 2**63, max_tokens=max_new_tokens, detokenize=False)
                for s in seeds
            ]
        else:
            params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, detokenize=False)
        outputs = self._run(self._requests(images, chat_texts(self.chat_text, prompts)), params)
        new_tokens = [list(out.outputs[0].token_ids) for out in outputs]
        return [a.strip() for a in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """Mean log-probability of ``answers[j]``'s tokens given ``images[j]`` and the
        chat-templated ``prompts[j]``, teacher forced: float32 [len(answers)], each <= 0.

        One engine call over all (image, prompt + " " + answer) requests, reading vLLM's prompt
        log-probs at the answer's positions. With prefix caching on, requests may reuse cached
        KV blocks of an earlier request's image and prompt. A cache hit that reaches into the
        answer leaves no log-probs there (vLLM only scores the positions it computes), so those
        few requests are scored again without reading the cache, in a second call.
        """
        self._check_open()
        if not answers:
            _check_lengths(images, prompts, "prompts")
            return np.zeros(0, np.float32)
        prompt_texts, full_texts = scoring_texts(self.chat_text, images, prompts, answers)
        answer_ids = self._answer_ids(prompt_texts, full_texts)
        requests = self._requests(images, full_texts)

        scores = np.zeros(len(answers), np.float32)
        todo = list(range(len(answers)))
        counts = self.last_stats = dict.fromkeys(self.stats, 0) | {"calls": 1, "rows": len(answers)}
        for read_cache in (self.prefix_caching, False):
            params = score_params(read_cache)
            outputs = self._run([requests[j] for j in todo], params)
            missed = []
            for j, out in zip(todo, outputs):
                count_cached(counts, out, len(answer_ids[j]))
                value = mean_answer_logprob(out, answer_ids[j], j)
                if value is None:
                    missed.append(j)
                else:
                    scores[j] = value
            todo = missed
            if not todo:
                self.stats = {k: self.stats[k] + v for k, v in counts.items()}
                return scores
        raise RuntimeError(f"{ROLE}: vLLM returned no prompt log-probs for requests {todo} without its cache")


def score_params(read_cache: bool):
    """One step, prompt log-probs of the prompt's own tokens (0 extra top-k), no text."""
    from vllm import SamplingParams

    # vLLM skips the prefix cache for prompt-logprob requests unless told otherwise: a hit
    # leaves the cached positions unscored, which mean_answer_logprob detects.
    return SamplingParams(
        temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False, skip_reading_prefix_cache=not read_cache
    )


def count_cached(counts: dict, out, answer: int) -> None:
    """Add one output's tokens to ``counts``: the cached ones, and the prefix and answer tokens
    (its last ``answer`` prompt tokens) computed past them."""
    cached, prefix = out.num_cached_tokens or 0, len(out.prompt_token_ids) - answer
    counts["cached_tokens"] += cached
    counts["prefix_tokens"] += max(0, prefix - cached)
    counts["answer_tokens"] += answer - max(0, cached - prefix)


def mean_answer_logprob(out, answer: list[int], j: int) -> float | None:
    """Mean log-prob of the last ``len(answer)`` prompt tokens of one vLLM output, or None
    when a prefix-cache hit covered a position whose log-prob is needed.

    ``prompt_logprobs[i]`` holds ``{token_id: Logprob}`` for prompt token i given tokens
    < i (entry 0 is None); with prompt_logprobs=0 the only entry is the prompt's own token.
    """
    ids = list(out.prompt_token_ids)
    n, total = len(answer), len(ids)
    if ids[total - n :] != answer:
        raise RuntimeError(f"{ROLE}: vLLM tokenised answer {j} as {ids[total - n :]}, transformers as {answer}")
    # Token i's log-prob comes from position i - 1's logits, computed only past the cache hit.
    if (out.num_cached_tokens or 0) > total - n - 1:
        return None
    logprobs = [out.prompt_logprobs[i][ids[i]].logprob for i in range(total - n, total)]
    return float(np.mean(logprobs))


@contextmanager
def process_state_kept(in_process: bool) -> Iterator[None]:
    """Start vLLM in this process (or not) and undo what its CPU worker changes here: the
    torch thread count, ``torch.set_num_threads`` (replaced by a no-op that warns) and the
    global RNGs (seeded with the engine's seed)."""
    key = "VLLM_ENABLE_V1_MULTIPROCESSING"
    before_env = os.environ.get(key)
    os.environ[key] = "1" if not in_process else "0"
    threads, set_threads = torch.get_num_threads(), torch.set_num_threads
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        yield
    finally:
        if before_env is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before_env
        torch.set_num_threads = set_threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
