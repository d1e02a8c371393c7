"""The tiny zoo: every model the engine runs, tiny and randomly initialised, on disk in the
format of its real checkpoint, with a manifest. Tests, CI and the demo run on it.

The same builders write a second scale, ``small``: the same architectures and formats with
configurations close to the real models' per-layer sizes (fewer layers), so that throughput
measured on it is dominated by the models' compute rather than by Python.

Two lineups: ``paper`` (the paper's models: LLaVA-1.5, SD2 inpainting, GroundingDINO, SAM, CLIP)
and ``modern`` (the ``modern`` preset's: Qwen3-VL, SDXL inpainting, GroundingDINO, SAM 2.1, CLIP,
plus SAM 3 for the optional concept role), tiny only.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import time
from pathlib import Path

from ..errors import ModelLoadError

MANIFEST = "manifest.json"
# 2: the tiny detector's logits calibrated like a trained model's (a few boxes per view).
ZOO_VERSION = 2
SCALES = ("tiny", "small")
# lineup -> role -> (builder module, its extra arguments); the modern lineup is built at "tiny" only
LINEUPS: dict[str, dict[str, tuple[str, dict]]] = {
    "paper": {
        "vlm": ("tiny_vlm", {}),
        "inpaint": ("tiny_inpaint", {}),
        "detector": ("tiny_detector", {}),
        "segmenter": ("tiny_segmenter", {}),
        "clip": ("tiny_clip", {}),
    },
    "modern": {
        "vlm": ("tiny_qwen", {"family": "qwen3_vl"}),
        "inpaint": ("tiny_inpaint_sdxl", {}),
        "detector": ("tiny_detector", {}),
        "segmenter": ("tiny_sam2", {}),
        "clip": ("tiny_clip", {}),
        "concept": ("tiny_sam3", {}),
    },
}


def checksum(directory: Path) -> str:
    """sha256 over every file's relative path and bytes, in sorted order."""
    h = hashlib.sha256()
    for f in sorted(p for p in directory.rglob("*") if p.is_file()):
        h.update(f.relative_to(directory).as_posix().encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def zoo_lineup(models) -> str:
    """The lineup whose files a ``ModelsConfig`` reads: "modern" when every backend the ``modern``
    preset names is this config's, else "paper"."""
    from ..presets import PRESETS

    named = PRESETS["modern"].fields["models"]
    return "modern" if all(models.role(role).backend == rc["backend"] for role, rc in named.items()) else "paper"


def build_tiny_zoo(out: str | Path, seed: int = 0, scale: str = "tiny", lineup: str = "paper") -> dict:
    """Write the models of ``lineup`` at ``scale`` ("tiny" or "small"; modern: "tiny") under
    ``out/<role>`` and ``out/manifest.json``; returns the manifest.

    The manifest is written last, so a directory with a manifest is a complete zoo.
    """
    from .load import quiet_libraries

    if scale not in SCALES:
        raise ValueError(f"zoo: unknown scale {scale!r}; scales are {', '.join(SCALES)}")
    if lineup not in LINEUPS or (lineup != "paper" and scale != "tiny"):
        raise ValueError(f"zoo: no {scale} zoo of lineup {lineup!r}; lineups are {', '.join(LINEUPS)} (modern: tiny only)")
    quiet_libraries()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    models = {}
    for role, (module, extra) in LINEUPS[lineup].items():
        target = out / role
        if target.exists():
            shutil.rmtree(target)
        start = time.perf_counter()
        info = importlib.import_module(f"int_engine.models.{module}").build(target, seed=seed, scale=scale, **extra)
        models[role] = {
            "path": role,
            "format": info["format"],
            "params": int(info["params"]),
            "sha256": checksum(target),
            "build_seconds": round(time.perf_counter() - start, 3),
        }
    manifest = {"zoo": scale, "version": ZOO_VERSION, "seed": seed, "scale": scale, "lineup": lineup, "models": models}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def read_manifest(directory: str | Path) -> dict:
    p = Path(directory) / MANIFEST
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"zoo: {p} not found (build it with `int-engine models tiny --out {directory}`)") from None
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"zoo: {p} is not valid JSON: {err}") from None


def verify_zoo(directory: str | Path) -> list[str]:
    """The roles whose files no longer match the manifest's checksum (empty = intact)."""
    manifest = read_manifest(directory)
    return [role for role, m in manifest["models"].items() if checksum(Path(directory) / m["path"]) != m["sha256"]]


def is_complete_zoo(directory: str | Path, seed: int = 0, scale: str = "tiny", lineup: str = "paper") -> bool:
    """True when ``directory`` holds a zoo of this version, seed, scale and lineup with all its roles.

    A manifest without ``scale`` (written before scales existed) is a tiny zoo; one without
    ``lineup`` a paper zoo.
    """
    try:
        manifest = read_manifest(directory)
    except ModelLoadError:
        return False
    return (
        manifest.get("version") == ZOO_VERSION
        and manifest.get("seed") == seed
        and manifest.get("scale", "tiny") == scale
        and manifest.get("lineup", "paper") == lineup
        and set(manifest.get("models", {})) == set(LINEUPS[lineup])
    )
