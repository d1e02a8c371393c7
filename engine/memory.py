"""Give the heap memory freed by a scheduler tick back to the operating system.

glibc's malloc keeps what large tensors free inside its arenas for reuse, so over a long
run the process keeps the high-water mark of every tick's transient buffers: nothing leaks,
but resident memory creeps up with the number of images (``bench --dataset synthetic``,
tiny zoo: 1097 MB resident after 10 images, 1242 MB after 100). ``malloc_trim(0)`` after
each tick returns the free pages (the same run: 1022 MB after 10, 1045 MB after 100).
"""

from __future__ import annotations

import ctypes
import functools
import sys
from typing import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)  # the C library this process already runs on
    return getattr(libc, "malloc_trim", None)  # glibc has it; musl does not


def trim_heap() -> bool:
    """Return freed heap pages to the OS (glibc ``malloc_trim(0)``).

    False where the C library has no such call (macOS, Windows, musl): nothing to do there.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
