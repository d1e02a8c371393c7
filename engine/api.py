"""The user-facing entry point: ``IntEngine`` — configuration and models in, masks out.

    from int_engine import IntEngine, EngineConfig
    engine = IntEngine(EngineConfig(task="polyp", iterations=6), models_dir="/ckpt/int")
    result = engine.segment("image.jpg")        # Result: soft, binary, trace

Models are loaded once, in the constructor; ``segment`` only runs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from . import pipeline
from .config import EngineConfig
from .io import LoadedImage, from_pixels, read_image
from .models.load import load_models
from .protocols import Models
from .scheduler import Scheduler


class IntEngine:
    """INT with its five models loaded.

    Args:
        config: the algorithm and model settings (defaults: the paper's, COD task).
        models_dir: a directory holding ``vlm/ inpaint/ detector/ segmenter/ clip/`` for roles
            whose ``config.models.<role>.path`` is unset.
        models: already-loaded models (e.g. shared between engines, or scripted ones in tests);
            when given, nothing is loaded.
    """

    def __init__(self, config: EngineConfig | None = None, models_dir: str | Path | None = None, models: Models | None = None) -> None:
        self.config = config or EngineConfig()
        self.models = models if models is not None else load_models(self.config.models, models_dir)

    def close(self) -> None:
        """Release models that hold engines or processes (the vLLM backend); idempotent."""
        for role in ("vlm", "inpainter", "detector", "segmenter", "clip"):
            close = getattr(getattr(self.models, role), "close", None)
            if callable(close):
                close()

    def __enter__(self) -> "IntEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, path: str | Path) -> LoadedImage:
        return read_image(path, self.config.max_side, self.config.min_side, max_aspect=self.config.max_aspect)

    def segment(self, image: str | Path | np.ndarray | LoadedImage) -> pipeline.Result:
        """Segment one image (a path, a loaded image, or uint8 [H, W, 3] RGB pixels)."""
        torch.manual_seed(self.config.seed)
        if isinstance(image, (str, Path)):
            image = self.read(image)
        if isinstance(image, LoadedImage):
            return pipeline.segment_image(image, self.models, self.config)
        # pixels get a file's working size: an array and its PNG give the same masks, and a
        # 1 x 20000 strip is not padded to 5000 x 20000 at full resolution
        loaded = from_pixels(np.asarray(image), self.config.max_side, self.config.min_side, self.config.max_aspect)
        return pipeline.segment_image(loaded, self.models, self.config)

    def segment_many(self, images: Iterable[str | Path | LoadedImage]) -> Iterator[tuple[str, pipeline.Result | Exception]]:
        """Segment many images through the scheduler (``config.max_in_flight`` at once, one
        batch per model per tick). Yields ``(path, Result)`` as images finish, in completion
        order, or ``(path, error)`` for an image that cannot be read or fails; the others go on."""
        def job(item: str | Path | LoadedImage):
            if isinstance(item, LoadedImage):
                return item.path, lambda: pipeline.image_steps(item.pixels, self.config, item.path, item.original_size, item.conversions)

            def make():
                img = self.read(item)
                return pipeline.image_steps(img.pixels, self.config, img.path, img.original_size, img.conversions)

            return str(item), make

        yield from self.run_jobs(job(item) for item in images)

    def run_jobs(self, jobs: Iterable[tuple[Any, Callable[[], Any]]]) -> Iterator[tuple[Any, pipeline.Result | Exception]]:
        """The scheduler over ``(key, make_steps)`` jobs, ``make_steps`` returning
        ``pipeline.image_steps(...)``; called only when the job is admitted."""
        torch.manual_seed(self.config.seed)
        scheduler = Scheduler(self.models, self.config)
        yield from scheduler.run(jobs)
        self.last_stats = scheduler.stats
