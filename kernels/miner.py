"""The ``Miner`` role: a scheduler tick's negative mining as one ``mine_fused`` launch.

Every image waiting at ``Call.MINE`` arrives in one ``mine`` call; their [V_b, C_b] scores are
padded into one [B, V_max, C_max] batch on the host, moved to the miner's device in its dtypes,
mined in one launch (the Triton kernel on CUDA, or on CPU under TRITON_INTERPRET=1; the torch
reference ``int_engine.mining.mine`` otherwise) and cut back into each image's share on the CPU.
"""

from __future__ import annotations

from typing import Sequence

import torch

from int_engine.mining import mine

from .mine_fused import MAX_CANDIDATES, MAX_VIEWS, mine_fused

Mined = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def mining_dtypes(device: torch.device) -> tuple[torch.dtype, torch.dtype]:
    """(scores dtype, history dtype) that ``mine_fused`` is given on ``device``.

    CPU: float64 for both, the pipeline's dtype, so CPU results are those of ``mine``.
    CUDA: float32 scores, the dtype the kernel is written for (the softmax difference agrees with
    float64 to 1e-6 on D = scores / W, see ``mine_fused``), and float64 history, so that eq 5-7
    and the running weights W stay in the pipeline's float64 (the kernel computes them in
    promote(scores, history) and returns float64). Elsewhere (MPS has no float64): float32.
    """
    if device.type == "cpu":
        return torch.float64, torch.float64
    if device.type == "cuda":
        return torch.float32, torch.float64
    return torch.float32, torch.float32


def pad_tick(
    s_before: Sequence[torch.Tensor], s_after: Sequence[torch.Tensor], history: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tick's padded inputs on the host, in the inputs' dtypes.

    Per image [V_b, C_b] scores and [C_b] history. Returns scores [2, B, V_max, C_max]
    (s_before, s_after) padded with -inf (padded views and candidates count as nothing) and
    history [B, C_max] padded with 1. Padding where the data already is, then moving the tick at
    once, costs two host->device copies per tick instead of three per image.
    """
    v = max(t.shape[0] for t in s_before)
    c = max(t.shape[1] for t in s_before)
    scores = torch.full((2, len(s_before), v, c), float("-inf"), dtype=s_before[0].dtype)
    padded_history = torch.ones((len(s_before), c), dtype=history[0].dtype)
    for b, (sb, sa, h) in enumerate(zip(s_before, s_after, history)):
        scores[0, b, : sb.shape[0], : sb.shape[1]] = sb
        scores[1, b, : sa.shape[0], : sa.shape[1]] = sa
        padded_history[b, : h.shape[0]] = h
    return scores, padded_history


def to_host(pick: torch.Tensor, scores: torch.Tensor, new_history: torch.Tensor, dtype: torch.dtype) -> Mined:
    """The tick's outputs on the CPU in one device->host copy: pick int64 [B], scores and
    new_history [B, C] in ``dtype`` (what ``mine`` returns on the pipeline's tensors)."""
    if scores.device.type != "cpu":
        # One copy, not three: pick (a column index < C) is exact in float32 and float64.
        packed = torch.cat([pick.to(scores.dtype)[:, None], scores, new_history], dim=1).cpu()
        c = scores.shape[1]
        pick, scores, new_history = packed[:, 0].to(torch.int64), packed[:, 1 : 1 + c], packed[:, 1 + c :]
    return pick, scores.to(dtype), new_history.to(dtype)


class TickMiner:
    """``protocols.Miner`` on ``device`` (the VLM's, where the scores come from)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    def mine(
        self,
        s_before: Sequence[torch.Tensor],
        s_after: Sequence[torch.Tensor],
        history: Sequence[torch.Tensor],
        eps: float,
    ) -> list[Mined]:
        """Per image: pick int64 [], scores [C_b], new history [C_b] on the CPU, in the dtype
        ``mine`` gives on the inputs (float64 from the pipeline)."""
        if not len(s_before) == len(s_after) == len(history):
            raise ValueError(f"mine: {len(s_before)} s_before, {len(s_after)} s_after, {len(history)} histories")
        if not s_before:
            return []
        s_dtype, h_dtype = mining_dtypes(self.device)
        out_dtype = torch.promote_types(s_before[0].dtype, history[0].dtype)
        scores, padded_history = pad_tick(s_before, s_after, history)
        # Both score tensors in one transfer; no copy at all on the CPU in float64 (the pipeline's).
        scores = scores.to(device=self.device, dtype=s_dtype)
        padded_history = padded_history.to(device=self.device, dtype=h_dtype)
        _, _, v, c = scores.shape
        # The kernel holds an image in registers (V <= 16, C <= 64); beyond that the torch reference.
        fn = mine_fused if v <= MAX_VIEWS and c <= MAX_CANDIDATES else mine
        pick, mined, new_history = to_host(*fn(scores[0], scores[1], padded_history, eps), out_dtype)
        return [(pick[b], mined[b, : sb.shape[1]], new_history[b, : sb.shape[1]]) for b, sb in enumerate(s_before)]
