"""A benchmark run folder's file names and its greyscale reader, shared by the run that writes
the folder (``run.py``), the report that scores it (``report.py``) and the tools that read it
(``compare.py``). The folder's contract: ``run.py``'s module docstring."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import IntEngineError

RESULTS, SUMMARY, RUN_INFO = "results.jsonl", "summary.json", "run.json"
METRICS_CSV, CURVES = "metrics.csv", "curves.npz"


def read_gray(path: Path) -> np.ndarray:
    """An 8-bit greyscale image as PySODMetrics users read it (cv2, IMREAD_GRAYSCALE)."""
    arr = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if arr is None:
        raise IntEngineError(f"{path}: cannot read as a greyscale image")
    return arr
