"""Shared by the service tests: scripted engines and scenes (images as upload bytes:
``int_engine.bench.serve_load.png_bytes``, the load bench's own)."""

from __future__ import annotations

import threading
import time

import numpy as np

from int_engine.api import IntEngine
from int_engine.config import EngineConfig
from int_engine.testing import ColourWorld, Thing, scripted_models
from int_engine.testing.scenes import compose, ellipse

H, W = 64, 80
WORLD = ColourWorld(
    [
        Thing("bark", (120, 80, 40), kind="background"),
        Thing("frog", (70, 140, 50)),
        Thing("snake", (150, 40, 150), confusions={"bark": 0.08}),
    ]
)


def scene(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = ellipse(H, W, rng.uniform(25, 55), rng.uniform(20, 44), rng.uniform(8, 16), rng.uniform(7, 12))
    return compose(WORLD, "bark", [("frog", mask)], H, W, seed=seed).image


class GatedSegmenter:
    """The scripted segmenter, held at a gate until the test opens it (images stay in flight)."""

    def __init__(self, inner, gate: threading.Event, delay: float = 0.0) -> None:
        self.inner, self.gate, self.delay = inner, gate, delay

    def segment(self, requests):
        self.gate.wait(60)
        time.sleep(self.delay)
        return self.inner.segment(requests)


def scripted_engine(gate: threading.Event | None = None, delay: float = 0.0, max_queue: int = 64, **config) -> IntEngine:
    models = scripted_models(WORLD)
    if gate is not None or delay:
        ev = gate or threading.Event()
        if gate is None:
            ev.set()
        models.segmenter = GatedSegmenter(models.segmenter, ev, delay)
    return IntEngine(EngineConfig(**{"iterations": 1, "task": "frog", **config}), models=models, max_queue=max_queue)
