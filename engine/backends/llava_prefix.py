"""Scoring on a shared prefix, for the transformers LLaVA backend (``vlm_hf.HFLlavaVLM.score``).

A scoring call sends, per view, its image before and after inpainting, each with every candidate
name: rows (image, prompt, answer) whose image (by identity, as ``distinct_rows``) and prompt are
the same and only the answer differs. Their prefix, LLaVA's 576 image tokens and the chat-templated
question (~620 tokens), is the same; the answers are a few tokens each. So the rows are grouped by
(image, prefix token ids) and each pass runs

1. the prefix pass: each distinct prefix of the pass once (left padded to the longest), the image
   features written into its embeddings, the language model with ``use_cache=True``: the prefixes'
   KV cache, and the last position's hidden state, whose logits give every candidate's first
   answer token's log-prob;
2. the answer pass: every candidate's answer tokens but the last (the last predicts nothing),
   right padded, against its prefix's cache (``SharedPrefixCache``), ``use_cache=False``: their
   positions continue the prefix's, the attention mask is the prefix's padding then the answer's;
   they give the log-probs of the answer's other tokens.

Equal to the full teacher-forced sequence (prefix + answer in one row) up to float rounding (the
same attention, computed in other shapes): tests/backends/test_shared_prefix.py checks 1e-5 in float32.

Memory, for LLaVA-1.5-13B in float16 (the arithmetic of ``vlm_hf``'s docstring: the KV cache is
2 x 40 layers x 5120 x 2 B = 800 KiB a token, 20 KiB a token per layer). A pass holds R candidates
of k prefixes, P the longest prefix and A the longest answer, cut by ``prefix_passes`` so that
R x (P + A) <= ``max_batch_tokens`` (and R <= ``max_batch_size``), the bound of a full-sequence
pass of the same rows; k <= R, so:

- the prefixes' KV cache, kept through the pass: k x P x 800 KiB <= ``max_batch_tokens`` x 800 KiB,
  the bound ``generate`` already has (16384 tokens: 13.4 GB). The engine's calls have C >= 2
  candidates a prefix: 25 rows of 620 + 20 tokens in a 16384-token pass hold at most 12 prefixes,
  6.1 GB; with 4 candidates a prefix 6 prefixes, 3.0 GB. At worst (one candidate a prefix)
  it is the bound itself, where the full path held ~2.5 GB of activations: ``shared_prefix:
  false`` for calls that share nothing.
- the cache is NOT copied per candidate (C x 620 x 800 KiB = 4.1 GB for C = 8 candidates of one
  prefix, all layers at once, as ``DynamicCache.batch_repeat_interleave`` would). Instead
  ``SharedPrefixCache`` keeps one copy per prefix and expands it lazily, one layer at a time, into
  the keys/values that layer's attention reads: R x (P + A) x 20 KiB (16384 tokens: 335 MB,
  freed before the next layer), storing nothing of the answers.
- activations: the prefix pass k x P tokens, the answer pass R x A tokens (~150 KB a token, the
  module docstring of ``vlm_hf``), both within the full pass's R x (P + A); logits in float32
  only at the predicting positions: k x V for the first answer tokens, (sum of answers - R) x V.

Work: prefix tokens computed per call fall from sum over rows of P to sum over prefixes of P (per
pass: a prefix whose candidates span two passes is computed in each), by the mean number of
candidates per (image, prompt); answer tokens from sum of A to sum of A - 1.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np
import torch

from .hf_cache_shim import SharedPrefixCache
from .llava_common import distinct_rows


class PrefixModel(Protocol):
    """What shared-prefix scoring reads of its backend (``vlm_hf.HFLlavaVLM``), all public: the
    backend hands itself in, and nothing here imports it or reaches into its private methods."""

    model: Any  # LlavaForConditionalGeneration: config.image_token_id, model.language_model, get_input_embeddings()
    tokenizer: Any  # pad_token_id
    max_batch_tokens: int | None
    max_batch_size: int | None

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's ids, "<image>" one image token."""
        ...

    def image_token_count(self) -> int:
        """How many tokens one "<image>" expands to."""
        ...

    def model_inputs(self, images: Sequence[np.ndarray], texts: list[str], padding_side: str) -> dict:
        """input_ids / attention_mask [R, S] and the distinct images' pixel_values, on the device."""
        ...

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[U, N, H]: the distinct images' projected features."""
        ...

    def embed_tokens(self, input_ids: torch.Tensor, features: torch.Tensor, inverse: list[int]) -> torch.Tensor:
        """[R, S, H]: token embeddings, row r's image tokens replaced by features[inverse[r]]."""
        ...

    def head_logits(self, states: torch.Tensor) -> torch.Tensor:
        """[A, V] float32 logits of hidden states [A, H]."""
        ...

    def answer_logprobs(self, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """[A] float32 log p(targets[a] | states[a])."""
        ...


def prefix_groups(images: Sequence[np.ndarray], ids: Sequence[Sequence[int]], lengths: Sequence[int]) -> list[list[int]]:
    """The rows grouped by (image identity, prefix token ids), groups and rows in first-occurrence
    order: ``ids[r]`` is row r's token ids, its last ``lengths[r]`` the answer's."""
    groups: dict[tuple, list[int]] = {}
    for r, (row, n) in enumerate(zip(ids, lengths)):
        groups.setdefault((id(images[r]), tuple(row[: len(row) - n])), []).append(r)
    return list(groups.values())


def prefix_passes(
    groups: Sequence[Sequence[int]],
    prefix_lengths: Sequence[int],
    lengths: Sequence[int],
    max_tokens: int | None = None,
    max_rows: int | None = None,
) -> list[list[list[int]]]:
    """The groups' rows cut into passes, each a list of (some of) a group's rows per prefix, in
    which rows x (longest prefix + longest answer) <= ``max_tokens`` and rows <= ``max_rows``
    (None: no bound), the bound a full-sequence pass of the same rows has (see the module
    docstring). A group goes whole into a fresh pass rather than be split when it fits one; a
    group over the budget is split between passes (its prefix computed in each); a row alone
    over it gets a pass of its own."""

    def fits(p: int, a: int, rows: int) -> bool:
        return (max_rows is None or rows <= max_rows) and (max_tokens is None or rows * (p + a) <= max_tokens)

    passes: list[list[list[int]]] = []
    current: list[list[int]] = []
    longest_p = longest_a = rows = 0
    for g, members in enumerate(groups):
        p, a = prefix_lengths[g], max(lengths[r] for r in members)
        if rows and not fits(max(longest_p, p), max(longest_a, a), rows + len(members)) and fits(p, a, len(members)):
            passes.append(current)
            current, longest_p, longest_a, rows = [], 0, 0, 0
        part: list[int] = []
        for r in members:
            if rows and not fits(max(longest_p, p), max(longest_a, lengths[r]), rows + 1):
                passes.append(current + [part] if part else current)
                current, part, longest_p, longest_a, rows = [], [], 0, 0, 0
            part.append(r)
            longest_p, longest_a, rows = max(longest_p, p), max(longest_a, lengths[r]), rows + 1
        current.append(part)
    if current:
        passes.append(current)
    return passes


def plan(vlm: PrefixModel, images: Sequence[np.ndarray], texts: list[str], lengths: list[int]) -> list[list[list[int]]]:
    """The passes of a scoring call's rows (``texts``: prompt + answer; ``lengths``: answer tokens),
    grouped by shared prefix, before any image is processed: each "<image>" counts its expansion."""
    ids = vlm.token_ids(texts)
    groups = prefix_groups(images, ids, lengths)
    image_id, extra = vlm.model.config.image_token_id, vlm.image_token_count() - 1
    prefix = [ids[g[0]][: len(ids[g[0]]) - lengths[g[0]]] for g in groups]
    prefix_lengths = [len(p) + extra * p.count(image_id) for p in prefix]
    return prefix_passes(groups, prefix_lengths, lengths, vlm.max_batch_tokens, vlm.max_batch_size)


def score_shared(
    vlm: PrefixModel, images: Sequence[np.ndarray], texts: list[str], lengths: list[int], scores: np.ndarray
) -> tuple[int, int]:
    """Score a call's rows into ``scores`` pass by pass (``plan``); the (prefix, answer) tokens
    the language model ran."""
    prefix_tokens = answer_tokens = 0
    for groups in plan(vlm, images, texts, lengths):
        rows = [r for g in groups for r in g]
        scores[rows], prefix, answer = score_pass(
            vlm, [images[r] for r in rows], [texts[r] for r in rows], [lengths[r] for r in rows], [len(g) for g in groups]
        )
        prefix_tokens, answer_tokens = prefix_tokens + prefix, answer_tokens + answer
    return prefix_tokens, answer_tokens


def score_pass(
    vlm: PrefixModel, images: Sequence[np.ndarray], texts: list[str], lengths: list[int], sizes: list[int]
) -> tuple[np.ndarray, int, int]:
    """Mean answer log-probs of one pass's rows, float32 [R] (the LM head in float32 at the answer
    positions: ``PrefixModel.head_logits`` / ``answer_logprobs``), with (prefix tokens, answer tokens)
    computed. The rows come grouped: the first ``sizes[0]`` share one prefix, the next
    ``sizes[1]`` another, ... (``lengths``: answer tokens per row)."""
    lm = vlm.model.model.language_model
    batch = vlm.model_inputs(images, texts, padding_side="left")
    features = vlm.vision_features(batch.pop("pixel_values"))
    ids, real = batch["input_ids"], batch["attention_mask"].sum(-1)
    device, (rows, seq) = ids.device, ids.shape
    n = torch.tensor(lengths, device=device)
    firsts = np.cumsum([0] + sizes[:-1]).tolist()
    group = torch.repeat_interleave(torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device))

    # 1. the prefixes, once each, left padded: their KV cache and last hidden state
    plen = [int(real[f] - n[f]) for f in firsts]
    longest = max(plen)
    prefix_ids = torch.full((len(sizes), longest), vlm.tokenizer.pad_token_id, dtype=ids.dtype, device=device)
    prefix_mask = torch.zeros((len(sizes), longest), dtype=batch["attention_mask"].dtype, device=device)
    for i, (f, p) in enumerate(zip(firsts, plen)):
        prefix_ids[i, longest - p :] = ids[f, seq - lengths[f] - p : seq - lengths[f]]
        prefix_mask[i, longest - p :] = 1
    inverse = distinct_rows(images)[1]
    embeds = vlm.embed_tokens(prefix_ids, features, [inverse[f] for f in firsts])
    del features
    out = lm(
        inputs_embeds=embeds,
        attention_mask=prefix_mask,
        position_ids=(prefix_mask.cumsum(-1) - 1).clamp(min=0),
        use_cache=True,
        output_hidden_states=False,
    )
    del embeds
    cache, last = out.past_key_values, out.last_hidden_state[:, -1].contiguous()  # [k, H]
    del out
    # [k, V], float32 whatever the model's dtype: each prefix's prediction of its answers' first token
    logits = vlm.head_logits(last)
    first = ids[torch.arange(rows, device=device), seq - n]
    sums = logits[group, first] - torch.logsumexp(logits, dim=-1)[group]
    del logits

    # 2. the answers but their last token, right padded, against their prefix's cache
    more = (n > 1).nonzero()[:, 0]
    if len(more):
        steps = int(n[more].max()) - 1
        offsets = torch.arange(steps, device=device)
        valid = offsets[None, :] < (n[more] - 1)[:, None]  # [R', steps]
        where = ((seq - n[more])[:, None] + offsets[None, :]).clamp(max=seq - 1)
        answer_ids = torch.where(valid, ids[more].gather(1, where), vlm.tokenizer.pad_token_id)
        targets = ids[more].gather(1, (where + 1).clamp(max=seq - 1))[valid]  # the token each position predicts
        g = group[more]
        mask = torch.cat([prefix_mask[g], valid.to(prefix_mask.dtype)], dim=1)
        position_ids = torch.tensor(plen, device=device)[g][:, None] + offsets[None, :]
        counts = torch.bincount(g, minlength=len(sizes)).tolist()
        spans = [(i, slice(s - c, s)) for i, (c, s) in enumerate(zip(counts, np.cumsum(counts).tolist())) if c]
        shared = SharedPrefixCache(cache, spans)
        hidden = lm(
            inputs_embeds=vlm.model.get_input_embeddings()(answer_ids),
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=shared,
            use_cache=False,
            output_hidden_states=False,
        ).last_hidden_state
        del shared, cache
        states = hidden[valid]  # [A', H]
        del hidden
        token_lp = vlm.answer_logprobs(states, targets)  # float32 head, as the first token's
        sums = sums.index_add(0, more[:, None].expand(valid.shape)[valid], token_lp)
    means = (sums / n).cpu().numpy().astype(np.float32)
    return means, sum(plen), int((n - 1).sum())
