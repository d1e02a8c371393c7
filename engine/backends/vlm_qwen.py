"""Qwen2.5-VL and Qwen3-VL through transformers: the ``VLM`` protocol on
``Qwen2_5_VLForConditionalGeneration`` / ``Qwen3VLForConditionalGeneration``, one class for both,
the family read from the checkpoint's config.json ``model_type`` ("qwen2_5_vl" / "qwen3_vl").

Prompts go through the checkpoint's own chat template (ChatML: an image then the prompt in a user
turn, the answer after ``<|im_start|>assistant\\n``); images are shown as they are, resized by the
processor to multiples of patch x merge within its pixel bounds (no padding to a square).
``qwen_inputs`` builds the tensors and Qwen's multimodal rotary positions, ``qwen_prefix`` scores
rows that share an (image, prompt) on one run of that prefix, ``qwen_boxes`` converts boxes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError, ModelLoadError
from ..models.checks import require_files
from .hf_sampling import SeededSampling
from .llava_common import chat_texts, refuse_float32_overflow
from .qwen_boxes import engine_box_text
from .qwen_inputs import QwenInputs, check_score_args, read_family, token_rows
from .vlm_hf_generate import check_generate_args
from .vlm_hf_head import answer_logprob_means, answer_logprobs, head_logits_float32

ROLE = "vlm"
FORMAT = "Qwen2.5-VL / Qwen3-VL (transformers)"
EXPECTED = (
    "config.json",
    "model.safetensors|model.safetensors.index.json",
    "tokenizer.json",
    "preprocessor_config.json|processor_config.json",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MODEL_CLASSES = {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration", "qwen3_vl": "Qwen3VLForConditionalGeneration"}
BOX_FRAMES = ("engine", "native")
# Padded tokens per forward pass (rows x longest row, + max_new_tokens per row when generating).
DEFAULT_MAX_BATCH_TOKENS = 16384


class HFQwenVLM(QwenInputs):
    """The ``VLM`` protocol on a transformers Qwen2.5-VL or Qwen3-VL.

    Boxes cross the protocol boundary in the ENGINE's frame, as images cross it as uint8 RGB: the
    engine reads a P_B answer's first four numbers as fractions of the view padded to a centred
    square (``prompts.parse_box``, LLaVA-1.5's frame). Qwen2.5-VL writes absolute pixels of its
    resized input, Qwen3-VL 0-1000 of the image, so ``generate`` rewrites every answer's box
    (``qwen_boxes.engine_box_text``: the box's four numbers into the engine's frame, the
    ``"bbox_2d"`` key written ``"bbox"``, the rest of the text kept), knowing each view's size and
    its resized input's. ``box_frame: native`` returns the model's text untouched.

    ``score``: the mean log-probability of the answer's own tokens after the chat prompt, teacher
    forced, float32 [n], the LM head in float32 at the answer positions (``vlm_hf_head``)."""

    def __init__(self, model, processor, family: str, device: torch.device, settings: dict[str, Any]) -> None:
        self.model, self.processor, self.family, self.device = model, processor, family, device
        self.tokenizer = processor.tokenizer
        self.dtype = next(model.parameters()).dtype
        self.max_batch_size: int | None = settings["max_batch_size"]
        self.max_batch_tokens: int | None = settings["max_batch_tokens"]
        self.shared_prefix: bool = settings["shared_prefix"]
        self.box_frame: str = settings["box_frame"]
        self.stats = dict.fromkeys(("calls", "rows", "prefix_tokens", "answer_tokens"), 0)
        self.last_stats = dict(self.stats)
        self.work = {"prefill_tokens": 0}

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "cpu",
        dtype: str = "float32",
        max_batch_size: int | None = 256,
        max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS,
        shared_prefix: bool = True,
        box_frame: str = "engine",
    ) -> "HFQwenVLM":
        """Load a Qwen2.5-VL / Qwen3-VL directory, offline. ``max_batch_tokens`` / ``max_batch_size``:
        padded tokens / rows per forward pass (None: unbounded); ``shared_prefix``: score rows of one
        (image, prompt) on one run of its prefix (``qwen_prefix``); ``box_frame``: "engine" (boxes
        rewritten into the engine's frame) or "native" (the model's text as written)."""
        p = require_files(ROLE, path, EXPECTED, FORMAT)
        if dtype not in DTYPES:
            raise ConfigError(f"{ROLE}: unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
        if box_frame not in BOX_FRAMES:
            raise ConfigError(f"{ROLE}: unknown box_frame {box_frame!r}; expected one of {', '.join(BOX_FRAMES)}")
        for name, bound in (("max_batch_size", max_batch_size), ("max_batch_tokens", max_batch_tokens)):
            if bound is not None and int(bound) < 1:
                raise ConfigError(f"{ROLE}: {name} must be >= 1, got {bound}")
        family = read_family(p, FORMAT)
        refuse_float32_overflow(p, device, dtype)
        import transformers

        try:
            processor = transformers.AutoProcessor.from_pretrained(p, local_files_only=True)
            model, info = getattr(transformers, MODEL_CLASSES[family]).from_pretrained(
                p, local_files_only=True, dtype=DTYPES[dtype], output_loading_info=True
            )
            if info["missing_keys"]:
                raise ValueError(f"weights missing from the checkpoint: {sorted(info['missing_keys'])[:5]}")
            model = model.to(torch.device(device)).eval()
        except Exception as err:
            raise ModelLoadError(f"{ROLE}: cannot load {FORMAT} from {p}: {err}") from err
        settings = {
            "max_batch_size": None if max_batch_size is None else int(max_batch_size),
            "max_batch_tokens": None if max_batch_tokens is None else int(max_batch_tokens),
            "shared_prefix": bool(shared_prefix),
            "box_frame": box_frame,
        }
        return cls(model, processor, family, torch.device(device), settings)

    @torch.inference_mode()
    def generate(
        self,
        images: Sequence[np.ndarray],
        prompts: Sequence[str],
        max_new_tokens: int,
        temperature: float = 0.0,
        seeds: Sequence[int] | None = None,
    ) -> list[str]:
        """One answer per (image [H, W, 3] uint8, prompt), special tokens dropped and stripped, its
        box in the engine's frame (class docstring): greedy, or sampled at ``temperature`` > 0 with
        row j's own generator seeded by ``seeds[j]`` (``hf_sampling``), so an answer does not
        depend on its batch. Left padded, in passes within ``max_batch_tokens``."""
        check_generate_args(images, prompts, max_new_tokens, temperature, seeds)
        images = list(images)
        ids = self.prompt_ids(images, chat_texts(self.chat_text, prompts))
        self.work["prefill_tokens"] += sum(len(r) for r in ids)
        answers: list[str] = []
        for rows in token_rows(ids, max_new_tokens, self.max_batch_tokens, self.max_batch_size):
            sampling = SeededSampling(temperature, list(seeds)[rows]) if temperature > 0 else None
            answers += self._generate_rows(images[rows], ids[rows], max_new_tokens, sampling)
        if self.box_frame == "native":
            return answers
        return [engine_box_text(a, self.family, im.shape[1], im.shape[0], self.input_size(im)) for a, im in zip(answers, images)]

    def _generate_rows(self, images: list[np.ndarray], ids: list[list[int]], max_new_tokens: int, sampling) -> list[str]:
        """One pass of ``model.generate`` on pre-encoded images (``mm_encoder_outputs``)."""
        from transformers import LogitsProcessorList

        batch = self.batch(images, ids, padding_side="left")
        out = self.model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=batch["image_grid_thw"],
            mm_encoder_outputs={"image": batch["image"]},
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
        """Mean log-probability of ``answers[j]``'s own tokens (stripped, tokenised alone) after
        ``images[j]`` and the chat-templated ``prompts[j]``, teacher forced: float32 [n], each <= 0.
        With ``shared_prefix`` the rows of one (image, prompt) run their prefix once
        (``qwen_prefix``); the same scores to float rounding."""
        check_score_args(images, prompts, answers)
        if not answers:
            return np.zeros(0, np.float32)
        images = list(images)
        prefixes = self.prompt_ids(images, chat_texts(self.chat_text, prompts))
        answer_ids = self.answer_ids(answers)
        scores = np.zeros(len(answers), np.float32)
        counts = {"calls": 1, "rows": len(answers)}
        if self.shared_prefix:
            from .qwen_prefix import score_shared

            counts["prefix_tokens"], counts["answer_tokens"] = score_shared(self, images, prefixes, answer_ids, scores)
        else:
            ids = [p + a for p, a in zip(prefixes, answer_ids)]
            for rows in token_rows(ids, 0, self.max_batch_tokens, self.max_batch_size):
                scores[rows] = self._score_rows(images[rows], ids[rows], [len(a) for a in answer_ids[rows]])
            counts["answer_tokens"] = sum(len(a) for a in answer_ids)
            counts["prefix_tokens"] = sum(len(p) for p in prefixes)
        self.last_stats = counts
        self.stats = {k: self.stats[k] + v for k, v in counts.items()}
        self.work["prefill_tokens"] += counts["prefix_tokens"] + counts["answer_tokens"]
        return scores

    def _score_rows(self, images: list[np.ndarray], ids: list[list[int]], lengths: list[int]) -> np.ndarray:
        """Mean answer log-prob of one pass's full rows (left padded, no KV cache), float32 [R]."""
        batch = self.batch(images, ids, padding_side="left")
        hidden = self.model.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            mm_encoder_outputs={"image": batch["image"]},
            use_cache=False,
        ).last_hidden_state
        return answer_logprob_means(self.model.lm_head, hidden, batch["input_ids"], lengths).cpu().numpy().astype(np.float32)

    def head_logits(self, states: torch.Tensor) -> torch.Tensor:
        """Float32 logits [A, V] of hidden states [A, H] (``head_logits_float32``)."""
        return head_logits_float32(self.model.lm_head, states)

    def answer_logprobs(self, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log p(targets[a] | states[a]), float32 [A] (``vlm_hf_head.answer_logprobs``)."""
        return answer_logprobs(self.model.lm_head, states, targets)
