"""Checks shared by the loaders: a model path is a local directory holding what its format needs."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..errors import ModelLoadError


def require_files(role: str, path: str | Path, expected: Iterable[str], fmt: str) -> Path:
    """Return ``path`` as a Path if it is a directory containing every name in ``expected``
    (a name may be ``a|b`` for alternatives); otherwise raise ModelLoadError naming the role,
    the path and the files the format ``fmt`` needs."""
    p = Path(path).expanduser()
    expected = list(expected)
    if not p.exists():
        raise ModelLoadError(f"{role}: model path {p} does not exist (expected a {fmt} directory with {', '.join(expected)})")
    if not p.is_dir():
        raise ModelLoadError(f"{role}: model path {p} is not a directory (expected a {fmt} directory with {', '.join(expected)})")
    missing = [name for name in expected if not any((p / alt).exists() for alt in name.split("|"))]
    if missing:
        raise ModelLoadError(f"{role}: {p} is not a {fmt} directory: missing {', '.join(missing)}")
    return p
