"""An offline vLLM ``LLM`` engine under a VLM backend: what ``vlm_vllm.VLLMLlavaVLM`` (LLaVA-1.5)
and ``vlm_qwen_vllm.VLLMQwenVLM`` (Qwen2.5-VL / Qwen3-VL) share.

Starting it: ``engine_settings`` (the role's options over ``vllm_options.engine_kwargs``' defaults,
float32 refused before vLLM starts when the weights alone exceed the GPU's share) and
``start_engine`` (vLLM has no device argument: each build runs on one kind of device, so another
is refused; one in-process engine per process, ``vllm_slot``; what vLLM's CPU worker changes in
this process put back, ``process_state_kept``).

Its lifetime and its one step (``VLLMEngine``): ``close`` (or a context manager), ``_run`` (one
``LLM.generate`` call, counting the prompt tokens vLLM computed and those its prefix cache served),
the protocol's ``generate`` on the backend's requests (``_requests``: one per row, its prompt as
token ids, ``engine_requests``), and the scoring loop (``_score_requests``): one call asking for
prompt log-probs (``score_params``), the mean log-prob of each row's answer tokens read off them
(``mean_answer_logprob``), and the rows whose prefix-cache hit reached into the answer (no
log-probs there) scored again without reading the cache, in a second call.
"""

from __future__ import annotations

import os
import random
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Self, Sequence, TypeVar

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, ModelLoadError
from . import vllm_slot
from .llava_common import chat_texts, check_image, distinct_rows, refuse_float32_overflow
from .llava_image import pad_to_square
from .vllm_options import engine_kwargs, engine_option_types
from .vlm_hf_generate import check_generate_args

if TYPE_CHECKING:
    from vllm import LLM

ROLE = "vlm"
SHUTDOWN_TIMEOUT_S = 30
# Scoring work per call, the shape of the transformers backends' ``stats``, plus the prompt tokens
# vLLM's prefix cache served instead of computing them (each output's ``num_cached_tokens``).
STAT_KEYS = ("calls", "rows", "prefix_tokens", "answer_tokens", "cached_tokens")
Read = TypeVar("Read")


