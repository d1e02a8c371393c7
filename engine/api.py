"""The user-facing entry point: ``IntEngine`` — configuration and models in, masks out.

    from int_engine import IntEngine, EngineConfig
    engine = IntEngine(EngineConfig(task="polyp", iterations=6), models_dir="/ckpt/int")
    result = engine.segment("image.jpg")        # Result: soft, binary, trace

Models are loaded once, in the constructor; ``segment`` only runs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from . import pipeline
from .config import EngineConfig
from .errors import IntEngineError
from .io import LoadedImage, read_image
from .models.load import load_models
from .protocols import Models


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

    def read(self, path: str | Path) -> LoadedImage:
        return read_image(path, self.config.max_side, self.config.min_side)

    def segment(self, image: str | Path | np.ndarray | LoadedImage) -> pipeline.Result:
        """Segment one image (a path, a loaded image, or uint8 [H, W, 3] RGB pixels)."""
        torch.manual_seed(self.config.seed)
        if isinstance(image, (str, Path)):
            image = self.read(image)
        if isinstance(image, LoadedImage):
            return pipeline.segment_image(image, self.models, self.config)
        arr = np.asarray(image)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"expected uint8 [H, W, 3] RGB pixels, got {arr.dtype} {arr.shape}")
        return pipeline.run(arr, self.models, self.config)

    def segment_many(self, images: Iterable[str | Path]) -> Iterator[tuple[str, pipeline.Result | IntEngineError]]:
        """Segment each path in turn; a bad image yields its error and the others go on."""
        for path in images:
            try:
                yield str(path), self.segment(path)
            except IntEngineError as err:
                yield str(path), err
