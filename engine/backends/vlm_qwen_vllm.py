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
``vlm_vllm``). Process handling, lifetime and options are ``vlm_vllm``'s: the engine runs in this
process by default, ``load`` restores what vLLM's CPU worker changes, one in-process engine (of
either vLLM backend) at a time; use it as a context manager or call ``close()``.

Options: every ``vllm.EngineArgs`` field (``vllm_options``) but ``model``, ``tokenizer`` and
``dtype``; ``limit_mm_per_prompt`` defaults to one image and no video (the engine sends one image
per request; vLLM would otherwise reserve room for video). Plus ``multiprocessing`` and
``box_frame``. On CPU the KV cache is 1 GiB by default (``vllm_options.CPU_KV_CACHE_BYTES``):
vLLM refuses to start when one request of ``max_model_len`` (the checkpoint's, 128k for the
real models) does not fit it, so real checkpoints need ``max_model_len`` (e.g. 8192) or more
``kv_cache_memory_bytes``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, ModelLoadError
from ..models.checks import require_files
from . import vllm_slot, vlm_vllm
from .llava_common import _check_image, _check_lengths, chat_texts, distinct_rows, refuse_float32_overflow
from .qwen_boxes import FAMILIES, engine_box_text
from .qwen_inputs import QwenInputs
from .vllm_options import engine_kwargs, engine_option_types
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


