"""Sampling for transformers' ``generate`` with one random stream per row.

transformers samples every row of a batch from one global generator, so a row's answer would
depend on which rows share its batch. ``SeededSampling`` draws each row's next token from that
row's own ``torch.Generator`` (seeded by the request) and hands greedy search a one-hot score,
so an answer depends only on its request and its seed.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import LogitsProcessor


class SeededSampling(LogitsProcessor):
    """Temperature sampling with a generator per row: float scores [B, V] in, -inf everywhere but
    the sampled token (0) out; run it with ``do_sample=False``."""

    def __init__(self, temperature: float, seeds: Sequence[int]) -> None:
        if not temperature > 0:
            raise ValueError(f"sampling needs a temperature > 0, got {temperature}")
        self.temperature = float(temperature)
        self.generators = [torch.Generator().manual_seed(int(s) % 2**63) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if len(scores) != len(self.generators):
            raise ValueError(f"{len(scores)} rows but {len(self.generators)} seeds")
        probs = torch.softmax(scores.float() / self.temperature, dim=-1).cpu()
        picks = torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators)])
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(picks), device=scores.device), picks.to(scores.device)] = 0.0
        return out
