"""Loading the five roles from local paths (or the local Hugging Face cache), offline, through
each backend's ``load``.

The tiny zoo and a user's real checkpoints go through exactly this code. Backends are
imported lazily so that ``import int_engine`` stays light and an optional backend's
missing package only matters when that backend is chosen.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import time
import types
import typing
from pathlib import Path
from typing import Any

from ..calls import ROLE_FIELD
from ..config import ModelsConfig
from ..errors import ConfigError, ModelLoadError
from ..log import get_logger
from ..protocols import Models
from .hub import looks_like_repo_id, resolve_repo

log = get_logger("models")

# (role, backend name) -> "module:Class" under int_engine.backends
BACKENDS: dict[tuple[str, str], str] = {
    ("vlm", "hf"): "vlm_hf:HFLlavaVLM",
    ("vlm", "vllm"): "vlm_vllm:VLLMLlavaVLM",
    ("vlm", "openai"): "vlm_openai:OpenAILlavaVLM",
    ("vlm", "qwen"): "vlm_qwen:HFQwenVLM",
    ("vlm", "qwen_vllm"): "vlm_qwen_vllm:VLLMQwenVLM",
    ("inpaint", "sd"): "inpaint_sd:SDInpainter",
    ("inpaint", "diffusers"): "inpaint_diffusers:DiffusersInpainter",
    ("inpaint", "telea"): "inpaint_telea:TeleaInpainter",
    ("detector", "gdino"): "detect_gdino:GroundingDinoDetector",
    ("segmenter", "sam"): "segment_sam:SamSegmenter",
    ("segmenter", "sam2"): "segment_sam2:Sam2Segmenter",
    ("clip", "open_clip"): "clip_open:OpenClipModel",
    ("concept", "sam3"): "segment_sam3:Sam3ConceptSegmenter",
}
PATHLESS = {("inpaint", "telea")}


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
    """The role's path: its own ``path`` if set, else ``<models_dir>/<role>``.

    A ``path`` that exists locally is used as is; one that does not but reads as a Hugging
    Face repo id (``org/name[@revision]``) is that repo's snapshot in the local hub cache
    (``hub.resolve_repo``: offline, ModelLoadError if it is not cached). Any other missing
    path is returned unchanged for the backend to report.
    """
    rc = cfg.role(role)
    if rc.path:
        local = Path(rc.path).expanduser()
        if not local.exists() and looks_like_repo_id(rc.path):
            return resolve_repo(role, rc.path)
        return local
    if (role, rc.backend) in PATHLESS:
        return None
    if models_dir is None:
        raise ConfigError(f"{role}: no model path: set models.{role}.path or pass a models directory")
    return Path(models_dir).expanduser() / role


# Parameters of every backend's ``load`` that come from ModelsConfig itself, not from options.
COMMON_PARAMS = ("path", "device", "dtype")


def backend_options(cls: type) -> dict[str, Any]:
    """The options a backend class's ``load`` takes, name -> expected type.

    Read from ``load``'s own signature (its parameters after path, device, dtype) so that the
    check cannot drift from the backend; a ``load`` that takes ``**options`` must say which
    through a classmethod ``option_types()`` instead, or nothing would be refused.
    """
    hook = getattr(cls, "option_types", None)
    if hook is not None:
        return dict(hook())
    params = inspect.signature(cls.load).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        raise TypeError(f"{cls.__name__}.load takes **options but has no option_types() hook")
    hints = typing.get_type_hints(cls.load)
    return {p.name: hints.get(p.name, Any) for p in params if p.name not in COMMON_PARAMS}


def _kinds(expected: Any) -> tuple[Any, ...]:
    """The alternatives of an annotation: ``int | None`` -> (int, NoneType); ``int`` -> (int,)."""
    union = isinstance(expected, types.UnionType) or typing.get_origin(expected) is typing.Union
    return typing.get_args(expected) if union else (expected,)


def _fits(kind: Any, value: Any) -> bool:
    """Whether ``value`` is a ``kind``. A float written ``3`` in YAML reads as an int, so ints
    pass for floats; ``True`` is an int to Python but never a count or a size here."""
    if kind is Any:
        return True
    if kind is type(None):
        return value is None
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, typing.get_origin(kind) or kind)


def _type_name(expected: Any) -> str:
    """``int | None`` -> ``int or None``, for messages."""
    return " or ".join("None" if k is type(None) else getattr(k, "__name__", str(k)) for k in _kinds(expected))


def check_role_options(cfg: ModelsConfig, role: str) -> None:
    """Raise ConfigError (one line) on an option the role's backend does not take or a value
    of the wrong type, before anything is loaded."""
    rc = cfg.role(role)
    allowed = backend_options(backend_class(role, rc.backend))
    where = f"models.{role}.options"
    for key, value in rc.options.items():
        if key not in allowed:
            close = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown option {key!r}{hint}; allowed: {', '.join(allowed) or '(none)'}")
        expected = allowed[key]
        if not any(_fits(kind, value) for kind in _kinds(expected)):
            raise ConfigError(f"{where}.{key}: expected {_type_name(expected)}, got {type(value).__name__} {value!r}")


def check_options(cfg: ModelsConfig) -> None:
    """Check every role's backend and options (see ``check_role_options``); loads nothing."""
    for role in cfg.roles:
        check_role_options(cfg, role)


def load_role(cfg: ModelsConfig, role: str, models_dir: str | Path | None = None):
    """Load one role through its backend's ``load``, its options checked first; logs one INFO
    line (role, backend, dtype, device, path, seconds) on logger ``int_engine.models``."""
    check_role_options(cfg, role)
    rc = cfg.role(role)
    cls = backend_class(role, rc.backend)
    path = role_path(cfg, role, models_dir)
    device, dtype = cfg.device_of(role), cfg.dtype_of(role)
    start = time.perf_counter()
    model = cls.load(path, device=device, dtype=dtype, **rc.options)
    seconds = time.perf_counter() - start
    # The config's own spelling too when it was a repo id: the snapshot path alone hides it.
    from_hub = path is not None and rc.path and path != Path(rc.path).expanduser()
    where = "(no model files)" if path is None else (f"{rc.path} -> {path}" if from_hub else str(path))
    # ``extra``: the same facts as fields, for a service that logs records as structured data.
    fields = {"role": role, "backend": rc.backend, "dtype": dtype, "device": device, "model_path": str(path), "seconds": seconds}
    log.info(
        "%-9s loaded in %.2fs: backend %s, dtype %s, device %s, path %s",
        role,
        seconds,
        rc.backend,
        dtype,
        device,
        where,
        extra=fields,
    )
    return model


def load_models(cfg: ModelsConfig, models_dir: str | Path | None = None) -> Models:
    """Load every role of ``cfg.roles`` (offline; ``concept`` only when it has a backend). Raises ConfigError on a bad option before any model is
    loaded, and ModelLoadError naming the role and path on a failed load."""
    check_options(cfg)
    offline()
    roles = {ROLE_FIELD[role]: load_role(cfg, role, models_dir) for role in cfg.roles}
    return Models(**roles, miner=load_miner(cfg))


def load_miner(cfg: ModelsConfig):
    """The ``Miner`` role where its scores come from: the VLM's device (the Triton kernel on CUDA)."""
    from ..kernels import TickMiner  # torch and Triton: only when models are loaded

    return TickMiner(cfg.device_of("vlm"))
