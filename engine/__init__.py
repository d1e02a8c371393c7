"""int_engine: an inference engine for INT (instance-specific negative mining for
task-generic promptable segmentation). See README.md."""

from .config import EngineConfig, ModelsConfig, RoleConfig, apply_overrides, preset_config
from .errors import ConfigError, ImageError, IntEngineError, ModelLoadError

__version__ = "0.1.0"


def __getattr__(name: str):
    # IntEngine pulls in torch and the model libraries; load it only when asked for.
    if name == "IntEngine":
        from .api import IntEngine

        return IntEngine
    raise AttributeError(name)


__all__ = [
    "EngineConfig",
    "ModelsConfig",
    "RoleConfig",
    "apply_overrides",
    "preset_config",
    "ConfigError",
    "ImageError",
    "IntEngineError",
    "ModelLoadError",
    "IntEngine",
    "__version__",
]
