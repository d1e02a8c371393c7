"""Checking the five roles' models without loading any weights (``int-engine models check``).

For each role: its backend exists and can be imported, its options are ones the backend takes,
its path resolves (a local directory, or a repo id in the local Hugging Face cache) and holds
the files the backend's own ``load`` requires (the backend's ``EXPECTED`` / ``FORMAT`` constants
through ``require_files``, so the check cannot drift from the loader), its JSON files parse and a
sharded checkpoint's index names shards that exist. Weights are never read.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import ModelsConfig
from ..errors import ConfigError, ModelLoadError
from .checks import require_files
from .load import PATHLESS, backend_class, check_role_options, role_path

OK, MISSING, INVALID = "ok", "MISSING", "INVALID"


@dataclass(frozen=True)
class RoleCheck:
    """One role's verdict. ``status``: ``ok``; ``MISSING`` (path, file, cached repo or package
    absent, or a file unreadable); ``INVALID`` (the config is wrong for this role: an unknown
    backend or option). ``detail``: the format checked when ok, else the reason."""

    role: str
    backend: str
    status: str
    detail: str
    path: Path | None = None
    source: str | None = None  # the config's ``path`` when it was a hub repo id

    @property
    def ok(self) -> bool:
        return self.status == OK

    def line(self) -> str:
        """``vlm        ok       hf         /ckpt/llava  (llava-hf LlavaForConditionalGeneration)``."""
        head = f"{self.role:10s} {self.status:8s} {self.backend:10s}"
        if not self.ok or self.path is None:  # a reason, or a backend without model files
            return f"{head} {self.detail}"
        where = f"{self.source} -> {self.path}" if self.source else str(self.path)
        return f"{head} {where}  ({self.detail})"


# -- what each backend's load requires, read from the backend's own constants ----------------


def _present(role: str, path: Path, names: list[str] | tuple[str, ...], fmt: str) -> list[Path]:
    """The files ``names`` (``a|b`` = either) under ``path``, the first present alternative of
    each; the backend's own ``require_files`` message when one is missing."""
    root = require_files(role, path, names, fmt)
    return [next(root / alt for alt in name.split("|") if (root / alt).exists()) for name in names]


def _vlm_hf(role: str, path: Path, options: dict[str, Any]) -> tuple[str, list[Path]]:
    from ..backends import vlm_hf

    return vlm_hf.FORMAT, _present(role, path, vlm_hf.EXPECTED_FILES, vlm_hf.FORMAT)


def _vlm_vllm(role: str, path: Path, options: dict[str, Any]) -> tuple[str, list[Path]]:
    # find_spec, not import: importing vLLM takes seconds and starts its platform detection.
    if importlib.util.find_spec("vllm") is None:
        raise ModelLoadError(f"{role}: the vllm backend needs vLLM (pip install 'int-engine[vllm]'), not installed")
    from ..backends import vlm_vllm

    return vlm_vllm.FORMAT, _present(role, path, vlm_vllm.EXPECTED_FILES, vlm_vllm.FORMAT)


def _vlm_qwen_vllm(role: str, path: Path, options: dict[str, Any]) -> tuple[str, list[Path]]:
    if importlib.util.find_spec("vllm") is None:
        raise ModelLoadError(f"{role}: the qwen_vllm backend needs vLLM (pip install 'int-engine[vllm]'), not installed")
    return _hf_layout("vlm_qwen_vllm")(role, path, options)


def _vlm_openai(role: str, path: Path, options: dict[str, Any]) -> tuple[str, list[Path]]:
    # the weights are the server's: only LLaVA's config, tokenizer and processor files are local
    from ..backends import vlm_openai

    return vlm_openai.FORMAT, _present(role, path, vlm_openai.EXPECTED_FILES, vlm_openai.FORMAT)


def _inpaint_sd(role: str, path: Path, options: dict[str, Any]) -> tuple[str, list[Path]]:
    from ..backends import inpaint_sd

    return inpaint_sd.FORMAT, _present(role, path, inpaint_sd.EXPECTED, inpaint_sd.FORMAT)


