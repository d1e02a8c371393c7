"""Compiled forms of the heavy models: ONNX graphs, TensorRT engines, ``torch.compile``.

``export_models`` writes the artifacts and ``manifest.json``; the backends
(``SamSegmenter.load`` / ``SDInpainter.load`` with ``runtime=`` and ``artifacts=``) run them.
"""

from .build import MODULES, export_models
from .manifest import FORMATS, MANIFEST, read_manifest, require_artifact
from .runtime import RUNTIMES

__all__ = ["FORMATS", "MANIFEST", "MODULES", "RUNTIMES", "export_models", "read_manifest", "require_artifact"]
