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
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, ModelLoadError
from ..models.checks import require_files
from .hf_sampling import SeededSampling
from .llava_common import (
    _check_image,
    _check_lengths,
    chat_format_of,
    chat_texts,
    distinct_rows,
    join_answer,
    llava_chat_text,
    refuse_float32_overflow,
    scoring_texts,
)
from .llava_image import complete_processor, pad_to_square, processor_fill
from .llava_tokens import ExpandedIds, ImageSplit, answer_token_ids, token_ids

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
# generating): the module docstring's arithmetic for LLaVA-1.5-13B on an 80 GB GPU.
DEFAULT_MAX_BATCH_TOKENS = 16384
# Words of the LM head's weight cast to float32 at a time for the answer positions' logits.
HEAD_BLOCK = 8192


class HFLlavaVLM:
    """The ``VLM`` protocol on a transformers Llava model; greedy generation and
    teacher-forced scoring, in passes of at most ``max_batch_tokens`` padded tokens and
    ``max_batch_size`` rows (see ``token_passes`` and the module docstring's arithmetic)."""

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
        return {"max_batch_size": int | None, "max_batch_tokens": int | None, "shared_prefix": bool, "chat_format": str | None}

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
        # Imported here so that merely importing the backends does not pay transformers' import.
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        if shared_prefix:  # the cache internals llava_prefix builds on, checked before loading (hf_cache_shim)
            from .hf_cache_shim import check_cache_api
            from .private_api import PrivateAPIError

            try:
                check_cache_api()
            except PrivateAPIError as err:
                raise ModelLoadError(f"{ROLE}: cannot load {FORMAT} from {p} with shared_prefix: {err}") from None
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
        return cls(
            model,
            processor,
            torch.device(device),
            _optional_int(max_batch_size),
            _optional_int(max_batch_tokens),
            bool(shared_prefix),
            chat_format_of(ROLE, chat_format, model.config),
        )

    # ---- text ------------------------------------------------------------------------------

    def chat_text(self, prompt: str) -> str:
        """The full model input for one user prompt about one image, up to "ASSISTANT:"."""
        return llava_chat_text(self.processor, prompt, self.chat_format)

    def score_text(self, prompt: str, answer: str) -> str:
        """The model input of one scoring row: ``chat_text``, one space and the stripped answer."""
        return join_answer(self.chat_text(prompt), answer)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """The ids the model gets for ``texts``, each "<image>" one image token (expanded later):
        split at the image token as LLaVA's ``tokenizer_image_token`` in "llava_v1" (``llava_tokens``)."""
        return token_ids(self.tokenizer, texts, self.image_split)

    def _answer_lengths(self, prompt_texts: list[str], full_texts: list[str]) -> list[int]:
        """How many tokens of each full text belong to its answer.

        The answer is tokenised inside the full text, so it gets the leading-space pieces
        ("▁frog") the model would generate after "ASSISTANT:", not those of a lone "frog".
        The prompt's tokens are the shared prefix of the two tokenisations; images are left
        out because the image tokens sit before the answer and do not change its tokens.
        """
        return [len(ids) for ids in answer_token_ids(self.tokenizer, prompt_texts, full_texts, self.image_split)]

    def _inputs(self, images: Sequence[np.ndarray], texts: list[str], padding_side: str) -> dict:
        """What ``processor(images=..., text=...)`` gives for the rows, with each distinct image
        (by identity) resized and normalised once: scoring sends every view once per candidate
        and generation once per prompt, and the image processor was half of a scoring call.

        ``input_ids`` / ``attention_mask`` are [rows, S] and ``pixel_values`` only the distinct
        images' [U, 3, h, w] (in ``distinct_rows`` order), on the device in the model's dtype:
        a row's pixels would be 3 x 336 x 336 x 2 B = 677 KB per row copied for nothing."""
        firsts, inverse = distinct_rows(images)
        # Padded to a square as LLaVA-1.5 was trained, not centre-cropped (llava_image.py).
        fill = processor_fill(self.processor.image_processor)
        squares = [pad_to_square(_check_image(images[j], j), fill) for j in firsts]
        if hasattr(self.processor, "replace_image_token") and hasattr(self.processor, "image_processor"):
            # arrays, not PIL images: the same pixel values without a round trip through PIL
            # (a quarter of the image processor's time on 72 views)
            pixels = self.processor.image_processor(squares, return_tensors="pt", input_data_format="channels_last")[
                "pixel_values"
            ]
            # LLaVA-1.5 resizes every image to one size: one "<image>" expansion serves all rows.
            expanded = self.processor.replace_image_token({"pixel_values": pixels}, image_idx=0)
            if self._expanded is None:
                self._expanded = ExpandedIds(
                    self.tokenizer, self.processor.image_token, self.model.config.image_token_id, self.image_split is not None
                )
            batch = self._expanded(texts, expanded, padding_side)
            batch["pixel_values"] = pixels
        else:  # another processor: its own call on every row
            batch = self.processor(
                images=[Image.fromarray(squares[u]) for u in inverse],
                text=texts,
                padding=True,
                padding_side=padding_side,
                return_tensors="pt",
            )
            batch["pixel_values"] = batch["pixel_values"][firsts]
        pixels = batch.pop("pixel_values")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        batch["pixel_values"] = pixels.to(self.device, self.dtype)
        return batch

    def _image_token_count(self) -> int:
        """How many tokens one "<image>" becomes (576 for LLaVA-1.5 at 336 px / 14 px patches),
        read once off the processor on a small probe: LLaVA-1.5 resizes every image to one size."""
        if self._image_tokens is None:
            probe = np.zeros((16, 16, 3), np.uint8)  # 1 x 1 would make the channel axis ambiguous
            ids = self._inputs([probe], [self.chat_text("")], padding_side="left")["input_ids"]
            self._image_tokens = int((ids == self.model.config.image_token_id).sum())
        return self._image_tokens

    def _row_lengths(self, texts: list[str]) -> list[int]:
        """Each row's token count with its "<image>" expanded: what a pass of these rows pads
        to, known before any image of the call is processed."""
        if not texts:
            return []
        image_id = self.model.config.image_token_id
        extra = self._image_token_count() - 1
        return [len(ids) + extra * ids.count(image_id) for ids in self.token_ids(texts)]

    def _passes(self, lengths: list[int], extra: int = 0) -> list[slice]:
        """The rows' passes under this backend's bounds (``token_passes``)."""
        return token_passes(lengths, extra, self.max_batch_tokens, self.max_batch_size)

    # ---- the protocol ----------------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self,
        images: Sequence[np.ndarray],
        prompts: Sequence[str],
        max_new_tokens: int,
        temperature: float = 0.0,
        seeds: Sequence[int] | None = None,
    ) -> list[str]:
        """One answer per (image, prompt) pair, stripped of special tokens and surrounding
        spaces: greedy, or sampled at ``temperature`` > 0 with each row's own generator seeded
        by ``seeds[j]`` (``hf_sampling``). Left padding, so every row's answer starts at the end."""
        _check_lengths(images, prompts, "prompts")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature > 0 and (seeds is None or len(seeds) != len(prompts)):
            raise ValueError(f"{ROLE}: sampling needs one seed per prompt ({len(prompts)}), got {seeds!r}")
        texts = chat_texts(self.chat_text, prompts)
        lengths = self._row_lengths(texts)
        self.work["prefill_tokens"] += sum(lengths)
        answers: list[str] = []
        # Each row grows by up to max_new_tokens, all of which the KV cache holds: the budget
        # counts them, so a pass's cache is at most max_batch_tokens tokens.
        for rows in self._passes(lengths, extra=max_new_tokens):
            sampling = SeededSampling(temperature, seeds[rows]) if temperature > 0 else None
            answers += self._generate_rows(images[rows], texts[rows], max_new_tokens, sampling)
        return answers

    def _generate_rows(
        self, images: Sequence[np.ndarray], texts: list[str], max_new_tokens: int, sampling: SeededSampling | None = None
    ) -> list[str]:
        """One pass of generation (greedy, or ``sampling``'s per-row draws); each distinct image
        encoded once (``mm_encoder_outputs`` instead of every row's pixels)."""
        from transformers import LogitsProcessorList
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        batch = self._inputs(images, texts, padding_side="left")
        features = self._vision_features(batch.pop("pixel_values"))  # [U, N, H]
        _, inverse = distinct_rows(images)
        encoded = BaseModelOutputWithPooling(pooler_output=[features[u] for u in inverse])  # views, no copies
        out = self.model.generate(
            **batch,
            mm_encoder_outputs={"image": encoded},
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.tokenizer.pad_token_id,
            logits_processor=LogitsProcessorList([sampling] if sampling is not None else []),
        )
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        return [a.strip() for a in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    @torch.inference_mode()
    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """Mean log-probability of ``answers[j]``'s tokens given ``images[j]`` and the
        chat-templated ``prompts[j]``, teacher forced: float32 [len(answers)], each <= 0.

        An answer is stripped and joined to "ASSISTANT:" by one space, as the model writes it
        (``score_text``); its own tokens are scored, not an end of turn after them. Rows are left padded with position ids counted from each row's first real
        token, so a row's score does not depend on the other rows in its batch. With
        ``shared_prefix``, the rows of one (image, prompt) run their prefix once and their
        answers on its KV cache (``llava_prefix``): the same scores, to float rounding.
        """
        if not answers:
            _check_lengths(images, prompts, "prompts")
            return np.zeros(0, np.float32)
        prompt_texts, full_texts = scoring_texts(self.chat_text, images, prompts, answers)
        lengths = self._answer_lengths(prompt_texts, full_texts)

        scores = np.zeros(len(answers), np.float32)
        counts = {"calls": 1, "rows": len(answers), "prefix_tokens": 0, "answer_tokens": 0}
        if self.shared_prefix:
            from .llava_prefix import score_shared

            counts["prefix_tokens"], counts["answer_tokens"] = score_shared(self, images, full_texts, lengths, scores)
        else:
            row_lengths = self._row_lengths(full_texts)
            for rows in self._passes(row_lengths):
                scores[rows] = self._score_rows(images[rows], full_texts[rows], lengths[rows])
            counts["prefix_tokens"], counts["answer_tokens"] = sum(row_lengths) - sum(lengths), sum(lengths)
        self.last_stats = counts
        self.stats = {k: self.stats[k] + v for k, v in counts.items()}
        self.work["prefill_tokens"] += counts["prefix_tokens"] + counts["answer_tokens"]
        return scores

    def _vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected features [U, N, H_text] of U distinct images [U, 3, h, w] (N = 576 for
        LLaVA-1.5), each image encoded once: scoring sends a view with every candidate.

        The CLIP tower runs only up to the layer(s) the config's ``vision_feature_layer``
        selects (-2 for LLaVA-1.5: 23 of CLIP-L's 24 layers) and keeps no other layer's hidden
        states; transformers' ``get_image_features`` asks for all of them (25 x 577 x 1024 x
        2 B = 29.5 MB per image in float16) and keeps them while it selects one. Any other
        tower goes through ``get_image_features``.
        """
        llava, cfg = self.model.model, self.model.config
        tower = llava.vision_tower
        if not _is_clip_tower(tower):
            encoded = llava.get_image_features(
                pixel_values=pixel_values,
                vision_feature_layer=cfg.vision_feature_layer,
                vision_feature_select_strategy=cfg.vision_feature_select_strategy,
                return_dict=True,
            )
            return torch.stack(list(encoded.pooler_output))
        wanted = hidden_state_indices(cfg.vision_feature_layer, len(tower.encoder.layers))
        hidden = tower.pre_layrnorm(tower.embeddings(pixel_values))  # hidden state 0: [U, 577, 1024]
        kept = {0: hidden} if 0 in wanted else {}
        for i, layer in enumerate(tower.encoder.layers[: max(wanted)], start=1):
            hidden = layer(hidden, None)
            if i in wanted:
                kept[i] = hidden
        selected = [kept[i] for i in wanted]
        if cfg.vision_feature_select_strategy == "default":  # drop CLS
            selected = [h[:, 1:] for h in selected]
        return llava.multi_modal_projector(torch.cat(selected, dim=-1))

    def _embed(self, input_ids: torch.Tensor, features: torch.Tensor, inverse: list[int]) -> torch.Tensor:
        """Token embeddings [R, S, H] with row r's image tokens replaced by ``features[inverse[r]]``
        ([U, N, H]): LlavaModel's merge, without its concatenated copy of every row's features."""
        embeds = self.model.get_input_embeddings()(input_ids)
        is_image = input_ids == self.model.config.image_token_id
        for r, u in enumerate(inverse):
            embeds[r, is_image[r]] = features[u].to(embeds.dtype)
        return embeds

    # ---- what shared-prefix scoring reads (llava_prefix.PrefixModel) ---------------------------

    def image_token_count(self) -> int:
        """How many tokens one "<image>" expands to (``_image_token_count``)."""
        return self._image_token_count()

    def model_inputs(self, images: Sequence[np.ndarray], texts: list[str], padding_side: str) -> dict:
        """The rows' input_ids / attention_mask [R, S] and their distinct images' pixel_values (``_inputs``)."""
        return self._inputs(images, texts, padding_side)

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected features [U, N, H] of U distinct images (``_vision_features``)."""
        return self._vision_features(pixel_values)

    def embed_tokens(self, input_ids: torch.Tensor, features: torch.Tensor, inverse: list[int]) -> torch.Tensor:
        """Token embeddings [R, S, H], row r's image tokens replaced by ``features[inverse[r]]`` (``_embed``)."""
        return self._embed(input_ids, features, inverse)

    def head_logits(self, states: torch.Tensor) -> torch.Tensor:
        """The LM head's float32 logits [A, V] of hidden states [A, H] (``head_logits_float32``)."""
        return head_logits_float32(self.model.lm_head, states)

    def answer_logprobs(self, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log p(targets[a] | states[a]), float32 [A], through the float32 head (``answer_logprobs``)."""
        return answer_logprobs(self.model.lm_head, states, targets)

    def _score_rows(self, images: Sequence[np.ndarray], texts: list[str], lengths: list[int]) -> np.ndarray:
        """Mean answer log-prob of one pass's rows, float32 [R] (``lengths``: answer tokens per row).

        What the pass holds: the language model's activations of one layer at a time for R x S
        tokens (no KV cache: ``use_cache=False``; no per-layer hidden states), its last hidden
        state [R, S, H], and float32 logits only at the A answer positions, [A, V].
        """
        batch = self._inputs(images, texts, padding_side="left")
        features = self._vision_features(batch.pop("pixel_values"))
        ids, mask = batch["input_ids"], batch["attention_mask"]
        embeds = self._embed(ids, features, distinct_rows(images)[1])
        del features
        # Left padded: position ids count from each row's first real token.
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.model.model.language_model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=False,
            output_hidden_states=False,
        )
        del embeds
        means = answer_logprob_means(self.model.lm_head, out.last_hidden_state, ids, lengths)
        return means.cpu().numpy().astype(np.float32)


def token_passes(
    lengths: Sequence[int], extra: int = 0, max_tokens: int | None = None, max_rows: int | None = None
) -> list[slice]:
    """Consecutive rows cut greedily into passes in which rows x (longest row + ``extra``)
    <= ``max_tokens`` and rows <= ``max_rows`` (None: no bound). ``extra`` is what every row
    grows by within its pass (``max_new_tokens`` when generating). Rows stay in order, so a
    view's rows (adjacent in a scoring call) share a pass and its image is encoded once. A row
    alone over ``max_tokens`` gets a pass of its own: one row is the least a pass can hold."""
    passes: list[slice] = []
    start, longest = 0, 0
    for j, n in enumerate(lengths):
        grown, rows = max(longest, n + extra), j - start + 1
        over_rows = max_rows is not None and rows > max_rows
        over_tokens = max_tokens is not None and rows * grown > max_tokens
        if rows > 1 and (over_rows or over_tokens):
            passes.append(slice(start, j))
            start, grown = j, n + extra
        longest = grown
    if lengths:
        passes.append(slice(start, len(lengths)))
    return passes


def answer_logprob_means(lm_head, hidden: torch.Tensor, input_ids: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """Each row's mean log-prob of its answer, float32 [R]: the last ``lengths[r]`` tokens of the
    left-padded ``input_ids`` [R, S], from the final hidden states ``hidden`` [R, S, H].

    Position t predicts token t + 1, so row r's answer ``ids[r, S-n:]`` comes from
    ``hidden[r, S-n-1 : S-1]``. Only those A = sum(lengths) positions go through the LM head
    (``answer_logprobs``, in float32): [A, V] float32 logits, V x 4 B each (128 KB per token for
    LLaVA's 32000 words), where all positions' logits would be [R, S, V] (a 16384-token pass:
    2.1 GB, and as much again for log_softmax).
    """
    rows, seq = input_ids.shape
    longest = max(lengths)
    n = torch.tensor(list(lengths), device=input_ids.device)
    is_answer = torch.arange(longest, device=input_ids.device)[None, :] >= (longest - n)[:, None]  # [R, longest]
    states = hidden[:, seq - longest - 1 : seq - 1][is_answer]  # [A, H]
    targets = input_ids[:, seq - longest :][is_answer]  # [A]
    token_lp = answer_logprobs(lm_head, states, targets)  # [A]
    row = torch.arange(rows, device=input_ids.device)[:, None].expand(rows, longest)[is_answer]  # [A]
    sums = torch.zeros(rows, dtype=torch.float32, device=input_ids.device).index_add_(0, row, token_lp)
    return sums / n


def head_logits_float32(lm_head, states: torch.Tensor) -> torch.Tensor:
    """The LM head's logits [A, V] of hidden states [A, H], computed in float32 whatever the model's
    dtype: the states and the head's weight cast to float32 for these rows only, the weight a block
    of ``HEAD_BLOCK`` words at a time (not a float32 copy of the whole head; not of the model).

    In float16 / bfloat16 a logit keeps 11 / 8 significant bits: on logits of ~10, bfloat16 rounds
    each by up to 0.03, and a score averages a few such log-probs."""
    x = states.float()
    weight, bias = lm_head.weight, getattr(lm_head, "bias", None)
    blocks = []
    for start in range(0, weight.shape[0], HEAD_BLOCK):
        words = slice(start, start + HEAD_BLOCK)
        blocks.append(torch.nn.functional.linear(x, weight[words].float(), None if bias is None else bias[words].float()))
    return torch.cat(blocks, dim=-1)


def answer_logprobs(lm_head, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets[a] | states[a]), float32 [A], from hidden states [A, H] (``head_logits_float32``):
    log p = logit - logsumexp(logits), with no [A, V] log_softmax copy."""
    logits = head_logits_float32(lm_head, states)  # [A, V]
    return logits.gather(-1, targets[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)


def hidden_state_indices(feature_layer: int | Sequence[int], n_layers: int) -> list[int]:
    """The indices into a tower's hidden states (0 = embeddings, i = after layer i) that
    ``vision_feature_layer`` names, negative ones counted from the end: -2 of 24 layers is 23."""
    layers = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
    return [layer % (n_layers + 1) for layer in layers]


def _is_clip_tower(tower) -> bool:
    """Whether ``tower`` is transformers' CLIPVisionModel layout, which ``_vision_features``
    runs layer by layer."""
    encoder = getattr(tower, "encoder", None)
    return hasattr(tower, "embeddings") and hasattr(tower, "pre_layrnorm") and hasattr(encoder, "layers")


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)
