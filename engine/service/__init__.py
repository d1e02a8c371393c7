"""int-engine as an HTTP service (``int-engine serve``; the ``[serve]`` extra)."""

from .app import ServiceSettings, create_app, result_json
from .upload import Limits, RequestError

__all__ = ["ServiceSettings", "create_app", "result_json", "Limits", "RequestError", "serve"]


def serve(*args, **kwargs) -> int:
    from .server import serve as _serve

    return _serve(*args, **kwargs)
