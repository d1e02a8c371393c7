"""Token ids of a LLaVA call's rows, computed once per distinct text.

A call repeats a few texts over hundreds of rows (every view of every image with the same
prompt, every candidate of a name with the same answer), and LLaVA-1.5's "<image>" expands to
576 image tokens that the tokenizer would otherwise split out of every row's text again: here
each distinct text is tokenised once with its single "<image>", and the expansion is spliced
into the ids (``expand_image_tokens``), which gives the ids of the expanded text whenever the
expansion is image tokens only (checked once, on the first row, ``ExpandedIds``).

Two tokenisations of a text with "<image>": the tokenizer's on the whole text (llava-hf's
processor), or, for the "llava_v1" chat format, LLaVA's own ``tokenizer_image_token``: the text
split at "<image>", each piece tokenised alone, BOS kept on the first piece only and the image
token between pieces (``image_split_ids``). They differ: a piece tokenised alone starts a word, so a
SentencePiece tokenizer puts "▁" before the "\n" that follows the image.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .llava_common import join_answer, llava_chat_text

# An image token to split texts at: (its text, its id), or None to tokenise whole texts.
ImageSplit = tuple[str, int] | None


def token_ids(tokenizer, texts: Sequence[str], image: ImageSplit = None) -> list[list[int]]:
    """``tokenizer(texts)["input_ids"]``, each distinct text tokenised once; with ``image``, each
    text's ``image_split_ids`` instead."""
    distinct = list(dict.fromkeys(texts))
    ids = dict(zip(distinct, image_split_ids(tokenizer, distinct, *image) if image else tokenizer(distinct)["input_ids"]))
    return [list(ids[t]) for t in texts]


def image_split_ids(tokenizer, texts: Sequence[str], image_token: str, image_id: int) -> list[list[int]]:
    """Each text's ids as LLaVA's ``tokenizer_image_token`` makes them: the text split at
    ``image_token``, every piece tokenised on its own (the distinct pieces in one tokenizer call: a
    call's texts share the system prompt), the first piece's ids, then for each later piece
    ``image_id`` and the piece's ids without their BOS (BOS only at the start)."""
    pieces = [t.split(image_token) for t in texts]
    distinct = list(dict.fromkeys(piece for split in pieces for piece in split))
    ids = dict(zip(distinct, tokenizer(distinct)["input_ids"]))
    bos = tokenizer.bos_token_id
    out = []
    for split in pieces:
        row = list(ids[split[0]])
        for piece in split[1:]:
            piece_ids = ids[piece]
            row += [image_id] + list(piece_ids[1:] if piece_ids[:1] == [bos] and bos is not None else piece_ids)
        out.append(row)
    return out


def answer_token_ids(tokenizer, prompt_texts: list[str], full_texts: list[str], image: ImageSplit = None) -> list[list[int]]:
    """Each answer's token ids: the full text's tokens after the prefix it shares with the
    prompt's tokenisation (so " frog" after "ASSISTANT:" is "▁frog", as generated); ``image`` as
    ``token_ids``."""
    answers = []
    pairs = zip(token_ids(tokenizer, prompt_texts, image), token_ids(tokenizer, full_texts, image))
    for j, (pre, full) in enumerate(pairs):
        shared = 0
        while shared < min(len(pre), len(full)) and pre[shared] == full[shared]:
            shared += 1
        if shared == len(full):
            raise ValueError(f"answer {j} has no tokens of its own after the prompt: {full_texts[j]!r}")
        answers.append(list(full[shared:]))
    return answers


def expand_image_tokens(ids: list[int], image_id: int, expansion: list[int]) -> list[int]:
    """``ids`` with every ``image_id`` replaced by ``expansion``."""
    out: list[int] = []
    for token in ids:
        if token == image_id:
            out += expansion
        else:
            out.append(token)
    return out


def pad_rows(rows: list[list[int]], pad_id: int, side: str) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask``, int64 [len(rows), longest], padded on ``side``
    ("left" or "right") with ``pad_id``: what the tokenizer's ``padding=True`` returns."""
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(longest - len(r), longest) if side == "left" else slice(0, len(r))
        ids[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = 1
    return {"input_ids": ids, "attention_mask": mask}


class ExpandedIds:
    """The tokenizer's padded ``input_ids`` / ``attention_mask`` of texts with "<image>" replaced
    by an expansion string, each distinct text tokenised once, unexpanded, and the expansion's
    ids spliced in, when that gives the ids of the expanded text: checked once per expansion, on
    the first row it meets (the expansion must be image tokens only). Otherwise, and for a
    tokenizer with inputs beyond ids and mask, the tokenizer runs on every expanded row.

    With ``split`` (the "llava_v1" format), the texts are tokenised as ``image_split_ids`` and the
    image token always spliced: LLaVA's own model expands its one image token into the image's
    features the same way. The expansion must then be image tokens only."""

    def __init__(self, tokenizer, image_token: str, image_id: int, split: bool = False) -> None:
        self.tokenizer, self.image_token, self.image_id = tokenizer, image_token, image_id
        self.image: ImageSplit = (image_token, image_id) if split else None
        self.splice: tuple[str, list[int] | None] | None = None  # (expansion string, its ids if splicing is exact)

    def __call__(self, texts: list[str], expanded: str, padding_side: str) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        if self.splice is None or self.splice[0] != expanded:
            expansion = tok(expanded, add_special_tokens=False)["input_ids"]
            image_only = all(t == self.image_id for t in expansion)
            if self.image and not image_only:
                raise ValueError(f"'{self.image_token}' expands to more than image tokens: use chat_format 'checkpoint'")
            exact = image_only and (
                self.image is not None
                or expand_image_tokens(token_ids(tok, texts[:1])[0], self.image_id, expansion)
                == tok(texts[0].replace(self.image_token, expanded))["input_ids"]
            )
            self.splice = (expanded, expansion if exact else None)
        expansion = self.splice[1]
        if self.image is None and (expansion is None or set(tok.model_input_names) != {"input_ids", "attention_mask"}):
            return dict(
                tok(
                    [t.replace(self.image_token, expanded) for t in texts],
                    padding=True,
                    padding_side=padding_side,
                    return_tensors="pt",
                )
            )
        rows = [expand_image_tokens(ids, self.image_id, expansion) for ids in token_ids(tok, texts, self.image)]
        return pad_rows(rows, tok.pad_token_id, padding_side)


class LlavaText:
    """The texts and ids LLaVA-1.5's vLLM backends build, in-process and served alike (those
    ``HFLlavaVLM`` builds); the class using it holds ``processor``, ``tokenizer``, ``chat_format``."""

    processor: object
    tokenizer: object
    chat_format: str

    def chat_text(self, prompt: str) -> str:
        """The full model input for one user prompt about one image, up to "ASSISTANT:"."""
        return llava_chat_text(self.processor, prompt, self.chat_format)

    def score_text(self, prompt: str, answer: str) -> str:
        """One scoring row's text."""
        return join_answer(self.chat_text(prompt), answer)

    @property
    def image_split(self) -> ImageSplit:
        """The image token texts are split at in "llava_v1" (``HFLlavaVLM.image_split``), else None."""
        if self.chat_format != "llava_v1":
            return None
        token = self.processor.image_token
        return token, self.tokenizer.convert_tokens_to_ids(token)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """The ids for ``texts``, one image token per "<image>" (vLLM expands it)."""
        return token_ids(self.tokenizer, texts, self.image_split)
