"""Where the default tiny zoo lives, and building it on first use."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from platformdirs import user_cache_dir

from .zoo import ZOO_VERSION, build_tiny_zoo, is_complete_zoo

TINY_WARNING = (
    "warning: using the tiny random-weight model zoo at {path}: its masks are meaningless; "
    "pass --models DIR (or models.<role>.path in --config) to use real checkpoints"
)


def cache_root() -> Path:
    """``$INT_ENGINE_CACHE``, else the user cache dir: the tiny zoo and generated data live here."""
    return Path(os.environ.get("INT_ENGINE_CACHE") or user_cache_dir("int-engine"))


def default_zoo_dir(seed: int = 0) -> Path:
    return cache_root() / f"tiny-zoo-v{ZOO_VERSION}-seed{seed}"


def ensure_tiny_zoo(path: str | Path | None = None, seed: int = 0) -> Path:
    """The tiny zoo's directory, built first if it is missing or incomplete.

    It is built in a temporary sibling directory and renamed into place, so an
    interrupted build never leaves a half-written zoo that looks complete.
    """
    target = Path(path) if path else default_zoo_dir(seed)
    if is_complete_zoo(target, seed):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".building-", dir=target.parent))
    try:
        build_tiny_zoo(tmp, seed=seed)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
