"""Steps 4-6 (eq 3, 5, 6, 7): negative mining and its progressive accumulation.

``mine`` is the contract of SPEC.md step 6: plain torch, the CPU path and the reference
that the fused Triton kernel (``int_engine.kernels.mine_fused``) must match to 1e-6. The
engine runs it through the ``Miner`` role (``protocols.Miner``; ``kernels.TickMiner`` pads a
scheduler tick's images into one launch), as it runs the models.
"""

from __future__ import annotations

import torch


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
