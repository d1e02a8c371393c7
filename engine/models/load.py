"""Loading the five roles from local paths, offline, through each backend's ``load``.

The tiny zoo and a user's real checkpoints go through exactly this code. Backends are
imported lazily so that ``import int_engine`` stays light and an optional backend's
missing package only matters when that backend is chosen.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from ..config import ROLES, ModelsConfig
from ..errors import ConfigError, ModelLoadError
from ..protocols import Models

# (role, backend name) -> "module:Class" under int_engine.backends
BACKENDS: dict[tuple[str, str], str] = {
    ("vlm", "hf"): "vlm_hf:HFLlavaVLM",
    ("vlm", "vllm"): "vlm_vllm:VLLMLlavaVLM",
    ("inpaint", "sd"): "inpaint_sd:SDInpainter",
    ("inpaint", "telea"): "inpaint_telea:TeleaInpainter",
    ("detector", "gdino"): "detect_gdino:GroundingDinoDetector",
    ("segmenter", "sam"): "segment_sam:SamSegmenter",
    ("clip", "open_clip"): "clip_open:OpenClipModel",
}
PATHLESS = {("inpaint", "telea")}
FIELD = {"vlm": "vlm", "inpaint": "inpainter", "detector": "detector", "segmenter": "segmenter", "clip": "clip"}


def offline() -> None:
    """Switch the Hugging Face hub off for this process: nothing is ever downloaded."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    quiet_libraries()


def quiet_libraries() -> None:
    """No per-model progress bars from the model libraries: the CLI has its own."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()


def backend_class(role: str, backend: str) -> type:
    key = (role, backend)
    if key not in BACKENDS:
        known = sorted(b for r, b in BACKENDS if r == role)
        raise ConfigError(f"{role}: unknown backend {backend!r}; available: {', '.join(known)}")
    module, cls = BACKENDS[key].split(":")
    try:
        mod = importlib.import_module(f"int_engine.backends.{module}")
    except ImportError as err:
        raise ModelLoadError(f"{role}: backend {backend!r} needs a package that is not installed: {err}") from None
    return getattr(mod, cls)


def role_path(cfg: ModelsConfig, role: str, models_dir: str | Path | None) -> Path | None:
    """The role's path: its own ``path`` if set, else ``<models_dir>/<role>``."""
    rc = cfg.role(role)
    if rc.path:
        return Path(rc.path).expanduser()
    if (role, rc.backend) in PATHLESS:
        return None
    if models_dir is None:
        raise ConfigError(f"{role}: no model path: set models.{role}.path or pass a models directory")
    return Path(models_dir).expanduser() / role


def load_role(cfg: ModelsConfig, role: str, models_dir: str | Path | None = None):
    rc = cfg.role(role)
    cls = backend_class(role, rc.backend)
    return cls.load(role_path(cfg, role, models_dir), device=cfg.device, dtype=cfg.dtype, **rc.options)


def load_models(cfg: ModelsConfig, models_dir: str | Path | None = None) -> Models:
    """Load every role (offline). Raises ModelLoadError naming the role and path on failure."""
    offline()
    return Models(**{FIELD[role]: load_role(cfg, role, models_dir) for role in ROLES})
