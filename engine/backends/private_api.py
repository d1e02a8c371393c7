"""The guard every private name of a pinned library goes through (DESIGN: "another library's
private name lives only in one guarded shim").

A shim module (``open_clip_shim``, ``hf_cache_shim``) is the only file that names a library's
private symbol, and it reaches the symbol through ``private``: when the installed library no
longer has it, the call raises ``PrivateAPIError`` naming the symbol, the installed version and
the version the shim was written against, instead of an AttributeError deep inside a forward
pass (or, worse, a silently different computation). ``PINNED`` holds those versions, the ones
constraints.txt pins; tests/backends/test_private_api_shims.py checks that the installed versions are
these, that every shimmed symbol exists, and that no other file of the engine names one.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

# distribution -> the version its shim was written and tested against (constraints.txt's pin)
PINNED = {"open_clip_torch": "3.3.0", "transformers": "5.19.0"}


class PrivateAPIError(RuntimeError):
    """A pinned library lacks a private symbol (or internal API) one of the shims uses."""


def installed_version(dist: str) -> str:
    """The installed version of distribution ``dist``, or "not installed"."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def missing(dist: str, symbol: str) -> PrivateAPIError:
    """The error a shim raises when ``dist`` has no ``symbol``: what, which version, what to do."""
    return PrivateAPIError(
        f"{dist} {installed_version(dist)} has no {symbol}, which int-engine's shim for it uses "
        f"(written against {dist}=={PINNED[dist]}, the version constraints.txt pins): install that "
        "version, or port the shim (engine/backends/*_shim.py) to this one"
    )


def private(owner: Any, name: str, dist: str, symbol: str) -> Any:
    """``getattr(owner, name)``, ``name`` a private attribute of library ``dist`` (``symbol``: its
    full name for the message); ``PrivateAPIError`` when it is gone."""
    try:
        return getattr(owner, name)
    except AttributeError:
        raise missing(dist, symbol) from None