def _detector_gdino(role: str, path: Path, options: dict[str, Any]) -> tuple[str, list[Path]]:
    from ..backends import detect_gdino

    return detect_gdino.FORMAT, _present(role, path, detect_gdino.EXPECTED, detect_gdino.FORMAT)


def _segmenter_sam(role: str, path: Path, options: dict[str, Any]) -> tuple[str, list[Path]]:
    # resolve_checkpoint is the loader's own choice of state dict and architecture: it reads
    # sam_arch.json (or the file name), never the weights.
    from ..backends import segment_sam

    pth, _ = segment_sam.resolve_checkpoint(path, options.get("checkpoint"))
    arch = pth.parent / segment_sam.ARCH_FILE
    return segment_sam.FORMAT, [pth] + ([arch] if arch.exists() else [])


def _clip_open(role: str, path: Path, options: dict[str, Any]) -> tuple[str, list[Path]]:
    from ..backends import clip_open

    return clip_open.FORMAT, _present(role, path, [clip_open.CONFIG_FILE, clip_open.WEIGHT_FILES], clip_open.FORMAT)


def _hf_layout(module: str) -> Callable[[str, Path, dict], tuple[str, list[Path]]]:
    """The check of a backend whose ``load`` requires its module's ``EXPECTED`` files."""

    def check(role: str, path: Path, options: dict[str, Any]) -> tuple[str, list[Path]]:
        backend = importlib.import_module(f"int_engine.backends.{module}")
        return backend.FORMAT, _present(role, path, backend.EXPECTED, backend.FORMAT)

    return check


# (role, backend) of load.BACKENDS -> its check: (role, path, options) -> (format, files checked).
FILE_CHECKS: dict[tuple[str, str], Callable[[str, Path, dict], tuple[str, list[Path]]]] = {
    ("vlm", "hf"): _vlm_hf,
    ("vlm", "vllm"): _vlm_vllm,
    ("vlm", "openai"): _vlm_openai,
    ("vlm", "qwen"): _hf_layout("vlm_qwen"),
    ("vlm", "qwen_vllm"): _vlm_qwen_vllm,
    ("inpaint", "sd"): _inpaint_sd,
    ("inpaint", "diffusers"): _hf_layout("inpaint_diffusers"),
    ("detector", "gdino"): _detector_gdino,
    ("segmenter", "sam"): _segmenter_sam,
    ("segmenter", "sam2"): _hf_layout("segment_sam2"),
    ("clip", "open_clip"): _clip_open,
    ("concept", "sam3"): _hf_layout("segment_sam3"),
}


def _model_types(role: str, backend: str) -> tuple[str, ...]:
    """The config.json ``model_type``s the backend reads (empty: not checked), so that a Qwen-VL
    folder under the LLaVA backend, or the paper's SAM under SAM 2.1's, is caught here."""
    if role == "vlm":
        from ..backends.qwen_boxes import FAMILIES

        return FAMILIES if backend.startswith("qwen") else ("llava",)
    if (role, backend) == ("segmenter", "sam2"):
        from ..backends.segment_sam2 import MODEL_TYPES

        return MODEL_TYPES
    if (role, backend) == ("inpaint", "sd"):  # model_index.json's pipeline class, for diffusers folders
        return ("StableDiffusionInpaintPipeline", "StableDiffusionPipeline")
    return ("grounding-dino",) if (role, backend) == ("detector", "gdino") else ()


def _model_type_matches(role: str, backend: str, path: Path) -> None:
    """ModelLoadError when the folder's config.json (a diffusers folder: model_index.json) names a
    model the backend does not read."""
    expected = _model_types(role, backend)
    diffusers = role == "inpaint"
    config = path / ("model_index.json" if diffusers else "config.json")
    if not expected or not config.is_file():
        return
    found = json.loads(config.read_text(encoding="utf-8")).get("_class_name" if diffusers else "model_type")
    if found not in expected:
        raise ModelLoadError(
            f"{role}: {config} names {found!r}; backend {backend!r} reads {' / '.join(expected)} "
            "(is the config's backend the one for these files? e.g. --preset modern)"
        )


