"""What both LLaVA backends share: the chat text of a prompt, the answer's own tokens, the rows of a
call that hold the same image, and the checks of a request."""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Checkpoints without a chat template get the LLaVA-1.5 conversation format.
LLAVA15_FORMAT = "USER: <image>\n{prompt} ASSISTANT:"


def llava_chat_text(processor, prompt: str) -> str:
    """One user prompt about one image in the checkpoint's chat template, up to "ASSISTANT:"
    (LLaVA-1.5's conversation format when the checkpoint has no template)."""
    if getattr(processor, "chat_template", None):
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    return LLAVA15_FORMAT.format(prompt=prompt)


def chat_texts(chat_text, prompts: Sequence[str]) -> list[str]:
    """``chat_text`` of every prompt, each distinct prompt templated once: a call repeats a few
    prompts over hundreds of rows, and the Jinja template costs more than the tokenizer."""
    templated = {p: chat_text(p) for p in dict.fromkeys(prompts)}
    return [templated[p] for p in prompts]


def distinct_rows(images: Sequence[np.ndarray]) -> tuple[list[int], list[int]]:
    """The rows holding each distinct image (by identity, first occurrences in order) and, per
    row, the index of its image among them: a view sent with many candidates is one image."""
    index: dict[int, int] = {}
    firsts: list[int] = []
    inverse = []
    for j, image in enumerate(images):
        if id(image) not in index:
            index[id(image)] = len(firsts)
            firsts.append(j)
        inverse.append(index[id(image)])
    return firsts, inverse


def scoring_texts(
    chat_text, images: Sequence[np.ndarray], prompts: Sequence[str], answers: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Check a scoring request and build, per row, the chat text up to "ASSISTANT:" and the same
    text with the stripped answer joined by one space (as the model would write it)."""
    _check_lengths(images, prompts, "prompts")
    _check_lengths(images, answers, "answers")
    answers = [a.strip() for a in answers]
    for j, a in enumerate(answers):
        if not a:
            raise ValueError(f"answer {j} is empty: a score needs at least one answer token")
    prompt_texts = chat_texts(chat_text, prompts)
    return prompt_texts, [f"{p} {a}" for p, a in zip(prompt_texts, answers)]


def _check_image(image: np.ndarray, j: int) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image {j} must be uint8 [H, W, 3] RGB, got {got}")
    return np.ascontiguousarray(image)


def _check_lengths(images: Sequence, other: Sequence, name: str) -> None:
    if len(images) != len(other):
        raise ValueError(f"got {len(images)} images but {len(other)} {name}")
