"""What is written for one segmented image: the one writer behind ``Result.save`` and
``int-engine segment``, COCO RLE, and the overlay's boxes and name taken from the trace.

Per image folder: ``soft.png``, ``binary.png``, ``overlay.png``, ``mask.rle.json`` and
``iterations/<k>.png`` (each iteration's soft map) with ``iterations/<k>_binary.png`` (its
segmentation) as asked for (``SAVE_CHOICES``), and always ``trace.json``, written last:
a folder holding it and the files asked for is complete (what ``segment --resume`` checks).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

from .io import centred_region, mask_to_uint8, overlay, read_image, to_original_size, write_json, write_png

if TYPE_CHECKING:
    from .result import Result
    from .trace import ImageTrace

SAVE_CHOICES = ("soft", "binary", "overlay", "rle", "iterations")
DEFAULT_SAVE = ("soft", "binary", "overlay")
FILES = {"soft": "soft.png", "binary": "binary.png", "overlay": "overlay.png", "rle": "mask.rle.json"}
ITERATIONS_DIR, TRACE_FILE = "iterations", "trace.json"


def check_save(what: Iterable[str] | str) -> tuple[str, ...]:
    """The output names, validated and deduplicated in order; a string is split at commas
    (``"soft,rle"``). Raises ValueError naming the unknown ones and listing the allowed."""
    names = [n.strip() for n in what.split(",")] if isinstance(what, str) else [str(n).strip() for n in what]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in SAVE_CHOICES]
    if unknown or not names:
        got = f"unknown output {', '.join(map(repr, unknown))}" if unknown else "no output named"
        raise ValueError(f"{got}; choose from {', '.join(SAVE_CHOICES)} (comma-separated)")
    return tuple(dict.fromkeys(names))


def to_rle(binary: np.ndarray) -> dict:
    """COCO RLE of a bool [H, W] mask (column-major, pycocotools' encoding), JSON-ready:
    ``{"size": [H, W], "counts": str}``; ``pycocotools.mask.decode`` gives the mask back."""
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(np.asarray(binary).astype(bool), dtype=np.uint8))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def trace_boxes(trace: ImageTrace, size: tuple[int, int], iteration: int | None = None) -> tuple[np.ndarray, str]:
    """The merged boxes (float32 [N, 4], x0 y0 x1 y1) of ``iteration`` (default: the one whose mask
    was kept, ``trace.final_iteration``, eq 13), in the pixels of the image at ``size`` (H, W),
    and that iteration's picked name ("" when nothing ran).

    The trace's boxes are in the padded working frame; its views tile that frame, so their
    extent gives it, and ``centred_region`` (the padding's own rule) where the image lies in it.
    """
    if not trace.iterations:
        return np.zeros((0, 4), np.float32), ""
    k = trace.final_iteration if iteration is None else iteration
    it = trace.iterations[k if 0 <= k < len(trace.iterations) else -1]
    h, w = (int(s) for s in trace.working_size)
    boxes = np.asarray(it.boxes, np.float64).reshape(-1, 4)
    if it.views:
        frame = (max(int(v["box"][3]) for v in it.views), max(int(v["box"][2]) for v in it.views))
    else:
        frame = (h, w)
    top, left, _, _ = centred_region(h, w, frame)
    scale = np.array([size[1] / w, size[0] / h] * 2)
    boxes = (boxes - np.array([left, top, left, top])) * scale
    boxes = np.clip(boxes, 0, np.array([size[1], size[0]] * 2))
    return boxes.astype(np.float32), it.pick


def result_overlay(result: Result, image: np.ndarray) -> np.ndarray:
    """``image`` (uint8 [H, W, 3], the original pixels) with the result's mask, boxes and picked name."""
    pixels = np.asarray(image)
    if pixels.shape[:2] != result.binary.shape:
        raise ValueError(
            f"{result.trace.source}: overlay image is {pixels.shape[1::-1]} (W, H), "
            f"the mask {result.binary.shape[::-1]}: pass the original image"
        )
    boxes, name = trace_boxes(result.trace, result.binary.shape)
    return overlay(pixels, result.binary, boxes=boxes, label=name)


def save_result(
    result: Result,
    folder: str | Path,
    what: Iterable[str] | str = DEFAULT_SAVE,
    image: np.ndarray | None = None,
    already: Iterable[str] = (),
) -> list[Path]:
    """Write ``what`` (``SAVE_CHOICES``) and ``trace.json`` into ``folder``; returns the paths.

    ``image`` (uint8 [H, W, 3], the original pixels) is needed for ``overlay``; when None the
    file ``trace.source`` is read again. Iteration masks are written at the image's size, as
    ``iterations/0.png`` ... one per iteration run. ``trace.json`` goes first out and last in, so
    an interrupted write never looks complete. ``already``: names of ``what`` whose files were
    written as the run went (the CLI's ``iterations``, through ``save_iteration``): not rewritten.
    """
    what, already = check_save(what), set(already)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TRACE_FILE).unlink(missing_ok=True)
    written: list[Path] = []
    if "overlay" in what and image is None:
        source = Path(result.trace.source)
        if not source.is_file():
            raise ValueError(f"{result.trace.source}: overlay needs the image; pass image= (uint8 [H, W, 3])")
        image = read_image(source, keep_original=True).original
    size = result.binary.shape
    for name in what:
        path = folder / FILES.get(name, ITERATIONS_DIR)
        if name == "soft":
            write_png(path, mask_to_uint8(result.soft))
        elif name == "binary":
            write_png(path, result.binary.astype(np.uint8) * 255)
        elif name == "overlay":
            write_png(path, result_overlay(result, image))
        elif name == "rle":
            write_json(path, to_rle(result.binary))
        elif name not in already:
            clear_iterations(folder)
            for k, (m, seg) in enumerate(zip(result.iteration_masks, result.iteration_segmentations)):
                soft = to_original_size(np.asarray(m, np.float32), size)
                binary = to_original_size(np.asarray(seg, np.float32), size) >= 0.5  # what eq 13 chose among
                save_iteration(folder, k, soft, binary)
        written.append(path)
    write_json(folder / TRACE_FILE, result.trace.to_dict())
    return written + [folder / TRACE_FILE]


def clear_iterations(folder: str | Path) -> Path:
    """``folder/iterations``, made and emptied: an earlier run's extra iterations would read as this run's."""
    path = Path(folder) / ITERATIONS_DIR
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.png"):
        old.unlink()
    return path


def save_iteration(folder: str | Path, k: int, soft: np.ndarray, binary: np.ndarray) -> None:
    """Iteration ``k``'s soft map (float32 [H, W]) and segmentation (bool [H, W]), at the image's
    size, as ``iterations/<k>.png`` and ``iterations/<k>_binary.png`` (``Result.save``'s files;
    the CLI writes them as each iteration lands)."""
    path = Path(folder) / ITERATIONS_DIR
    write_png(path / f"{k}.png", mask_to_uint8(soft))
    write_png(path / f"{k}_binary.png", np.asarray(binary, bool).astype(np.uint8) * 255)


def is_saved(folder: str | Path, what: Iterable[str] | str) -> bool:
    """Whether ``folder`` holds a complete ``save_result(..., what)``: ``trace.json`` and every
    file asked for (for ``iterations``, one PNG per iteration the trace records)."""
    folder = Path(folder)
    try:
        trace = json.loads((folder / TRACE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    for name in check_save(what):
        if name == "iterations":
            n = len(trace.get("iterations", [])) if isinstance(trace, dict) else 0
            if not all((folder / ITERATIONS_DIR / f"{k}.png").is_file() for k in range(n)):
                return False
        elif not (folder / FILES[name]).is_file():
            return False
    return True
