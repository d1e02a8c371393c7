"""Inputs of ``vlm_qwen.HFQwenVLM``: chat texts, token ids with each image's placeholder expanded,
the model's tensors for a pass (each distinct image processed and encoded once) and Qwen's
multimodal rotary position ids; and the checks of a scoring request both Qwen backends make
(``check_score_args``) and the checkpoint's family (``read_family``).

Token ids. A row is the chat-templated prompt (one ``<|image_pad|>``, expanded here to the image's
N = (h_in / patch) x (w_in / patch) / merge^2 tokens, as the processor expands it) tokenised,
then, when scoring, the stripped answer tokenised on its own and appended: the answer's own
tokens, right after the template's ``<|im_start|>assistant\\n`` (ChatML puts no space there).
N is known before any pixel is processed: the processor's resize (``qwen_boxes.resized_input_size``)
of the view's size, so passes are planned from token counts alone.

Positions. Qwen-VL's rotary embedding is multimodal (M-RoPE): an image token's position is
(t, row, column) of its merged patch, text tokens (p, p, p), and the text after an image
continues from the image's largest position + 1, so a row's positions are not 0..S-1. They come
from the model's public ``get_rope_index`` (input ids, ``mm_token_type_ids``, ``image_grid_thw``
per placeholder, the attention mask for padding): [3, R, S], and per row ``delta`` = next
position - tokens, the offset a continuation's positions carry (``next_positions``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import ModelLoadError
from .llava_common import check_image, check_lengths, distinct_rows
from .qwen_boxes import FAMILIES, resized_input_size


class QwenInputs:
    """Mixin of ``HFQwenVLM``: texts, ids, image grids and a pass's tensors."""

    model: Any
    processor: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype

    def chat_text(self, prompt: str) -> str:
        """One user turn of an image then ``prompt``, up to the generation prompt
        ``<|im_start|>assistant\\n``, through the checkpoint's chat template."""
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    def input_size(self, image: np.ndarray) -> tuple[int, int]:
        """(h_in, w_in): the size the processor resizes ``image`` [H, W, 3] to (multiples of
        patch x merge): Qwen2.5-VL's box frame, and the image's token grid x patch."""
        ip = self.processor.image_processor
        size = ip.size
        return resized_input_size(
            int(image.shape[0]), int(image.shape[1]), ip.patch_size, ip.merge_size, size["shortest_edge"], size["longest_edge"]
        )

    def image_token_count(self, image: np.ndarray) -> int:
        """Tokens ``image``'s placeholder expands to: its merged patches."""
        ip = self.processor.image_processor
        h, w = self.input_size(image)
        return (h // ip.patch_size) * (w // ip.patch_size) // ip.merge_size**2

    def prompt_ids(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> list[list[int]]:
        """Each row's chat text tokenised with its image's placeholder expanded (``image_token_count``),
        each distinct (text, image size) tokenised once."""
        pad = self.processor.image_token
        done: dict[tuple, list[int]] = {}
        out = []
        for image, text in zip(images, texts):
            n = self.image_token_count(check_image(image, len(out)))
            key = (text, n)
            if key not in done:
                done[key] = self.tokenizer(text.replace(pad, pad * n, 1), add_special_tokens=False)["input_ids"]
            out.append(done[key])
        return out

    def answer_ids(self, answers: Sequence[str]) -> list[list[int]]:
        """Each stripped answer's own tokens (tokenised alone, no special tokens)."""
        return [self.tokenizer(a.strip(), add_special_tokens=False)["input_ids"] for a in answers]

    def batch(self, images: Sequence[np.ndarray], ids: Sequence[Sequence[int]], padding_side: str) -> dict:
        """One pass's tensors, on the device: ``input_ids`` / ``attention_mask`` /
        ``mm_token_type_ids`` [R, S] padded on ``padding_side``, ``image_grid_thw`` [R, 3] (one
        per row's placeholder), ``position_ids`` [3, R, S] and ``rope_deltas`` [R, 1]
        (``get_rope_index``), and ``image`` (the rows' encoder outputs, for ``mm_encoder_outputs``):
        the distinct images (by identity) processed and encoded once, each row a view of its image's."""
        firsts, inverse = distinct_rows(images)
        pixels = self.processor.image_processor(images=[Image.fromarray(images[f]) for f in firsts], return_tensors="pt")
        grid = pixels["image_grid_thw"].to(self.device)
        longest = max(len(r) for r in ids)
        input_ids = torch.full((len(ids), longest), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), longest), dtype=torch.long)
        for r, row in enumerate(ids):
            cols = slice(longest - len(row), longest) if padding_side == "left" else slice(0, len(row))
            input_ids[r, cols], mask[r, cols] = torch.tensor(row, dtype=torch.long), 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        types = (input_ids == self.model.config.image_token_id).int()
        rows_grid = grid[torch.tensor(inverse, device=self.device)]
        position_ids, deltas = self.model.model.get_rope_index(input_ids, types, image_grid_thw=rows_grid, attention_mask=mask)
        encoded = self.model.model.get_image_features(pixels["pixel_values"].to(self.device, self.dtype), grid)
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "mm_token_type_ids": types,
            "image_grid_thw": rows_grid,
            "position_ids": position_ids,
            "rope_deltas": deltas,
            "image": rows_encoded(encoded, inverse),
        }


