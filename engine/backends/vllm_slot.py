"""The one in-process vLLM engine a process may hold, shared by the vLLM backends (LLaVA, Qwen-VL).

vLLM's in-process engine sets process-wide state (its platform, distributed groups), so a second
one in the same process breaks the first; ``multiprocessing=True`` engines run in their own process
and need no slot.
"""

from __future__ import annotations

from ..errors import ConfigError

_holder: int | None = None


def claim(role: str, owner: object) -> None:
    """Take the slot for ``owner``; ConfigError naming ``role`` when another engine holds it."""
    global _holder
    require_free(role)
    _holder = id(owner)


def require_free(role: str) -> None:
    """ConfigError unless the slot is free (checked before a slow engine start, not only after)."""
    if _holder is not None:
        raise ConfigError(
            f"{role}: another in-process vLLM engine is open in this process; close() it first, or load with multiprocessing=True"
        )


def release(owner: object) -> None:
    """Free the slot if ``owner`` holds it (idempotent)."""
    global _holder
    if _holder == id(owner):
        _holder = None


def held() -> bool:
    return _holder is not None
