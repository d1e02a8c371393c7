"""LLaVA-1.5 on its own vLLM server, through the OpenAI-compatible API: the VLM of the two-process
layout (``vllm serve`` on the VLM's GPUs; int-engine with the other roles, ``backend: openai``).

Same contract as the in-process vLLM backend (``vlm_vllm``), request for request: the same chat
text (LLaVA's "llava_v1" conversation by default, ``llava_common``), the same token ids, the same
padded image, the same answer tokens and the same mean of their log-probs.

How a row reaches the server. vLLM's ``/v1/completions`` takes no image, so every row is one
``/v1/chat/completions`` request: a user message with the view (a PNG data URL, padded to a square
with the processor's mean colour as ``llava_image`` pads it) and one text part, the whole LLaVA text
built here with the image token where the image goes. The server must put that text in the prompt
as it is: start it with ``--chat-template`` ``SERVER_CHAT_TEMPLATE`` (each message's content,
verbatim) and ``--chat-template-content-format string`` (vLLM keeps an image placeholder the text
already holds). It then tokenises the text in one piece, BOS added (``add_special_tokens``), while
LLaVA's "llava_v1" ids tokenise the text after the image on its own (``llava_tokens``: a
SentencePiece "▁" before the "\\n"); with a Metaspace pre-tokenizer one space after the image token
gives those ids for the whole text, and ``load`` picks the joiner ("" or " ") that does on this
tokenizer (``image_joiner``). Every answer carries the prompt ids the engine ran
(``return_token_ids``), checked against the ids the in-process backend hands vLLM (the image
token's run collapsed to one): a server with another template, tokenizer or checkpoint is an error
naming the first difference, never a silent shift of the scores.

Scores: ``prompt_logprobs: 0`` (vLLM's extra parameter) and ``max_tokens: 1``. The answer holds,
per prompt position i, the log-prob of prompt token i given the tokens before it (entry 0 null);
the answer's tokens are the last ``len(answer ids)`` prompt tokens (``answer_token_ids``, the
in-process rule) and a score is their mean, as ``vllm_engine.mean_answer_logprob``. vLLM does not read
its prefix cache for a request that asks for prompt log-probs (the chat API cannot ask otherwise),
so every row computes its image and prompt again; the in-process backend reads them from its cache.

Generate: greedy at temperature 0, else sampled with the request's own ``seed``; the new token ids
(``return_token_ids``) are decoded here as the in-process backend decodes them.

Batching: one HTTP request per row, at most ``concurrency`` in flight (``vllm_http``); the server's
scheduler batches what arrives together.

The role's ``path`` is the llava-hf directory (or hub repo id) for its config, tokenizer and
processor files only: the weights are the server's and are not read. ``device`` and ``dtype`` are
the server's too (``vllm serve --dtype``); the role's device still places the ``Miner``.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image

from ..errors import ConfigError, ModelLoadError
from ..models.checks import require_files
from .llava_common import (
    chat_format_of,
    chat_texts,
    check_image,
    check_lengths,
    distinct_rows,
    join_answer,
    scoring_texts,
)
from .llava_image import complete_processor, pad_to_square, processor_fill
from .llava_tokens import ImageSplit, LlavaText, answer_token_ids, token_ids
from .vllm_http import ServerClient, ServerError, api_key, api_root
from .vlm_hf_generate import check_generate_args

if TYPE_CHECKING:
    from transformers import ProcessorMixin

ROLE = "vlm"
FORMAT = "llava-hf LlavaForConditionalGeneration on an OpenAI-compatible vLLM server"
# Read from the role's path: no weights (the server has them).
EXPECTED_FILES = ("config.json", "tokenizer.json|tokenizer.model", "preprocessor_config.json|processor_config.json")
# The server's chat template (vllm serve --chat-template ... --chat-template-content-format string):
# every message's content as it is, so the prompt is the text this backend builds.
SERVER_CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
SERVER_FLAGS = ("--chat-template", SERVER_CHAT_TEMPLATE, "--chat-template-content-format", "string")
# Sampling fields sent with every generate request, so that the server's defaults (from the
# checkpoint's generation_config) cannot change what the in-process backend's SamplingParams mean.
PLAIN_SAMPLING = {
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}
OPTION_TYPES: dict[str, Any] = {
    "base_url": str,
    "model": str | None,
    "api_key_env": str | None,
    "concurrency": int,
    "timeout_s": float,
    "retries": int,
    "chat_format": str | None,
}


class OpenAILlavaVLM(LlavaText):
    """The ``VLM`` protocol on a vLLM server's chat completions API: one HTTP request per row.

    ``calls`` counts the ``generate`` / ``score`` calls that reached the server, ``client.sent``
    the HTTP requests; ``work`` the prompt tokens the server computed (``int_engine.work``)."""

    def __init__(self, client: ServerClient, processor: "ProcessorMixin", model: str, chat_format: str, joiner: str) -> None:
        self.client = client
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.model = model
        self.chat_format = chat_format
        self.joiner = joiner
        self.calls = 0
        self.work = {"prefill_tokens": 0, "prefill_cached_tokens": 0}
        self._fill = processor_fill(processor.image_processor)
        self._closed = False

    @classmethod
    def option_types(cls) -> dict[str, Any]:
        """The options ``load`` takes, name -> type (checked by ``int_engine.models.load``)."""
        return dict(OPTION_TYPES)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", dtype: str = "float32", **options) -> "OpenAILlavaVLM":
        """Connect to the server at ``base_url`` (required; ``http://host:8000`` means its
        ``/v1``) serving ``model`` (default: the one model it serves), read the tokenizer and
        processor from ``path``. Options: ``api_key_env`` (the name of the environment variable
        holding the key, sent as ``Authorization: Bearer``; default none), ``concurrency``
        (requests in flight, default 8), ``timeout_s`` (per request, default 120), ``retries``
        (extra tries after a transport error or a 408/429/5xx, default 2), ``chat_format``
        (as the other LLaVA backends). ``device`` and ``dtype`` are the server's: not used here.
        """
        p = require_files(ROLE, path, EXPECTED_FILES, FORMAT)
        unknown = sorted(set(options) - set(OPTION_TYPES))
        if unknown:
            raise ConfigError(f"{ROLE}: unknown option(s) for {FORMAT}: {', '.join(unknown)}")
        if not options.get("base_url"):
            raise ConfigError(f"{ROLE}: the openai backend needs options.base_url (e.g. http://127.0.0.1:8000/v1)")
        chat_format_of(ROLE, options.get("chat_format"), None)  # a bad name is refused before anything starts
        api_root(options["base_url"])  # so is a URL that is not one
        key = api_key(options.get("api_key_env"))
        try:
            import httpx  # noqa: F401
        except ImportError as err:
            raise ModelLoadError(f"{ROLE}: the openai backend needs httpx (pip install 'int-engine[openai]'): {err}") from None
        from transformers import AutoConfig, AutoProcessor

        try:
            processor = AutoProcessor.from_pretrained(p, local_files_only=True)
            config = AutoConfig.from_pretrained(p, local_files_only=True)
            complete_processor(processor, config)
        except Exception as err:
            raise ModelLoadError(f"{ROLE}: cannot read the tokenizer and processor of {p}: {err}") from err
        given = {k: v for k, v in options.items() if v is not None}  # None: the default
        client = ServerClient(
            options["base_url"],
            key,
            concurrency=int(given.get("concurrency", 8)),
            timeout_s=float(given.get("timeout_s", 120.0)),
            retries=int(given.get("retries", 2)),
        )
        try:
            return cls.open(client, processor, chat_format_of(ROLE, options.get("chat_format"), config), options.get("model"))
        except BaseException:
            client.close()
            raise

    @classmethod
    def open(cls, client: ServerClient, processor, chat_format: str, model: str | None = None) -> "OpenAILlavaVLM":
        """The backend on a connected ``client``: the served model checked (or, when None, the
        server's only one) and the image joiner found for the tokenizer."""
        try:
            served = [m["id"] for m in client.get("/models").get("data", [])]
        except ServerError as err:
            raise ModelLoadError(f"{ROLE}: the VLM server at {client.root} cannot be used: {err}") from None
        if model is None:
            if len(served) != 1:
                raise ConfigError(f"{ROLE}: the server at {client.root} serves {served}: set options.model to one")
            model = served[0]
        elif model not in served:
            raise ConfigError(f"{ROLE}: the server at {client.root} does not serve {model!r}; it serves {served}")
        vlm = cls(client, processor, model, chat_format, "")
        vlm.joiner = image_joiner(vlm.tokenizer, vlm.chat_text, vlm.image_split)
        return vlm

    # ---- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connections (the server keeps running). Idempotent."""
        if not self._closed:
            self._closed = True
            self.client.close()

    def __enter__(self) -> "OpenAILlavaVLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- text --------------------------------------------------------------------------------

    def server_text(self, text: str) -> str:
        """``text`` as sent: the joiner after the image token (``image_joiner``)."""
        token = self.processor.image_token
        return text.replace(token, token + self.joiner, 1) if self.joiner else text

    # ---- requests ----------------------------------------------------------------------------

    def _bodies(self, images: Sequence[np.ndarray], texts: list[str], params: list[dict]) -> list[dict]:
        """One chat request per row: its view as a PNG data URL (each distinct view encoded
        once) and its text; ``params[j]`` the row's sampling fields."""
        firsts, inverse = distinct_rows(images)
        urls = [png_data_url(pad_to_square(check_image(images[j], j), self._fill)) for j in firsts]
        sent = {t: self.server_text(t) for t in dict.fromkeys(texts)}
        return [
            {
                "model": self.model,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": urls[u]}}, {"type": "text", "text": sent[t]}],
                    }
                ],
                "add_special_tokens": True,
                "return_token_ids": True,
                "stream": False,
                **row,
            }
            for t, u, row in zip(texts, inverse, params)
        ]

    def _run(self, images: Sequence[np.ndarray], texts: list[str], params: list[dict]) -> list[dict]:
        """Send one call's rows; every answer's prompt ids checked against ``token_ids``."""
        if self._closed:
            raise RuntimeError(f"{ROLE}: the backend was closed")
        bodies = self._bodies(images, texts, params)
        self.calls += 1
        answers = self.client.post_many("/chat/completions", bodies)
        for j, (answer, want) in enumerate(zip(answers, self.token_ids(texts))):
            check_prompt_ids(answer, want, self.image_id, j)
            usage = answer.get("usage") or {}
            cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
            self.work["prefill_tokens"] += int(usage.get("prompt_tokens") or 0) - cached
            self.work["prefill_cached_tokens"] += cached
        return answers

    @property
    def image_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.processor.image_token)

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
        greedy, or sampled at ``temperature`` > 0 with the request's own ``seed``."""
        check_generate_args(images, prompts, max_new_tokens, temperature, seeds)
        if not prompts:
            return []
        params = []
        for j in range(len(prompts)):
            row = {"max_tokens": int(max_new_tokens), "temperature": float(temperature), **PLAIN_SAMPLING}
            if temperature > 0:
                row["seed"] = int(seeds[j]) % 2**63
            params.append(row)
        answers = self._run(images, chat_texts(self.chat_text, prompts), params)
        new_tokens = [answer["choices"][0]["token_ids"] for answer in answers]
        return [a.strip() for a in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """Mean log-probability of ``answers[j]``'s tokens given ``images[j]`` and the
        chat-templated ``prompts[j]``, teacher forced: float32 [len(answers)], each <= 0; one
        request per row asking for the prompt's log-probs."""
        if not answers:
            check_lengths(images, prompts, "prompts")
            return np.zeros(0, np.float32)
        prompt_texts, full_texts = scoring_texts(self.chat_text, images, prompts, answers)
        answer_ids = answer_token_ids(self.tokenizer, prompt_texts, full_texts, self.image_split)
        params = [{"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}] * len(full_texts)
        replies = self._run(images, full_texts, params)
        return np.array([mean_answer_logprob(r, a, j) for j, (r, a) in enumerate(zip(replies, answer_ids))], np.float32)


# ---- helpers ------------------------------------------------------------------------------------


def png_data_url(image: np.ndarray) -> str:
    """uint8 [H, W, 3] as a lossless ``data:image/png;base64,...`` URL."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_joiner(tokenizer, chat_text, split: ImageSplit) -> str:
    """What to put after the image token so that the server's one-piece tokenisation of a row's
    text gives LLaVA's split ids (``llava_tokens.image_split_ids``): "" when no split is asked
    for or the tokenizer already agrees, " " for a Metaspace tokenizer (the "▁" a piece gets when
    tokenised alone); ModelLoadError when neither does."""
    if split is None:
        return ""
    text = join_answer(chat_text("Name it."), "a green frog")
    want = token_ids(tokenizer, [text], split)[0]
    for joiner in ("", " "):
        if tokenizer(text.replace(split[0], split[0] + joiner, 1))["input_ids"] == want:
            return joiner
    raise ModelLoadError(
        f"{ROLE}: this tokenizer gives LLaVA's ids for a whole text neither as it is nor with a space after "
        f"{split[0]!r}, so a server that tokenises the text cannot run them; use chat_format 'checkpoint'"
    )


def collapse_runs(ids: Sequence[int], token: int) -> list[int]:
    """``ids`` with every run of ``token`` cut to one (the server expands each image token)."""
    out: list[int] = []
    for t in ids:
        if not (t == token and out and out[-1] == token):
            out.append(t)
    return out


def check_prompt_ids(answer: dict, want: list[int], image_id: int, j: int) -> None:
    """Raise when the prompt the server ran is not ``want`` (image tokens collapsed)."""
    ids = answer.get("prompt_token_ids")
    if ids is None:
        raise RuntimeError(f"{ROLE}: the server returned no prompt_token_ids (return_token_ids needs vLLM >= 0.10.2)")
    got = collapse_runs(ids, image_id)
    if got == want:
        return
    at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    raise RuntimeError(
        f"{ROLE}: request {j}: the server ran other prompt ids than LLaVA's ({len(got)} tokens, not {len(want)}; first "
        f"difference at {at}: {got[at : at + 4]} for {want[at : at + 4]}); start vllm serve on the same checkpoint with "
        f'--chat-template "{SERVER_CHAT_TEMPLATE}" --chat-template-content-format string'
    )


def mean_answer_logprob(answer: dict, answer_ids: list[int], j: int) -> float:
    """Mean log-prob of the last ``len(answer_ids)`` prompt tokens of one server answer.

    ``prompt_logprobs[i]`` maps token id (a string in JSON) -> ``{"logprob", "rank", ...}`` for
    prompt token i given the tokens before it; with ``prompt_logprobs: 0`` it holds that token."""
    ids, logprobs = answer["prompt_token_ids"], answer.get("prompt_logprobs")
    start = len(ids) - len(answer_ids)
    if ids[start:] != answer_ids:
        raise RuntimeError(f"{ROLE}: the server tokenised answer {j} as {ids[start:]}, transformers as {answer_ids}")
    values = []
    for i in range(start, len(ids)):
        entry = (logprobs[i] if logprobs and i < len(logprobs) else None) or {}
        got = entry.get(str(ids[i]))
        if got is None:
            raise RuntimeError(f"{ROLE}: the server returned no prompt log-prob for answer {j}'s token at position {i}")
        values.append(got["logprob"])
    return float(np.mean(values))
