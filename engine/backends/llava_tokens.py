"""Token ids of a LLaVA call's rows, computed once per distinct text.

A call repeats a few texts over hundreds of rows (every view of every image with the same
prompt, every candidate of a name with the same answer), and LLaVA-1.5's "<image>" expands to
576 image tokens that the tokenizer would otherwise split out of every row's text again: here
each distinct text is tokenised once with its single "<image>", and the expansion is spliced
into the ids (``expand_image_tokens``), which gives the ids of the expanded text whenever the
expansion is image tokens only (checked once, on the first row, ``ExpandedIds``).
"""

from __future__ import annotations

from typing import Sequence

import torch


def token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """``tokenizer(texts)["input_ids"]``, each distinct text tokenised once."""
    distinct = list(dict.fromkeys(texts))
    ids = dict(zip(distinct, tokenizer(distinct)["input_ids"]))
    return [list(ids[t]) for t in texts]


def answer_token_ids(tokenizer, prompt_texts: list[str], full_texts: list[str]) -> list[list[int]]:
    """Each answer's token ids: the full text's tokens after the prefix it shares with the
    prompt's tokenisation (so " frog" after "ASSISTANT:" is "▁frog", as generated)."""
    answers = []
    for j, (pre, full) in enumerate(zip(token_ids(tokenizer, prompt_texts), token_ids(tokenizer, full_texts))):
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
    tokenizer with inputs beyond ids and mask, the tokenizer runs on every expanded row."""

    def __init__(self, tokenizer, image_token: str, image_id: int) -> None:
        self.tokenizer, self.image_token, self.image_id = tokenizer, image_token, image_id
        self.splice: tuple[str, list[int] | None] | None = None  # (expansion string, its ids if splicing is exact)

    def __call__(self, texts: list[str], expanded: str, padding_side: str) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        if self.splice is None or self.splice[0] != expanded:
            expansion = tok(expanded, add_special_tokens=False)["input_ids"]
            exact = all(t == self.image_id for t in expansion) and (
                expand_image_tokens(token_ids(tok, texts[:1])[0], self.image_id, expansion)
                == tok(texts[0].replace(self.image_token, expanded))["input_ids"]
            )
            self.splice = (expanded, expansion if exact else None)
        expansion = self.splice[1]
        if expansion is None or set(tok.model_input_names) != {"input_ids", "attention_mask"}:
            return dict(
                tok(
                    [t.replace(self.image_token, expanded) for t in texts],
                    padding=True,
                    padding_side=padding_side,
                    return_tensors="pt",
                )
            )
        rows = [expand_image_tokens(ids, self.image_id, expansion) for ids in token_ids(tok, texts)]
        return pad_rows(rows, tok.pad_token_id, padding_side)