class VLLMQwenVLM(QwenInputs):
    """The ``VLM`` protocol on a vLLM ``LLM`` serving a Qwen2.5-VL or Qwen3-VL checkpoint.

    ``calls`` counts the engine calls; ``stats`` / ``last_stats`` and ``work`` count tokens as
    ``vlm_vllm.VLLMLlavaVLM`` does (prefix, answer and prefix-cache-served tokens).
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
        self.llm, self.processor, self.family = llm, processor, family
        self.tokenizer = processor.tokenizer
        self.prefix_caching, self.in_process, self.box_frame = prefix_caching, in_process, box_frame
        self.calls = 0
        self.stats = dict.fromkeys(("calls", "rows", "prefix_tokens", "answer_tokens", "cached_tokens"), 0)
        self.last_stats = dict(self.stats)
        self.work = {"prefill_tokens": 0, "prefill_cached_tokens": 0}
        self._closed = False

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
        if box_frame not in BOX_FRAMES:
            raise ConfigError(f"{ROLE}: unknown box_frame {box_frame!r}; expected one of {', '.join(BOX_FRAMES)}")
        unknown = sorted(set(engine_options) - set(engine_option_types()))
        if unknown:
            raise ConfigError(f"{ROLE}: unknown option(s) for {FORMAT}: {', '.join(unknown)}")
        family = json.loads((p / "config.json").read_text()).get("model_type")
        if family not in FAMILIES:
            raise ModelLoadError(
                f"{ROLE}: {p} is not a {FORMAT} directory: config.json model_type {family!r}, "
                f"expected one of {', '.join(FAMILIES)}"
            )
        engine = engine_kwargs(device, QWEN_ENGINE_DEFAULTS | engine_options)
        if not engine.get("quantization") and not engine.get("cpu_offload_gb"):
            gpus = int(engine.get("tensor_parallel_size", 1)) * int(engine.get("pipeline_parallel_size", 1))
            refuse_float32_overflow(p, device, dtype, float(engine.get("gpu_memory_utilization", 1.0)), gpus)
        llm, processor = _start(p, device, dtype, engine, in_process=not multiprocessing)
        vlm = cls(llm, processor, family, bool(engine.get("enable_prefix_caching")), not multiprocessing, box_frame)
        if vlm.in_process:
            vllm_slot.claim(ROLE, vlm)
        return vlm

    # ---- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the engine (waits up to ``vlm_vllm.SHUTDOWN_TIMEOUT_S``). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.llm.llm_engine.engine_core.shutdown(timeout=vlm_vllm.SHUTDOWN_TIMEOUT_S)
        finally:
            vllm_slot.release(self)

    def __enter__(self) -> "VLLMQwenVLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{ROLE}: the vLLM engine was closed")

    # ---- requests ----------------------------------------------------------------------------

    def text_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each chat text's ids, its one ``<|image_pad|>`` unexpanded (vLLM expands it), each
        distinct text tokenised once, no special tokens added (the template writes them)."""
        distinct = list(dict.fromkeys(texts))
        ids = dict(zip(distinct, self.tokenizer(distinct, add_special_tokens=False)["input_ids"]))
        return [list(ids[t]) for t in texts]

    def _requests(self, images: Sequence[np.ndarray], ids: list[list[int]]) -> list[dict]:
        """One request per row; a view repeated over rows is converted (and checked) once."""
        firsts, inverse = distinct_rows(images)
        pil = [Image.fromarray(_check_image(images[j], j)) for j in firsts]
        return [{"prompt_token_ids": row, "multi_modal_data": {"image": pil[u]}} for row, u in zip(ids, inverse)]

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
        """One answer per (image [H, W, 3] uint8, prompt), special tokens dropped and stripped,
        its box in the engine's frame (``box_frame`` "engine", as ``HFQwenVLM.generate``):
        greedy, or sampled at ``temperature`` > 0 with vLLM's per-request ``seed``; all rows in
        one engine call."""
        self._check_open()
        from vllm import SamplingParams

        _check_lengths(images, prompts, "prompts")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature > 0 and (seeds is None or len(seeds) != len(prompts)):
            raise ValueError(f"{ROLE}: sampling needs one seed per prompt ({len(prompts)}), got {seeds!r}")
        if not prompts:
            return []
        if temperature > 0:
            params = [
                SamplingParams(temperature=temperature, seed=int(s) % 2**63, max_tokens=max_new_tokens, detokenize=False)
                for s in seeds
            ]
        else:
            params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, detokenize=False)
        outputs = self._run(self._requests(images, self.text_ids(chat_texts(self.chat_text, prompts))), params)
        # decoded here, as transformers' batch_decode does (vLLM's detokenizer holds back bytes)
        new_tokens = [list(out.outputs[0].token_ids) for out in outputs]
        answers = [a.strip() for a in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        return self.engine_frame(images, answers)

    def engine_frame(self, images: Sequence[np.ndarray], answers: list[str]) -> list[str]:
        """``answers`` with their boxes in the engine's frame (``box_frame`` "engine"), each
        knowing its view's size and its resized input's (``QwenInputs.input_size``)."""
        if self.box_frame == "native":
            return answers
        return [engine_box_text(a, self.family, im.shape[1], im.shape[0], self.input_size(im)) for a, im in zip(answers, images)]

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """Mean log-probability of ``answers[j]``'s own tokens (stripped, tokenised alone) after
        ``images[j]`` and the chat-templated ``prompts[j]``, teacher forced: float32
        [len(answers)], each <= 0. One engine call over all rows reading vLLM's prompt log-probs
        at the answer positions; rows whose prefix-cache hit reached into the answer (no
        log-probs there) are scored again without reading the cache, in a second call."""
        self._check_open()
        _check_lengths(images, prompts, "prompts")
        _check_lengths(images, answers, "answers")
        if not answers:
            return np.zeros(0, np.float32)
        for j, a in enumerate(answers):
            if not a.strip():
                raise ValueError(f"answer {j} is empty: a score needs at least one answer token")
        answer_ids = self.answer_ids(answers)
        prefixes = self.text_ids(chat_texts(self.chat_text, prompts))
        requests = self._requests(images, [p + a for p, a in zip(prefixes, answer_ids)])

        scores = np.zeros(len(answers), np.float32)
        todo = list(range(len(answers)))
        counts = self.last_stats = dict.fromkeys(self.stats, 0) | {"calls": 1, "rows": len(answers)}
        for read_cache in (self.prefix_caching, False):
            outputs = self._run([requests[j] for j in todo], vlm_vllm.score_params(read_cache))
            missed = []
            for j, out in zip(todo, outputs):
                vlm_vllm.count_cached(counts, out, len(answer_ids[j]))
                value = vlm_vllm.mean_answer_logprob(out, answer_ids[j], j)
                if value is None:
                    missed.append(j)
                else:
                    scores[j] = value
            todo = missed
            if not todo:
                self.stats = {k: self.stats[k] + v for k, v in counts.items()}
                return scores
        raise RuntimeError(f"{ROLE}: vLLM returned no prompt log-probs for requests {todo} without its cache")


def _start(path: Path, device: str, dtype: str, engine: dict[str, Any], in_process: bool) -> tuple["LLM", Any]:
    """The processor and a started ``vllm.LLM`` on ``path``, refused before anything starts when
    the installed vLLM runs on another kind of device or another in-process engine is open."""
    try:
        from vllm import LLM
    except ImportError as err:
        raise ModelLoadError(f"{ROLE}: the vllm backend needs vLLM (pip install 'int-engine[vllm]'): {err}") from None
    from transformers import AutoProcessor
    from vllm.platforms import current_platform

    if torch.device(device).type != current_platform.device_type:
        raise ConfigError(f"{ROLE}: device {device!r} asked for, but the installed vLLM runs on {current_platform.device_type!r}")
    if in_process:
        vllm_slot.require_free(ROLE)
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        with vlm_vllm.process_state_kept(in_process=in_process):
            llm = LLM(str(path), tokenizer=str(path), dtype=dtype, **engine)
    except Exception as err:
        raise ModelLoadError(f"{ROLE}: cannot load {FORMAT} from {path}: {err}") from err
    return llm, processor
