"""Steps 10-11 (eq 12, 13): reweight the image for the next iteration, choose the final mask."""

from __future__ import annotations

import torch


def reweight(image: torch.Tensor, mask: torch.Tensor, w: float, original: torch.Tensor | None = None) -> torch.Tensor:
    """X_{i+1} = w·(X ⊙ M_i) + (1 − w)·X_i (eq 12), X the ``original`` image: "the mask is
    applied to the original image" (the authors' ``clipInputEMA``). With ``original=None``,
    X_i ⊙ M_i instead (``reweight_base: current``).

    image (X_i) and original (X): float [H, W, 3]; mask: float [H, W] in [0, 1]. Returns float [H, W, 3].
    """
    base = image if original is None else original
    return w * base * mask.unsqueeze(-1) + (1.0 - w) * image


def final_mask(masks: list[torch.Tensor]) -> tuple[int, torch.Tensor]:
    """i* = argmin_i ‖M_i − M̄‖₁ with M̄ the mean of the iterations' masks (eq 13).

    The pipeline passes the iterations' segmentations M_i^bin (SPEC step 11: the authors choose
    among their binary masks). masks: I tensors [H, W] (bool or float). Returns (i*, M_{i*});
    ties go to the earliest iteration.
    """
    if not masks:
        raise ValueError("final_mask needs at least one iteration's mask")
    stack = torch.stack([m.to(torch.float64) for m in masks])
    mean = stack.mean(dim=0)
    distances = (stack - mean).abs().flatten(1).sum(dim=1)
    best = int(distances.argmin())
    return best, masks[best]


def binarise(mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """The binary output mask: bool [H, W], True where ``mask`` >= ``threshold``."""
    return mask >= threshold


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """IoU of two bool [H, W] masks; 1 when both are empty (nothing changed)."""
    union = int((a | b).sum())
    return float(int((a & b).sum()) / union) if union else 1.0


def stop_reason(
    iteration: int, picks: tuple[str, str], segmentations: tuple[torch.Tensor, torch.Tensor], min_iterations: int, stop_iou: float
) -> str | None:
    """SPEC "Early stop": why an image stops after ``iteration`` (0-based), or None to go on.

    It stops when ``iteration >= min_iterations``, its pick A_i^u equals A_{i-1}^u (``picks``:
    previous, current) and IoU(M_i^bin, M_{i-1}^bin) >= ``stop_iou`` (``segmentations``: bool
    [H, W], previous, current).
    """
    if iteration < min_iterations or picks[0] != picks[1]:
        return None
    overlap = iou(*segmentations)
    if overlap < stop_iou:
        return None
    return f"converged after iteration {iteration}: pick {picks[1]!r} unchanged, IoU {overlap:.4f} >= {stop_iou:g}"
