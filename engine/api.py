"""The user-facing entry point: ``IntEngine`` — configuration and models in, masks out.

    from int_engine import IntEngine, EngineConfig
    engine = IntEngine(EngineConfig(task="polyp", iterations=6), models_dir="/ckpt/int")
    result = engine.segment("image.jpg")        # Result: soft, binary, trace
    result.save("out/image")                    # soft.png, binary.png, overlay.png, trace.json

Models are loaded once, in the constructor; ``segment`` only runs them.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable, Iterator, Mapping, Union

import numpy as np
from PIL import Image

from . import pipeline
from .calls import ROLE_FIELD
from .config import EngineConfig, request_config
from .core import EngineClosed, EngineCore
from .io import LoadedImage, from_pil, from_pixels, read_image
from .models.load import load_models
from .protocols import Models
from .result import IterationUpdate

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
        max_queue: requests waiting for admission at most (``submit`` beyond it raises
            ``EngineBusy``); images in flight are bounded by ``config.max_in_flight``.

    Every way in (``segment``, ``segment_many``, ``submit``, ``segment_async``) goes through one
    engine core (``int_engine.core``): a thread that owns the models and batches whatever is in
    flight, so calls from many threads or an event loop share the model batches.
    """

    def __init__(
        self,
        config: EngineConfig | None = None,
        models_dir: str | Path | None = None,
        models: Models | None = None,
        max_queue: int = 256,
    ) -> None:
        self.config = config or EngineConfig()
        self.models = models if models is not None else load_models(self.config.models, models_dir)
        self.max_queue = max_queue
        self._core: EngineCore | None = None
        self._core_lock = threading.Lock()
        self._closed = False

    @property
    def core(self) -> EngineCore:
        """The engine core, started on first use; EngineClosed after ``close``."""
        with self._core_lock:
            if self._closed:
                raise EngineClosed("this IntEngine is closed")
            if self._core is None:
                self._core = EngineCore(self.models, self.config, self.max_queue)
            return self._core

    def close(self, drain: bool = True) -> None:
        """Stop the core (finishing queued and in-flight images with ``drain``, else cancelling
        them) and release models that hold engines or processes (the vLLM backend); idempotent."""
        with self._core_lock:
            core, self._core, self._closed = self._core, None, True
        if core is not None:
            core.close(drain=drain)
        for field in ROLE_FIELD.values():
            close = getattr(getattr(self.models, field), "close", None)
            if callable(close):
                close()

    def __enter__(self) -> "IntEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, path: str | Path, keep_original: bool = False) -> LoadedImage:
        """The image file at ``path`` at this engine's working size (``config.max_side``,
        ``min_side``, ``max_aspect``); ``keep_original`` also keeps its decoded pixels, uint8
        [H, W, 3] at the stored size, as ``.original`` (for overlays). Raises ImageError."""
        return read_image(
            path, self.config.max_side, self.config.min_side, keep_original=keep_original, max_aspect=self.config.max_aspect
        )

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
        raise TypeError(
            f"{source or 'image'}: expected a path, uint8 [H, W, 3] array, PIL image or LoadedImage, got {type(image).__name__}"
        )

    def submit(
        self,
        image: ImageInput,
        source: str | None = None,
        block: bool = False,
        on_iteration: Callable[[IterationUpdate], None] | None = None,
        **options: Any,
    ) -> "Future[pipeline.Result]":
        """Queue one image; its ``Future`` completes with the ``Result`` (or the image's error).

        ``options`` are this request's algorithm settings (``config.REQUEST_OPTIONS``: task,
        preset, iterations, seed, ablation), applied to the engine's config for this image only;
        bad ones raise ConfigError here. A path is read here, so a missing file raises at once.
        Raises ``EngineBusy`` when the queue is full (``block=True`` waits for room instead) and
        ``EngineClosed`` after ``close``. ``future.cancel()`` takes the image out at the next tick.
        ``on_iteration`` gets each iteration's ``IterationUpdate`` as it lands, on the core's
        thread (keep it short: the next tick waits for it; what it raises fails the image).
        """
        cfg = request_config(self.config, **options) if options else self.config
        loaded = self.load(image, source)
        return self.core.submit(lambda: _steps(loaded, cfg, on_iteration), block=block)

    def iterations(self, image: ImageInput, **options: Any) -> "IterationStream":
        """For asyncio, each iteration as it lands: ``async for item in engine.iterations(image)``
        yields an ``IterationUpdate`` per iteration run, then the ``Result`` (eq 13's choice), and
        raises the image's error if it fails. The image is submitted here (call it on the event
        loop's thread), so a full queue or a bad option raises before anything is streamed.
        Leaving the loop early (``break``, a cancelled task, a client gone) cancels the request:
        the image leaves the core at its next tick."""
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue = asyncio.Queue()
        future = self.submit(image, on_iteration=lambda u: loop.call_soon_threadsafe(updates.put_nowait, u), **options)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(updates.put_nowait, None))
        return IterationStream(future, updates)

    async def segment_async(self, image: ImageInput, **options: Any) -> pipeline.Result:
        """``submit`` for asyncio: awaits the result; cancelling the awaiting task (a timeout, a
        client gone) cancels the request in the core."""
        return await asyncio.wrap_future(self.submit(image, **options))

    def segment(self, image: ImageInput, **options: Any) -> pipeline.Result:
        """Segment one image: a path, uint8 [H, W, 3] RGB pixels, a PIL image or a loaded image
        (pixels get a file's working size: an array and its PNG give the same masks). Blocks;
        shares the core's batches with whatever else is in flight."""
        return self.submit(image, block=True, **options).result()

    def segment_many(
        self,
        images: Iterable[ImageInput | tuple[str, Any]] | Mapping[str, Any],
        load: Callable[[Any, str], LoadedImage] | None = None,
        on_iteration: Callable[[str, IterationUpdate], None] | None = None,
    ) -> Iterator[tuple[str, pipeline.Result | Exception]]:
        """Segment many images through the scheduler (``config.max_in_flight`` at once, one
        batch per model per tick). Yields ``(key, Result)`` as images finish, in completion
        order, or ``(key, error)`` for an image that cannot be read or fails; the others go on.

        Items are paths, uint8 [H, W, 3] RGB arrays, PIL images, loaded images, or ``(name,
        image)`` pairs; a mapping gives ``name -> image``. The key is the name when given, else
        the path (``str(path)``; a loaded image's ``path``), else, for an array or a PIL image, its
        index in ``images`` as a string (``"0"``, ``"1"``, ...); it is also the trace's ``source``.
        Images are read or converted only when admitted, so a bad one fails alone.

        ``load(image, key) -> LoadedImage`` replaces ``IntEngine.load`` for turning an item into
        the pipeline's input; it is called on the core's thread when the item is admitted, and
        what it raises is that item's error. With it, a named pair's image may be anything it
        takes: e.g. ``self.read(path, keep_original=True)`` to keep the pixels for overlays, or
        a reader that checks a ground truth first.

        ``on_iteration(key, update)`` gets each image's iterations as they land (``submit``'s).
        """
        items = images.items() if isinstance(images, Mapping) else images
        read = load or self.load
        cfg = self.config

        def job(index: int, item: Any) -> tuple[str, Callable[[], pipeline.Steps]]:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                key, image = item
            else:
                image = item
                key = item.path if isinstance(item, LoadedImage) else str(item) if isinstance(item, (str, Path)) else str(index)
            each = None if on_iteration is None else (lambda update: on_iteration(key, update))
            return key, lambda: _steps(read(image, key), cfg, each)

        yield from self.run_jobs(job(i, item) for i, item in enumerate(items))

    def run_jobs(self, jobs: Iterable[tuple[Any, Callable[[], Any]]]) -> Iterator[tuple[Any, pipeline.Result | Exception]]:
        """Run ``(key, make_steps)`` jobs (``make_steps`` returns ``pipeline.image_steps(...)``,
        called on the core's thread when the job is admitted) through the core; yields ``(key,
        outcome)`` in completion order. At most ``max_in_flight`` + ``max_queue`` jobs are
        submitted ahead, so a dataset's images are read as they are admitted."""
        pending: dict[Future, Any] = {}
        source = iter(jobs)
        ahead = self.config.max_in_flight + max(1, min(self.max_queue, self.config.max_in_flight))
        exhausted = False
        while pending or not exhausted:
            while not exhausted and len(pending) < ahead:
                try:
                    key, make = next(source)
                except StopIteration:
                    exhausted = True
                    break
                pending[self.core.submit(make, block=True)] = key
            if not pending:
                break
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in done:
                key = pending.pop(future)
                error = future.exception()
                yield key, (error if error is not None else future.result())
        self.last_stats = self.core.loop.stats


class IterationStream:
    """An image's iterations as they land (``IntEngine.iterations``): async-iterable, once."""

    def __init__(self, future: Future, updates: asyncio.Queue) -> None:
        self.future, self._updates = future, updates

    def __aiter__(self) -> AsyncIterator[IterationUpdate | pipeline.Result]:
        return self._items()

    async def _items(self) -> AsyncIterator[IterationUpdate | pipeline.Result]:
        try:
            while (update := await self._updates.get()) is not None:
                yield update
            yield self.future.result()
        finally:
            self.future.cancel()  # a no-op once it is done

    def cancel(self) -> None:
        """Give up on the image: it leaves the core at its next tick."""
        self.future.cancel()


def _steps(
    image: LoadedImage, cfg: EngineConfig, on_iteration: Callable[[IterationUpdate], None] | None = None
) -> pipeline.Steps:
    """``image``'s step generator (``pipeline.image_steps``) under ``cfg``: the one place outside
    the pipeline and the scheduler where an image becomes steps (masks at its original size)."""
    return pipeline.image_steps(image.pixels, cfg, image.path, image.original_size, image.conversions, on_iteration)
