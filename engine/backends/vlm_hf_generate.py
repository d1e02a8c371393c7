"""Generation for ``vlm_hf.HFLlavaVLM``: greedy or seeded sampling, in passes whose padded
tokens, each row grown by ``max_new_tokens``, stay within ``max_batch_tokens`` (the KV cache
bound in ``vlm_hf``'s module docstring); each distinct image encoded once. And the checks of a
``generate`` request every VLM backend makes (``check_generate_args``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .hf_sampling import SeededSampling
from .llava_common import chat_texts, check_lengths, distinct_rows
from .vlm_hf_load import ROLE


def check_generate_args(
    images: Sequence[np.ndarray], prompts: Sequence[str], max_new_tokens: int, temperature: float, seeds: Sequence[int] | None
) -> None:
    """ValueError unless there is one prompt per image, ``max_new_tokens`` >= 1 and, when sampling
    (``temperature`` > 0), one seed per prompt."""
    check_lengths(images, prompts, "prompts")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature > 0 and (seeds is None or len(seeds) != len(prompts)):
        raise ValueError(f"{ROLE}: sampling needs one seed per prompt ({len(prompts)}), got {seeds!r}")


class LlavaGenerate:
    """Mixin of ``HFLlavaVLM``: the protocol's ``generate``, on ``LlavaInputs``' texts, lengths,
    passes and inputs and ``LlavaVision``'s features."""

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
        check_generate_args(images, prompts, max_new_tokens, temperature, seeds)
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
