"""What ``vlm_hf.HFLlavaVLM`` feeds its model: the chat texts, their token ids, the rows' lengths
with "<image>" expanded, the passes those lengths are cut into (``token_passes``), and the
processor's tensors with each distinct image processed once (``_inputs``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from .llava_common import check_image, distinct_rows, join_answer, llava_chat_text
from .llava_image import pad_to_square, processor_fill
from .llava_tokens import ExpandedIds, answer_token_ids, token_ids


class LlavaInputs:
    """Mixin of ``HFLlavaVLM``: reads ``self.processor``, ``self.tokenizer``, ``self.model.config``,
    ``self.device``, ``self.dtype``, ``self.chat_format``, ``self.image_split``, the pass bounds
    ``self.max_batch_tokens`` / ``self.max_batch_size``, and caches ``self._image_tokens`` and
    ``self._expanded``."""

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
        squares = [pad_to_square(check_image(images[j], j), fill) for j in firsts]
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
