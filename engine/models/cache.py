"""Where the default tiny zoo lives, and building it on first use."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from platformdirs import user_cache_dir

from ..log import get_logger
from .zoo import ZOO_VERSION, build_tiny_zoo, is_complete_zoo

log = get_logger("models")

TINY_WARNING = (
    "warning: using the tiny random-weight model zoo at {path}: its masks are meaningless; "
    "pass --models DIR (or models.<role>.path in --config) to use real checkpoints"
)


def cache_root() -> Path:
    """``$INT_ENGINE_CACHE``, else the user cache dir: the tiny zoo and generated data live here."""
    return Path(os.environ.get("INT_ENGINE_CACHE") or user_cache_dir("int-engine"))


def default_zoo_dir(seed: int = 0, lineup: str = "paper") -> Path:
    prefix = "tiny-zoo" if lineup == "paper" else f"tiny-{lineup}-zoo"
    return cache_root() / f"{prefix}-v{ZOO_VERSION}-seed{seed}"


def ensure_tiny_zoo(path: str | Path | None = None, seed: int = 0, lineup: str = "paper") -> Path:
    """The tiny zoo's directory (of ``lineup``: ``zoo.LINEUPS``), built first if it is missing or incomplete.

    It is built in a temporary sibling directory and renamed into place, so an
    interrupted build never leaves a half-written zoo that looks complete.

    A build is logged (logger ``int_engine.models``): an INFO line as it starts, so a first
    run that pauses says why, and a WARNING line with where and how long once done, since a
    build in the middle of a run is worth seeing at the CLI's default level.
    """
    target = Path(path) if path else default_zoo_dir(seed, lineup)
    if is_complete_zoo(target, seed, lineup=lineup):
        log.debug("tiny zoo: using %s", target)
        return target
    log.info("tiny zoo: none at %s; building it (first use, once)", target)
    start = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".building-", dir=target.parent))
    try:
        build_tiny_zoo(tmp, seed=seed, lineup=lineup)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.warning("tiny zoo: built at %s in %.1fs (first use; later runs reuse it)", target, time.perf_counter() - start)
    return target
