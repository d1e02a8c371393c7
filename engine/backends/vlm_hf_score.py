"""Teacher-forced scoring for ``vlm_hf.HFLlavaVLM``: each answer's mean log-probability, on a
shared (image, prompt) prefix (``llava_prefix``, through the public members below) or as full
sequences without a KV cache (``_score_rows``); the LM head in float32 (``vlm_hf_head``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .llava_common import check_lengths, distinct_rows, scoring_texts
from .vlm_hf_head import answer_logprob_means, answer_logprobs, head_logits_float32


class LlavaScore:
    """Mixin of ``HFLlavaVLM``: the protocol's ``score``, its work counters (``self.stats``,
    ``self.last_stats``, ``self.work``), and what shared-prefix scoring reads
    (``llava_prefix.PrefixModel``) over ``LlavaInputs`` and ``LlavaVision``."""

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
            check_lengths(images, prompts, "prompts")
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
