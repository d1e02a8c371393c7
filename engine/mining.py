"""Steps 4-6 (eq 3, 5, 6, 7): negative mining and its progressive accumulation.

``mine`` is the contract of SPEC.md step 6: plain torch, the CPU path and the reference
that the fused Triton kernel (``int_engine.kernels.mine_fused``) must match to 1e-6.
``mine_batch`` is step 6 for a whole scheduler tick: every waiting image's scores padded into
one [B, V, C] batch, put on the mining device in its dtypes, one ``mine_fused`` launch, and each
image's share cut back out on the CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .calls import ModelCall
    from .config import EngineConfig


def _masked_softmax(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis restricted to ``valid`` entries; rows with none valid are 0."""
    neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device)
    masked = torch.where(valid, scores, neg_inf)
    row_max = masked.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = torch.where(valid, torch.exp(masked - row_max), torch.zeros_like(scores))
    total = e.sum(dim=-1, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total))


def view_gains(s_before: torch.Tensor, s_after: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq 3 per view: the pick y^k = argmax_c d_k(c) and D(y^k) = max(0, max_c d_k(c)), where
    d_k = softmax(s_before) - softmax(s_after) over the view's valid (finite) candidates.

    s_before, s_after: float [B, V, C]. Returns int64 [B, V] and float [B, V]; a padded view
    (all -inf) has pick 0 and D = 0. Ties go to the lowest candidate index.
    """
    valid = torch.isfinite(s_before)
    diff = _masked_softmax(s_before, valid) - _masked_softmax(s_after, valid)
    diff = torch.where(valid, diff, torch.full_like(diff, float("-inf")))
    view_pick = diff.argmax(dim=-1)
    view_gain = diff.gather(-1, view_pick.unsqueeze(-1)).squeeze(-1).clamp_min(0.0)
    view_gain = torch.where(valid.any(dim=-1), view_gain, torch.zeros_like(view_gain))
    return view_pick, view_gain


def mine(
    s_before: torch.Tensor, s_after: torch.Tensor, history: torch.Tensor, eps: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Negative mining over a padded batch of images (eq 3, 5, 6, 7; SPEC steps 4-6).

    Args:
        s_before: float [B, V, C] VLM scores s(c | X_k) of candidate c on view k of image b.
            ``-inf`` marks a padded candidate; a view whose entries are all ``-inf`` is a
            padded view and counts as no view.
        s_after: float [B, V, C] the same scores on the inpainted views X'_k (padding taken
            from ``s_before``).
        history: float [B, C] running weights W_i(c) (1 for a new image).
        eps: the floor ε of the weight update.

    Returns:
        pick: int64 [B], argmax_c Ď_i(c), ties to the lowest index (eq 5).
        scores: float [B, C], Ď_i(c) = D_i(c) · W_i(c), with D_i(c) the largest clipped
            difference D(y^k) = max(0, max_c d_k(c)) among views whose pick y^k is c, and
            d_k = softmax(s_before) - softmax(s_after) over the view's valid candidates (eq 3).
        new_history: float [B, C], W_{i+1} = ε + Ď_i / Σ_c Ď_i (eq 6-7) for every column,
            or W_i unchanged for an image whose Σ_c Ď_i is 0 (no view moved).
    """
    if s_before.shape != s_after.shape or s_before.dim() != 3:
        raise ValueError(f"s_before and s_after must both be [B, V, C], got {tuple(s_before.shape)} and {tuple(s_after.shape)}")
    b, _, c = s_before.shape
    if history.shape != (b, c):
        raise ValueError(f"history must be [B, C] = [{b}, {c}], got {tuple(history.shape)}")
    if c == 0:
        raise ValueError("mine needs at least one candidate column (C >= 1)")
    view_pick, view_gain = view_gains(s_before, s_after)
    per_name = torch.zeros((b, c), dtype=s_before.dtype, device=s_before.device)
    per_name = per_name.scatter_reduce(1, view_pick, view_gain, reduce="amax", include_self=True)
    scores = per_name * history
    total = scores.sum(dim=-1, keepdim=True)
    new_history = torch.where(total > 0, eps + scores / torch.where(total > 0, total, torch.ones_like(total)), history)
    pick = scores.argmax(dim=-1)
    return pick, scores, new_history


class NameWeights:
    """W(c) of eq 6-7 for one image, over every name seen so far (SPEC step 6).

    ``observe`` is called in every iteration, whether or not it ran steps 4-6: a name first
    seen in iteration 1 starts at 1, a name first seen later at ε. ``update`` records mining's
    W_{i+1}; names not proposed in that iteration have Ď = 0, so they drop to ε when any view
    moved, and nothing changes when none did.
    """

    def __init__(self, eps: float) -> None:
        self.eps = eps
        self.weights: dict[str, float] = {}
        self.iterations = 0

    def observe(self, candidates: list[str]) -> None:
        """Start this iteration: register its candidate names."""
        start = 1.0 if self.iterations == 0 else self.eps
        for name in candidates:
            self.weights.setdefault(name, start)
        self.iterations += 1

    def history(self, candidates: list[str]) -> torch.Tensor:
        """float64 [1, C] W_i for this iteration's (observed) candidates."""
        return torch.tensor([[self.weights[c] for c in candidates]], dtype=torch.float64)

    def update(self, candidates: list[str], scores: torch.Tensor, new_history: torch.Tensor) -> None:
        """Record W_{i+1} from ``mine``'s outputs for this image ([C] or [1, C])."""
        scores, new_history = scores.reshape(-1), new_history.reshape(-1)
        if not bool(scores.sum() > 0):
            return
        for name in self.weights:
            self.weights[name] = self.eps
        for name, w in zip(candidates, new_history.tolist()):
            self.weights[name] = w


# ---- a tick's negative mining: one fused launch for every image waiting at Call.MINE ----------


def mining_device(config: EngineConfig) -> torch.device:
    """Where a tick's negative mining runs: the VLM's device (the scores come from the VLM)."""
    return torch.device(config.models.device_of("vlm"))


def mining_dtypes(device: torch.device) -> tuple[torch.dtype, torch.dtype]:
    """(scores dtype, history dtype) that ``mine_fused`` is given on ``device``.

    CPU: float64 for both, the pipeline's dtype, so CPU results are those of ``mine``.
    CUDA: float32 scores, the dtype the kernel is written for (the softmax difference agrees with
    float64 to 1e-6 on D = scores / W, see ``kernels.mine_fused``), and float64 history, so that
    eq 5-7 and the running weights W stay in the pipeline's float64 (the kernel computes them in
    promote(scores, history) and returns float64). Elsewhere (MPS has no float64): float32.
    """
    if device.type == "cpu":
        return torch.float64, torch.float64
    if device.type == "cuda":
        return torch.float32, torch.float64
    return torch.float32, torch.float32


def _pad_tick(calls: list[ModelCall]) -> tuple[torch.Tensor, torch.Tensor]:
    """The tick's padded inputs on the host, in the calls' dtypes.

    Each call holds [1, V_b, C_b] scores and [1, C_b] history (CPU tensors from the pipeline).
    Returns scores [2, B, V_max, C_max] (s_before, s_after) padded with -inf (padded views and
    candidates count as nothing) and history [B, C_max] padded with 1. Padding where the data
    already is, then moving the tick at once, costs two host->device copies per tick instead
    of three per image.
    """
    befores = [c.items[0][0] for c in calls]
    v = max(t.shape[1] for t in befores)
    c = max(t.shape[2] for t in befores)
    scores = torch.full((2, len(calls), v, c), float("-inf"), dtype=befores[0].dtype)
    history = torch.ones((len(calls), c), dtype=calls[0].items[2][0].dtype)
    for b, call in enumerate(calls):
        sb, sa, h = call.items[0][0], call.items[1][0], call.items[2][0]
        scores[0, b, : sb.shape[1], : sb.shape[2]] = sb[0]
        scores[1, b, : sa.shape[1], : sa.shape[2]] = sa[0]
        history[b, : h.shape[1]] = h[0]
    return scores, history


def _to_host(
    pick: torch.Tensor, scores: torch.Tensor, new_history: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The tick's outputs on the CPU in one device->host copy: pick int64 [B], scores and
    new_history [B, C] in ``dtype`` (what ``mine`` returns on the pipeline's tensors)."""
    if scores.device.type != "cpu":
        # One copy, not three: pick (a column index < C) is exact in float32 and float64.
        packed = torch.cat([pick.to(scores.dtype)[:, None], scores, new_history], dim=1).cpu()
        c = scores.shape[1]
        pick, scores, new_history = packed[:, 0].to(torch.int64), packed[:, 1 : 1 + c], packed[:, 1 + c :]
    return pick, scores.to(dtype), new_history.to(dtype)


def mine_batch(
    calls: list[ModelCall], device: torch.device | str = "cpu"
) -> list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """One fused negative-mining launch for the ``Call.MINE`` calls of many images (SPEC step 6).

    Pads every image's [1, V, C] scores to the tick's [B, V_max, C_max] (``_pad_tick``), moves
    them to ``device`` in ``mining_dtypes(device)``, runs ``mine_fused`` once (the Triton kernel
    on CUDA, or on CPU under TRITON_INTERPRET=1; ``mine`` otherwise), and gives each image its
    reply, ``[(pick, scores, new_history)]`` as ``calls.run_model`` gives it: pick int64 [1],
    scores and new_history [1, C_b], on the CPU, in the dtype ``mine`` gives on the pipeline's
    tensors (float64).
    """
    from .kernels import MAX_CANDIDATES, MAX_VIEWS, mine_fused  # kernels imports this module

    device = torch.device(device)
    s_dtype, h_dtype = mining_dtypes(device)
    out_dtype = torch.promote_types(calls[0].items[0][0].dtype, calls[0].items[2][0].dtype)
    scores, history = _pad_tick(calls)
    # Both score tensors in one transfer; no copy at all on the CPU in float64 (the pipeline's).
    scores, history = scores.to(device=device, dtype=s_dtype), history.to(device=device, dtype=h_dtype)
    s_before, s_after = scores[0], scores[1]
    _, v, c = s_before.shape
    # The kernel holds an image in registers (V <= 16, C <= 64); beyond that the torch reference.
    fn = mine_fused if v <= MAX_VIEWS and c <= MAX_CANDIDATES else mine
    pick, scores, new_history = _to_host(*fn(s_before, s_after, history, calls[0].params[0]), out_dtype)
    out = []
    for b, call in enumerate(calls):
        n = call.items[0][0].shape[2]
        out.append([(pick[b : b + 1], scores[b : b + 1, :n], new_history[b : b + 1, :n])])
    return out
