"""LLaVA-1.5 as its authors ran it, written out from LLaVA's definitions (not imported), for the
VLM backends' tests: the conversation text of conv_mode "llava_v1" (their ProMaC code's), the ids
of LLaVA's ``tokenizer_image_token``; and a head's mean log-probs in float32 and in its own dtype.
"""

from __future__ import annotations

import numpy as np
import torch

# Written out, not imported: the text of LLaVA's conv_llava_v1 (system prompt, roles USER and
# ASSISTANT, separators " " and "</s>").
SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
PROMPTS = ["Output the name of the camouflaged animal and its environment in one word.", "Name it."]


def authors_text(prompt: str, answer: str | None = None) -> str:
    """The conversation's prompt up to "ASSISTANT:", or with the answer after one space."""
    text = f"{SYSTEM} USER: <image>\n{prompt} ASSISTANT:"
    return text if answer is None else f"{text} {answer}"


def tokenizer_image_token(tokenizer, text: str, image_id: int) -> list[int]:
    """LLaVA's ``tokenizer_image_token`` from its definition: the text split at "<image>", each chunk
    tokenised by the tokenizer on its own, the first chunk's BOS kept and every chunk's leading BOS
    dropped after it (the offset the first chunk's BOS sets), the image token id between chunks."""
    chunks = [tokenizer(chunk).input_ids for chunk in text.split("<image>")]
    offset = 1 if chunks[0] and chunks[0][0] == tokenizer.bos_token_id else 0
    ids = chunks[0][:offset]
    for i, chunk in enumerate(chunks):
        if i > 0:
            ids.append(image_id)
        ids.extend(chunk[offset:])
    return ids


def authors_ids(tokenizer, text: str, image_id: int, count: int) -> list[int]:
    """``tokenizer_image_token``'s ids with each image token expanded to ``count`` image tokens (the
    image's features, as LLaVA's model splices them in)."""
    out: list[int] = []
    for token in tokenizer_image_token(tokenizer, text, image_id):
        out += [token] * count if token == image_id else [token]
    return out


def processor_image_tokens(processor) -> int:
    """How many image tokens the checkpoint's processor expands one "<image>" to."""
    ids = processor(images=np.zeros((56, 56, 3), np.uint8), text=processor.image_token, return_tensors="pt")["input_ids"]
    return int((ids == processor.tokenizer.convert_tokens_to_ids(processor.image_token)).sum())


def head_means(states: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """Mean log-prob of ``targets`` [n] from hidden states [n, H] through a head ``weight`` [V, H]:
    in float32 (states and weight cast), and all in the weight's dtype (logits rounded to it)."""
    with torch.inference_mode():
        f32 = torch.log_softmax(states.float() @ weight.float().T, -1)
        low = torch.log_softmax((states @ weight.T).float(), -1)
        pick = targets[:, None]
        return f32.gather(-1, pick).mean().item(), low.gather(-1, pick).mean().item()
