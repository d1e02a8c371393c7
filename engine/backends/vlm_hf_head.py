"""The LM head at the answer positions only, in float32 whatever the model's dtype: the scoring
path's log-probabilities for ``vlm_hf.HFLlavaVLM`` (memory in ``vlm_hf``'s module docstring)."""

from __future__ import annotations

from typing import Sequence

import torch

# Words of the LM head's weight cast to float32 at a time for the answer positions' logits.
HEAD_BLOCK = 8192


def answer_logprob_means(lm_head, hidden: torch.Tensor, input_ids: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """Each row's mean log-prob of its answer, float32 [R]: the last ``lengths[r]`` tokens of the
    left-padded ``input_ids`` [R, S], from the final hidden states ``hidden`` [R, S, H].

    Position t predicts token t + 1, so row r's answer ``ids[r, S-n:]`` comes from
    ``hidden[r, S-n-1 : S-1]``. Only those A = sum(lengths) positions go through the LM head
    (``answer_logprobs``, in float32): [A, V] float32 logits, V x 4 B each (128 KB per token for
    LLaVA's 32000 words), where all positions' logits would be [R, S, V] (a 16384-token pass:
    2.1 GB, and as much again for log_softmax).
    """
    rows, seq = input_ids.shape
    longest = max(lengths)
    n = torch.tensor(list(lengths), device=input_ids.device)
    is_answer = torch.arange(longest, device=input_ids.device)[None, :] >= (longest - n)[:, None]  # [R, longest]
    states = hidden[:, seq - longest - 1 : seq - 1][is_answer]  # [A, H]
    targets = input_ids[:, seq - longest :][is_answer]  # [A]
    token_lp = answer_logprobs(lm_head, states, targets)  # [A]
    row = torch.arange(rows, device=input_ids.device)[:, None].expand(rows, longest)[is_answer]  # [A]
    sums = torch.zeros(rows, dtype=torch.float32, device=input_ids.device).index_add_(0, row, token_lp)
    return sums / n


def head_logits_float32(lm_head, states: torch.Tensor) -> torch.Tensor:
    """The LM head's logits [A, V] of hidden states [A, H], computed in float32 whatever the model's
    dtype: the states and the head's weight cast to float32 for these rows only, the weight a block
    of ``HEAD_BLOCK`` words at a time (not a float32 copy of the whole head; not of the model).

    In float16 / bfloat16 a logit keeps 11 / 8 significant bits: on logits of ~10, bfloat16 rounds
    each by up to 0.03, and a score averages a few such log-probs."""
    x = states.float()
    weight, bias = lm_head.weight, getattr(lm_head, "bias", None)
    blocks = []
    for start in range(0, weight.shape[0], HEAD_BLOCK):
        words = slice(start, start + HEAD_BLOCK)
        blocks.append(torch.nn.functional.linear(x, weight[words].float(), None if bias is None else bias[words].float()))
    return torch.cat(blocks, dim=-1)


def answer_logprobs(lm_head, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets[a] | states[a]), float32 [A], from hidden states [A, H] (``head_logits_float32``):
    log p = logit - logsumexp(logits), with no [A, V] log_softmax copy."""
    logits = head_logits_float32(lm_head, states)  # [A, V]
    return logits.gather(-1, targets[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