def _readable(role: str, files: list[Path]) -> None:
    """ModelLoadError unless every JSON file parses and every shard a ``*.index.json`` names
    exists (a half-copied 13B checkpoint fails here, not minutes into loading)."""
    for f in files:
        if f.suffix != ".json":
            continue
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelLoadError(f"{role}: {f} is not readable JSON: {err}") from None
        if f.name.endswith(".index.json") and isinstance(data, dict):
            shards = sorted(set((data.get("weight_map") or {}).values()))
            missing = [s for s in shards if not (f.parent / s).exists()]
            if missing:
                raise ModelLoadError(f"{role}: {f.parent} is missing shard(s) {', '.join(missing)} named in {f.name}")


def _runtime(role: str, cls: type, options: dict[str, Any]) -> None:
    """A compiled runtime's settings and artifacts folder (``check_runtime`` plus existence); a
    backend that takes fewer runtimes than the export package lists them itself (``cls.RUNTIMES``)."""
    runtime = options.get("runtime", "eager")
    own = getattr(cls, "RUNTIMES", None)
    if own is not None and runtime not in own:
        raise ConfigError(f"{role}: runtime must be one of {', '.join(own)}, got {runtime!r}")
    if runtime == "eager":
        return
    if own is None:
        from ..export.runtime import check_runtime

        check_runtime(role, runtime, options.get("artifacts"))
    artifacts = options.get("artifacts")
    if artifacts is not None and not Path(artifacts).expanduser().is_dir():
        raise ModelLoadError(f"{role}: artifacts folder {artifacts} for runtime={runtime!r} does not exist")


def _strip(role: str, message: str) -> str:
    """The loaders' messages start with ``<role>: ``; the report line already says it."""
    return message[len(role) + 2 :] if message.startswith(f"{role}: ") else message


def check_role(cfg: ModelsConfig, role: str, models_dir: str | Path | None = None) -> RoleCheck:
    """Check one role as ``load_role`` would load it, without loading (see the module docstring)."""
    rc = cfg.role(role)

    def verdict(status: str, detail: str) -> RoleCheck:
        return RoleCheck(role, rc.backend, status, _strip(role, detail))

    try:
        cls = backend_class(role, rc.backend)
        check_role_options(cfg, role)
        _runtime(role, cls, rc.options)
    except ConfigError as err:
        return verdict(INVALID, str(err))
    except ModelLoadError as err:  # the backend's package is not installed, or no artifacts
        return verdict(MISSING, str(err))
    try:
        path = role_path(cfg, role, models_dir)
    except (ConfigError, ModelLoadError) as err:  # no path given, or a repo id not in the cache
        return verdict(MISSING, str(err))
    source = rc.path if path is not None and rc.path and path != Path(rc.path).expanduser() else None
    if (role, rc.backend) in PATHLESS:
        if path is not None:  # its load refuses a path: better said now than at load time
            return verdict(INVALID, f"backend {rc.backend!r} loads no model files; remove models.{role}.path")
        return RoleCheck(role, rc.backend, OK, "(no model files)", path, source)
    check = FILE_CHECKS.get((role, rc.backend))
    if check is None:  # a backend added to load.BACKENDS without a check here
        return RoleCheck(role, rc.backend, OK, "files not checked: no file check for this backend", path, source)
    try:
        fmt, files = check(role, Path(path), rc.options)
        _readable(role, files)
        _model_type_matches(role, rc.backend, Path(path))
    except ModelLoadError as err:
        return verdict(MISSING, str(err))
    return RoleCheck(role, rc.backend, OK, fmt, path, source)


def check_models(cfg: ModelsConfig, models_dir: str | Path | None = None) -> list[RoleCheck]:
    """``check_role`` for every role of ``cfg.roles``, in that order."""
    return [check_role(cfg, role, models_dir) for role in cfg.roles]
