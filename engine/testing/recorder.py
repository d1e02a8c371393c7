"""Record every model call a run makes, to compare two runs step by step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..protocols import Models

METHODS = {
    "vlm": ("generate", "score"),
    "inpainter": ("inpaint",),
    "detector": ("detect",),
    "segmenter": ("segment",),
    "clip": ("image_text_similarity", "similarity_maps"),
    "miner": ("mine",),
}


@dataclass
class Call:
    role: str
    method: str
    args: tuple
    result: Any


@dataclass
class Recorder:
    """Wraps each role of ``models`` so that every call is appended to ``calls``."""

    models: Models
    calls: list[Call] = field(default_factory=list)

    def wrapped(self) -> Models:
        return Models(**{role: _Proxy(getattr(self.models, role), role, self.calls) for role in METHODS})

    def of(self, role: str, method: str) -> list[Call]:
        return [c for c in self.calls if c.role == role and c.method == method]


class _Proxy:
    def __init__(self, target: Any, role: str, log: list[Call]) -> None:
        self._target, self._role, self._log = target, role, log

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if name not in METHODS[self._role]:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            self._log.append(Call(self._role, name, args + tuple(kwargs.values()), result))
            return result

        return call


def same(a: Any, b: Any) -> bool:
    """Deep equality for call arguments/results: arrays by value, dataclasses by fields."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if hasattr(a, "__dataclass_fields__") and type(a) is type(b):
        return all(same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    return a == b