def read_family(path: Path, form: str) -> str:
    """The checkpoint's family, config.json ``model_type`` ("qwen2_5_vl" / "qwen3_vl");
    ModelLoadError naming ``form`` for any other model."""
    family = json.loads((path / "config.json").read_text()).get("model_type")
    if family not in FAMILIES:
        raise ModelLoadError(
            f"vlm: {path} is not a {form} directory: config.json model_type {family!r}, expected one of {', '.join(FAMILIES)}"
        )
    return family


def check_score_args(images: Sequence[np.ndarray], prompts: Sequence[str], answers: Sequence[str]) -> None:
    """ValueError unless there is one prompt and one answer per image and no answer is empty once
    stripped (a score needs at least one answer token): the checks of both Qwen backends' ``score``."""
    check_lengths(images, prompts, "prompts")
    check_lengths(images, answers, "answers")
    for j, a in enumerate(answers):
        if not a.strip():
            raise ValueError(f"answer {j} is empty: a score needs at least one answer token")


def rows_encoded(encoded, inverse: Sequence[int]):
    """The vision tower's output for the distinct images (``get_image_features``: ``pooler_output``
    a tuple of [N_u, H] per image; Qwen3-VL's ``deepstack_features`` a list per layer of such
    tuples) re-indexed per row: row r gets image ``inverse[r]``'s tensors (views, not copies)."""
    fields = {"pooler_output": [encoded.pooler_output[u] for u in inverse]}
    deepstack = getattr(encoded, "deepstack_features", None)
    if deepstack is not None:
        fields["deepstack_features"] = [[layer[u] for u in inverse] for layer in deepstack]
    return type(encoded)(**fields)


def next_positions(position_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[R]: the position a continuation of each row starts at, its largest position + 1 over its
    real tokens (``position_ids`` [3, R, S], ``mask`` [R, S]); the text after the prefix runs on
    from there, the same on all three axes."""
    real = position_ids.masked_fill(mask[None] == 0, -1)
    return real.amax(dim=(0, 2)) + 1


def token_rows(ids: Sequence[Sequence[int]], extra: int, max_tokens: int | None, max_rows: int | None) -> list[slice]:
    """Consecutive rows cut into passes of rows x (longest + ``extra``) <= ``max_tokens`` and
    rows <= ``max_rows`` (``vlm_hf_inputs.token_passes``)."""
    from .vlm_hf_inputs import token_passes

    return token_passes([len(r) for r in ids], extra, max_tokens, max_rows)
