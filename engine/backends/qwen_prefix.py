"""Scoring on a shared prefix for ``vlm_qwen.HFQwenVLM``: the plan and the KV-cache reuse of
``llava_prefix`` (read its docstring for the passes and the memory), with Qwen's positions.

Rows are grouped by (image identity, prefix token ids) (``llava_prefix.prefix_groups``) and cut
into passes (``llava_prefix.prefix_passes``). Each pass runs

1. the prefix pass: each distinct prefix once, left padded, through the multimodal model (its
   image's features, Qwen3-VL's DeepStack features into the first layers, and M-RoPE positions
   from ``get_rope_index``), ``use_cache=True``: the prefixes' KV cache, and the last position's
   hidden state, whose logits give each answer's first token;
2. the answer pass: every answer's tokens but the last, right padded, through the language model
   on its prefix's cache (``hf_cache_shim.SharedPrefixCache``, never copied per answer), at
   positions continuing the prefix's: text after the image runs on from the prefix's largest
   position + 1 on all three rotary axes (``qwen_inputs.next_positions``), NOT from the prefix's
   token count (an image of N tokens takes only max(h, w) / merge positions). The answers hold
   no image token, so no DeepStack feature is added to them, as in the full sequence.

Equal to the full teacher-forced sequence up to float rounding: tests/backends/test_vlm_qwen.py
checks 1e-4 in float32 for both families.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .hf_cache_shim import SharedPrefixCache
from .llava_prefix import prefix_groups, prefix_passes
from .qwen_inputs import next_positions


def score_shared(
    vlm: Any, images: Sequence[np.ndarray], prefixes: list[list[int]], answers: list[list[int]], scores: np.ndarray
) -> tuple[int, int]:
    """Score a call's rows into ``scores`` (``prefixes[r]``: row r's prompt ids, its image's
    placeholder expanded; ``answers[r]``: its answer's ids); the (prefix, answer) tokens the
    language model ran."""
    ids = [p + a for p, a in zip(prefixes, answers)]
    lengths = [len(a) for a in answers]
    groups = prefix_groups(images, ids, lengths)
    prefix_lengths = [len(prefixes[g[0]]) for g in groups]
    prefix_tokens = answer_tokens = 0
    for pass_groups in prefix_passes(groups, prefix_lengths, lengths, vlm.max_batch_tokens, vlm.max_batch_size):
        rows = [r for g in pass_groups for r in g]
        scores[rows], p, a = score_pass(
            vlm,
            [images[g[0]] for g in pass_groups],
            [prefixes[g[0]] for g in pass_groups],
            [answers[r] for r in rows],
            [len(g) for g in pass_groups],
        )
        prefix_tokens, answer_tokens = prefix_tokens + p, answer_tokens + a
    return prefix_tokens, answer_tokens


def score_pass(
    vlm: Any, images: list[np.ndarray], prefixes: list[list[int]], answers: list[list[int]], sizes: list[int]
) -> tuple[np.ndarray, int, int]:
    """Mean answer log-probs, float32 [R], of k prefixes (``images[i]``, ``prefixes[i]``) each
    continued by the next ``sizes[i]`` of ``answers``; with the (prefix, answer) tokens run."""
    batch = vlm.batch(images, prefixes, padding_side="left")
    mask, device = batch["attention_mask"], batch["input_ids"].device
    out = vlm.model.model(
        input_ids=batch["input_ids"],
        attention_mask=mask,
        position_ids=batch["position_ids"],
        mm_encoder_outputs={"image": batch["image"]},
        use_cache=True,
    )
    cache, last = out.past_key_values, out.last_hidden_state[:, -1].contiguous()  # [k, H]
    del out
    group = torch.repeat_interleave(torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device))
    n = torch.tensor([len(a) for a in answers], device=device)
    first = torch.tensor([a[0] for a in answers], device=device)
    logits = vlm.head_logits(last)  # [k, V] float32
    sums = logits[group, first] - torch.logsumexp(logits, dim=-1)[group]
    del logits

    more = (n > 1).nonzero()[:, 0]
    if len(more):
        steps = int(n[more].max()) - 1
        pad = vlm.tokenizer.pad_token_id
        rows = [answers[r] for r in more.tolist()]
        answer_ids = torch.tensor([a[:-1] + [pad] * (steps + 1 - len(a)) for a in rows], device=device)
        targets = torch.tensor([t for a in rows for t in a[1:]], device=device)
        offsets = torch.arange(steps, device=device)
        valid = offsets[None, :] < (n[more] - 1)[:, None]  # [R', steps]
        g = group[more]
        positions = (next_positions(batch["position_ids"], mask)[g][:, None] + offsets[None, :])[None].expand(3, -1, -1)
        counts = torch.bincount(g, minlength=len(sizes)).tolist()
        spans = [(i, slice(s - c, s)) for i, (c, s) in enumerate(zip(counts, np.cumsum(counts).tolist())) if c]
        hidden = vlm.model.model.language_model(
            inputs_embeds=vlm.model.get_input_embeddings()(answer_ids),
            attention_mask=torch.cat([mask[g], valid.to(mask.dtype)], dim=1),
            position_ids=positions,
            past_key_values=SharedPrefixCache(cache, spans),
            use_cache=False,
        ).last_hidden_state
        del cache
        token_lp = vlm.answer_logprobs(hidden[valid], targets)  # [A'] float32
        sums = sums.index_add(0, more[:, None].expand(valid.shape)[valid], token_lp)
    means = (sums / n).cpu().numpy().astype(np.float32)
    return means, int(mask.sum()), int((n - 1).sum())
