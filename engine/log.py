"""The ``int_engine`` logger: one named logger for the library, configured only by the CLI.

A service embedding the engine configures logging its own way (``logging.getLogger("int_engine")``);
the CLI sets the level from ``-v`` / ``--log-level`` or ``INT_ENGINE_LOG_LEVEL`` and writes lines
through tqdm, so that a progress bar and log lines do not garble each other.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator

LOGGER_NAME = "int_engine"
ENV_LEVEL = "INT_ENGINE_LOG_LEVEL"
LEVELS = ("debug", "info", "warning", "error")


def get_logger(name: str | None = None) -> logging.Logger:
    """``int_engine`` or its child ``int_engine.<name>``."""
    return logging.getLogger(LOGGER_NAME if not name else f"{LOGGER_NAME}.{name}")


class _TqdmHandler(logging.Handler):
    """Writes each record with ``tqdm.write`` (to stderr), above any progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=_stderr())
        except Exception:  # logging must never take the run down; report as logging does
            self.handleError(record)


def _stderr():
    import sys

    return sys.stderr


def resolve_level(level: str | None, verbose: int = 0) -> int:
    """The CLI's level: ``--log-level``, else ``-v`` (info) / ``-vv`` (debug), else
    ``INT_ENGINE_LOG_LEVEL``, else warning. Raises ValueError for an unknown name."""
    name = level or ({1: "info"}.get(verbose) or ("debug" if verbose >= 2 else None)) or os.environ.get(ENV_LEVEL) or "warning"
    if name.lower() not in LEVELS:
        raise ValueError(f"unknown log level {name!r}; expected one of {', '.join(LEVELS)}")
    return getattr(logging, name.upper())


@contextmanager
def cli_logging(level: int) -> Iterator[None]:
    """Route the ``int_engine`` logger to stderr through tqdm at ``level`` while the CLI runs,
    then put it back as it was: ``main()`` is also called in-process (tests, notebooks), where
    the logger must keep propagating to the host's handlers afterwards."""
    logger = get_logger()
    saved = logger.level, logger.propagate
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logger.setLevel(level)
    logger.addHandler(handler)
    logger.propagate = False  # the CLI's handler is the only one: no second copy via the root logger
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
