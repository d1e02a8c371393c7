"""The user-facing entry point: ``IntEngine`` — configuration and models in, masks out.

    from int_engine import IntEngine, EngineConfig
    engine = IntEngine(EngineConfig(task="polyp", iterations=6), models_dir="/ckpt/int")
    result = engine.segment("image.jpg")        # Result: soft, binary, trace
    result.save("out/image")                    # soft.png, binary.png, overlay.png, trace.json

Models are loaded once, in the constructor; ``segment`` only runs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Union

import numpy as np
import torch
from PIL import Image

from . import pipeline
from .config import EngineConfig
from .io import LoadedImage, from_pil, from_pixels, read_image
from .models.load import load_models
from .protocols import Models
from .scheduler import Scheduler

# what segment accepts: a path, uint8 [H, W, 3] RGB pixels, a PIL image, or an image already loaded
ImageInput = Union[str, Path, np.ndarray, Image.Image, LoadedImage]


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

    def load(self, image: ImageInput, source: str | None = None) -> LoadedImage:
        """Any accepted input as the pipeline's ``LoadedImage``: a path is read, uint8 [H, W, 3]
        RGB pixels and PIL images (converted as a file would be) get a file's working size, so an
        array, its PIL image and its PNG give the same masks. ``source`` names pixels in the trace
        and in errors."""
        if isinstance(image, LoadedImage):
            return image
        if isinstance(image, (str, Path)):
            return self.read(image)
        c = self.config
        if isinstance(image, Image.Image):
            return from_pil(image, c.max_side, c.min_side, c.max_aspect, source or "<PIL image>")
        if isinstance(image, np.ndarray):
            return from_pixels(image, c.max_side, c.min_side, c.max_aspect, source or "<array>")
        raise TypeError(f"{source or 'image'}: expected a path, uint8 [H, W, 3] array, PIL image or LoadedImage, "
                        f"got {type(image).__name__}")

    def segment(self, image: ImageInput) -> pipeline.Result:
        """Segment one image: a path, uint8 [H, W, 3] RGB pixels, a PIL image or a loaded image."""
        torch.manual_seed(self.config.seed)
        # pixels get a file's working size: an array and its PNG give the same masks, and a
        # 1 x 20000 strip is not padded to 5000 x 20000 at full resolution
        return pipeline.segment_image(self.load(image), self.models, self.config)

    def segment_many(self, images: Iterable[ImageInput | tuple[str, ImageInput]] | Mapping[str, ImageInput]
                     ) -> Iterator[tuple[str, pipeline.Result | Exception]]:
        """Segment many images through the scheduler (``config.max_in_flight`` at once, one
        batch per model per tick). Yields ``(key, Result)`` as images finish, in completion
        order, or ``(key, error)`` for an image that cannot be read or fails; the others go on.

        Items are paths, uint8 [H, W, 3] RGB arrays, PIL images, loaded images, or ``(name,
        image)`` pairs; a mapping gives ``name -> image``. The key is the name when given, else
        the path (``str(path)``; a loaded image's ``path``), else, for an array or a PIL image, its
        index in ``images`` as a string (``"0"``, ``"1"``, ...); it is also the trace's ``source``.
        Images are read or converted only when admitted, so a bad one fails alone.
        """
        items = images.items() if isinstance(images, Mapping) else images

        def job(index: int, item: ImageInput | tuple[str, ImageInput]) -> tuple[str, Callable[[], Any]]:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                key, image = item
            else:
                image = item
                key = item.path if isinstance(item, LoadedImage) else str(item) if isinstance(item, (str, Path)) else str(index)

            def make():
                img = self.load(image, key)
                return pipeline.image_steps(img.pixels, self.config, img.path, img.original_size, img.conversions)

            return key, make

        yield from self.run_jobs(job(i, item) for i, item in enumerate(items))

    def run_jobs(self, jobs: Iterable[tuple[Any, Callable[[], Any]]]) -> Iterator[tuple[Any, pipeline.Result | Exception]]:
        """The scheduler over ``(key, make_steps)`` jobs, ``make_steps`` returning
        ``pipeline.image_steps(...)``; called only when the job is admitted."""
        torch.manual_seed(self.config.seed)
        scheduler = Scheduler(self.models, self.config)
        yield from scheduler.run(jobs)
        self.last_stats = scheduler.stats
