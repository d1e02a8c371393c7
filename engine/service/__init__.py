"""int-engine as an HTTP service (``int-engine serve``; the ``[serve]`` extra).

Names load on first use: Ray Serve's proxy imports this package for its middleware only, and
``app`` pulls in torch (~640 MiB in that process) through the engine."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_WHERE = {
    "ServiceSettings": "app",
    "create_app": "app",
    "result_json": "app",
    "Limits": "upload",
    "RequestError": "upload",
    "serve": "server",
}
__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(name)
    return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
