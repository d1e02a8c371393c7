"""``manifest.json`` of an export folder: what each artifact is and which checkpoint it came from.

One entry per artifact (``role``, ``module``, ``format``)::

    {"role": "segmenter", "module": "image_encoder", "format": "onnx",
     "file": "segmenter/image_encoder/model.onnx", "opset": 17, "dtype": "float32",
     "inputs":  [{"name": "images", "shape": ["batch", 3, 1024, 1024], "dtype": "float32"}],
     "outputs": [{"name": "image_embeddings", "shape": ["batch", 256, 64, 64], "dtype": "float32"}],
     "source": {"path": "/models/segmenter", "sha256": "..."},
     "exported_at": "2026-01-01T00:00:00Z", "export_seconds": 3.2, "torch": "2.14.1"}

A string in a shape is a dynamic axis. A "tensorrt" entry adds ``onnx`` (the float32 graph it
came from), ``parsed_onnx`` (the graph TensorRT read: the same, or its float16/bfloat16 cast for
TensorRT >= 11), ``tensorrt`` (the version that built it), ``strongly_typed``, ``axis_ranges``
(``{axis: [min, opt, max]}``, from ``build.axis_ranges``: the batch bounds of its backend) and
``profile`` (per input: its [min, opt, max] shapes). ``source.sha256`` is ``int_engine.models.zoo.checksum``
of the role's model directory at export time: a backend refuses an artifact whose checkpoint
has changed since (``require_artifact``). Exporting another format into the same folder keeps
the other formats' entries, so one folder can hold ONNX graphs and TensorRT engines side by side.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from ..models.zoo import checksum

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
FORMATS = ("onnx", "tensorrt", "compile")


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """The manifest of ``out_dir``; an empty one when there is none yet."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return {"version": MANIFEST_VERSION, "artifacts": []}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"export: {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("artifacts"), list):
        raise ModelLoadError(f"export: {path} is not an export manifest (no 'artifacts' list)")
    return data


def write_manifest(out_dir: str | Path, entries: list[dict[str, Any]], fmt: str, roles: tuple[str, ...]) -> dict:
    """Replace ``fmt``'s entries of ``roles`` in ``out_dir/manifest.json`` by ``entries``; returns the manifest.

    Written through a temporary file so that a reader never sees half a manifest.
    """
    out = Path(out_dir)
    manifest = read_manifest(out)
    kept = [a for a in manifest["artifacts"] if not (a.get("format") == fmt and a.get("role") in roles)]
    manifest = {"version": MANIFEST_VERSION, "artifacts": kept + entries}
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / MANIFEST)
    return manifest


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def source_info(model_dir: Path) -> dict[str, str]:
    """Where an artifact came from: the role's model directory and its checksum now."""
    return {"path": str(Path(model_dir).resolve()), "sha256": checksum(Path(model_dir))}


def artifact_entry(role: str, module: str, fmt: str, file: str | None, source: dict[str, str], **fields: Any) -> dict[str, Any]:
    """One manifest entry (module docstring), stamped with the export time and torch version."""
    import torch

    return {
        "role": role,
        "module": module,
        "format": fmt,
        "file": file,
        **fields,
        "source": source,
        "exported_at": now_utc(),
        "torch": torch.__version__,
    }


def require_artifact(
    artifacts: str | Path, role: str, module: str, fmt: str, model_dir: str | Path, current_sha: str | None = None
) -> dict[str, Any]:
    """The manifest entry of ``role``/``module`` in format ``fmt`` under ``artifacts``, checked
    against the checkpoint ``model_dir`` now on disk.

    Raises ModelLoadError when there is no such entry, its file is missing, or it is stale (its
    recorded source checksum differs from ``checksum(model_dir)``; pass ``current_sha`` to reuse
    one already computed). The entry comes back with ``path``: the artifact's absolute path.
    """
    root = Path(artifacts).expanduser()
    if not (root / MANIFEST).exists():
        hint = f"export with `int-engine export --format {fmt} --out {root}`"
        raise ModelLoadError(f"{role}: no export manifest {root / MANIFEST} ({hint})")
    manifest = read_manifest(root)
    key = (role, module, fmt)
    found = [a for a in manifest["artifacts"] if (a.get("role"), a.get("module"), a.get("format")) == key]
    if not found:
        raise ModelLoadError(f"{role}: {root / MANIFEST} has no {fmt} artifact for module {module!r}")
    entry = dict(found[-1])
    name = entry.get("file") or f"{role}/{module} ({fmt})"
    sha = current_sha or checksum(Path(model_dir))
    recorded = entry.get("source", {}).get("sha256")
    if recorded != sha:
        raise ModelLoadError(
            f"{role}: artifact {root / name} is stale: it was exported from a checkpoint with sha256 "
            f"{recorded}, but the model at {Path(model_dir)} now has sha256 {sha}; re-export it "
            f"(`int-engine export --format {fmt} --out {root}`)"
        )
    if entry.get("file"):
        entry["path"] = root / entry["file"]
        if not entry["path"].exists():
            raise ModelLoadError(f"{role}: artifact {entry['path']} listed in {root / MANIFEST} is missing")
    return entry