class VLLMEngine:
    """Mixin of the vLLM VLM backends: the engine's lifetime, its one call, ``generate`` and the
    scoring loop. The backend supplies ``tokenizer``, ``chat_text`` and ``_requests`` (one engine
    request per row of chat texts), and may override ``engine_frame``.

    ``calls`` counts the engine calls made, so a caller can check the batching; ``stats`` sums the
    scoring work over calls (``last_stats``: the latest call's): prefix (image + prompt) and answer
    tokens vLLM computed, and the prompt tokens its prefix cache served instead; ``work``
    (``int_engine.work``) the prompt tokens computed and those a prefix-cache hit spared.
    """

    tokenizer: Any
    chat_text: Callable[[str], str]
    _requests: Callable[[Sequence[np.ndarray], list[str]], list[dict]]

    def __init__(self, llm: "LLM", prefix_caching: bool, in_process: bool) -> None:
        self.llm = llm
        self.prefix_caching = prefix_caching
        self.in_process = in_process
        self.calls = 0
        self.stats = dict.fromkeys(STAT_KEYS, 0)
        self.last_stats = dict(self.stats)
        self.work = {"prefill_tokens": 0, "prefill_cached_tokens": 0}
        self._closed = False

    # ---- lifetime ----------------------------------------------------------------------------

    def claim_slot(self) -> None:
        """Take the process's one in-process engine slot (``vllm_slot``) when this one runs here."""
        if self.in_process:
            vllm_slot.claim(ROLE, self)

    def close(self) -> None:
        """Stop the engine (waits up to ``SHUTDOWN_TIMEOUT_S`` for it to finish cleanly). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.llm.llm_engine.engine_core.shutdown(timeout=SHUTDOWN_TIMEOUT_S)
        finally:
            vllm_slot.release(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{ROLE}: the vLLM engine was closed")

    # ---- one engine call ---------------------------------------------------------------------

    def _run(self, requests: list[dict], params: Any) -> list:
        """One ``LLM.generate`` call over ``requests`` (``params``: one ``SamplingParams`` or one
        per request), its prompt tokens counted in ``work``."""
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
        """One answer per (image [H, W, 3] uint8, prompt), special tokens dropped and stripped,
        its box in the engine's frame (``engine_frame``): greedy, or sampled at ``temperature``
        > 0 with vLLM's per-request ``seed`` (each request's own random stream); all rows in one
        engine call."""
        self._check_open()
        check_generate_args(images, prompts, max_new_tokens, temperature, seeds)
        if not prompts:
            return []
        params = generate_params(max_new_tokens, temperature, seeds)
        outputs = self._run(self._requests(images, chat_texts(self.chat_text, prompts)), params)
        # Decoded here, not by vLLM: its incremental detokenizer holds back an unfinished
        # UTF-8 byte sequence at the end, where transformers' batch_decode writes U+FFFD.
        new_tokens = [list(out.outputs[0].token_ids) for out in outputs]
        answers = [a.strip() for a in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        return self.engine_frame(images, answers)

    def engine_frame(self, images: Sequence[np.ndarray], answers: list[str]) -> list[str]:
        """``answers`` with their boxes in the engine's frame: as they are (LLaVA-1.5 writes boxes
        in that frame); a backend whose model writes another frame overrides this."""
        return answers

    def _score_requests(self, requests: list[dict], answer_ids: list[list[int]]) -> np.ndarray:
        """Mean log-prob of row j's answer tokens (``answer_ids[j]``, the last tokens of
        ``requests[j]``'s prompt), float32 [len(requests)]; ``stats`` / ``last_stats`` counted.

        One engine call reading vLLM's prompt log-probs, the prefix cache read when
        ``prefix_caching``. A cache hit that reaches into the answer leaves no log-probs there
        (vLLM only scores the positions it computes), so those few rows are scored again without
        reading the cache, in a second call."""
        scores = np.zeros(len(answer_ids), np.float32)
        todo = list(range(len(answer_ids)))
        counts = self.last_stats = dict.fromkeys(self.stats, 0) | {"calls": 1, "rows": len(answer_ids)}
        for read_cache in (self.prefix_caching, False):
            outputs = self._run([requests[j] for j in todo], score_params(read_cache))
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


# ---- starting an engine --------------------------------------------------------------------------


def check_engine_options(form: str, options: dict[str, Any]) -> None:
    """ConfigError naming the options that are no ``vllm.EngineArgs`` field this backend forwards."""
    unknown = sorted(set(options) - set(engine_option_types()))
    if unknown:
        raise ConfigError(f"{ROLE}: unknown option(s) for {form}: {', '.join(unknown)}")


def engine_settings(path: Path, device: str, dtype: str, options: dict[str, Any]) -> dict[str, Any]:
    """The ``vllm.LLM`` keyword arguments: ``options`` over ``engine_kwargs``' defaults. float32 on
    CUDA is refused when the weights alone exceed the engine's share of the GPU
    (``gpu_memory_utilization``, per tensor/pipeline-parallel GPU), unless ``quantization`` or
    ``cpu_offload_gb`` changes what the GPU holds."""
    engine = engine_kwargs(device, options)
    if not engine.get("quantization") and not engine.get("cpu_offload_gb"):
        # with kv_cache_memory_bytes alone vLLM sizes no share: the weights must fit the GPU
        gpus = int(engine.get("tensor_parallel_size", 1)) * int(engine.get("pipeline_parallel_size", 1))
        refuse_float32_overflow(path, device, dtype, float(engine.get("gpu_memory_utilization", 1.0)), gpus)
    return engine


def start_engine(
    path: Path, device: str, dtype: str, engine: dict[str, Any], in_process: bool, form: str, read: Callable[[Path], Read]
) -> tuple["LLM", Read]:
    """A started ``vllm.LLM`` on ``path`` and what ``read(path)`` reads there first (the processor,
    ...); refused before anything starts when vLLM is missing, runs on another kind of device than
    ``device``, or another in-process engine is open. ModelLoadError naming ``form`` when reading
    or starting fails."""
    # Imported here: vllm is an optional extra, and importing it takes seconds.
    try:
        from vllm import LLM
    except ImportError as err:
        raise ModelLoadError(f"{ROLE}: the vllm backend needs vLLM (pip install 'int-engine[vllm]'): {err}") from None
    from vllm.platforms import current_platform

    # vLLM has no device argument: each build runs on one kind of device.
    if torch.device(device).type != current_platform.device_type:
        raise ConfigError(f"{ROLE}: device {device!r} asked for, but the installed vLLM runs on {current_platform.device_type!r}")
    if in_process:
        vllm_slot.require_free(ROLE)
    try:
        files = read(path)
        with process_state_kept(in_process=in_process):
            llm = LLM(str(path), tokenizer=str(path), dtype=dtype, **engine)
    except Exception as err:
        raise ModelLoadError(f"{ROLE}: cannot load {form} from {path}: {err}") from err
    return llm, files


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


# ---- requests and outputs ------------------------------------------------------------------------


def engine_requests(images: Sequence[np.ndarray], ids: list[list[int]], fill: tuple[int, int, int] | None = None) -> list[dict]:
    """One request per row: its prompt ids (``prompt_token_ids``) and its view (checked, padded to
    a square of ``fill`` when given); a view repeated over rows is converted (and checked) once."""
    firsts, inverse = distinct_rows(images)
    views = [check_image(images[j], j) for j in firsts]
    pil = [Image.fromarray(view if fill is None else pad_to_square(view, fill)) for view in views]
    return [{"prompt_token_ids": row, "multi_modal_data": {"image": pil[u]}} for row, u in zip(ids, inverse)]


def generate_params(max_new_tokens: int, temperature: float, seeds: Sequence[int] | None) -> Any:
    """Greedy ``SamplingParams``, or one per request sampled at ``temperature`` with its own
    ``seed``; no text (the backend decodes the token ids)."""
    from vllm import SamplingParams

    if temperature > 0:
        return [
            SamplingParams(temperature=temperature, seed=int(s) % 2**63, max_tokens=max_new_tokens, detokenize=False)
            for s in seeds or ()
        ]
    return SamplingParams(temperature=0.0, max_tokens=max_new_tokens, detokenize=False)


def score_params(read_cache: bool) -> Any:
    """One step, prompt log-probs of the prompt's own tokens (0 extra top-k), no text."""
    from vllm import SamplingParams

    # vLLM skips the prefix cache for prompt-logprob requests unless told otherwise: a hit
    # leaves the cached positions unscored, which mean_answer_logprob detects.
    return SamplingParams(
        temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False, skip_reading_prefix_cache=not read_cache
    )


def count_cached(counts: dict, out: Any, answer: int) -> None:
    """Add one output's tokens to ``counts``: the cached ones, and the prefix and answer tokens
    (its last ``answer`` prompt tokens) computed past them."""
    cached, prefix = out.num_cached_tokens or 0, len(out.prompt_token_ids) - answer
    counts["cached_tokens"] += cached
    counts["prefix_tokens"] += max(0, prefix - cached)
    counts["answer_tokens"] += answer - max(0, cached - prefix)


def mean_answer_logprob(out: Any, answer: list[int], j: int) -> float | None:
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
