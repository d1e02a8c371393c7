"""Model calls as data: what a step asks of a model, and how a call is executed.

The algorithm (``pipeline.image_steps``) yields ``ModelCall``s and receives their results;
a driver decides how to run them: the eager driver one call at a time, the scheduler one
batch per model for many images, the sequential reference one item at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from .mining import mine
from .protocols import Models

# role -> protocol attribute of Models; "mine" is the negative-mining math (no model)
ROLE_FIELD = {"vlm": "vlm", "inpaint": "inpainter", "detector": "detector", "segmenter": "segmenter", "clip": "clip"}


@dataclass(frozen=True)
class ModelCall:
    """``role.method(*items, *params)``: ``items`` are parallel lists (one entry per request),
    ``params`` scalars shared by all requests; ``stage`` names the SPEC step for timing."""

    stage: str
    role: str
    method: str
    items: tuple[list, ...]
    params: tuple = ()

    @property
    def size(self) -> int:
        return len(self.items[0]) if self.items else 0

    @property
    def key(self) -> tuple:
        """Calls with the same key can be concatenated into one batch."""
        return (self.role, self.method, self.params)


def run_model(models: Models, call: ModelCall) -> Any:
    """Execute one call as it is (one batch)."""
    if call.role == "mine":
        s_before, s_after, history, eps = call.items[0][0], call.items[1][0], call.items[2][0], call.params[0]
        return [mine(s_before, s_after, history, eps)]
    fn: Callable = getattr(getattr(models, ROLE_FIELD[call.role]), call.method)
    return fn(*call.items, *call.params)


def run_each(models: Models, call: ModelCall) -> Any:
    """Execute a call one request at a time (the sequential reference's way)."""
    parts = [run_model(models, ModelCall(call.stage, call.role, call.method, tuple([it[j]] for it in call.items), call.params))
             for j in range(call.size)]
    return concat(parts)


def concat(parts: list[Any]) -> Any:
    """Join per-call results (lists, arrays) in order."""
    if parts and isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return [x for p in parts for x in p]


def split(result: Any, sizes: list[int]) -> list[Any]:
    """Cut a batched result back into per-call results of the given sizes."""
    out, start = [], 0
    for n in sizes:
        out.append(result[start : start + n])
        start += n
    return out


def mine_call(s_before: torch.Tensor, s_after: torch.Tensor, history: torch.Tensor, eps: float) -> ModelCall:
    """Steps 4-6 as a call, so that a scheduler can run one fused launch for many images."""
    return ModelCall("mine", "mine", "mine", ([s_before], [s_after], [history]), (eps,))
