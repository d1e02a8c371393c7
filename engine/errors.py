"""One exception type per kind of failure; each message names the file, role or path."""


class IntEngineError(Exception):
    """Base class: the CLI turns any of these into one line and a non-zero exit code."""


class ImageError(IntEngineError):
    """An input image cannot be read or used; the message starts with the file name."""


class ModelLoadError(IntEngineError):
    """A model cannot be loaded; the message names the role, the path and what was expected."""


class ConfigError(IntEngineError):
    """A configuration value is missing, unknown or out of range."""
