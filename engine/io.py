"""Reading images into the engine's form, and writing its outputs.

``read_image`` accepts what a demanding user will throw at it and documents each
conversion: greyscale, palette, CMYK and 16-bit images become 8-bit RGB; an alpha channel
is dropped (the colour pixels are segmented as stored); EXIF orientation is NOT applied,
because dataset ground truths are aligned with the stored pixel grid. Anything that cannot
become an RGB image raises ``ImageError`` whose message starts with the file name.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageError

MAX_PIXELS = 400_000_000  # a 20000 x 20000 image; beyond this decoding alone is gigabytes


@dataclass(frozen=True)
class LoadedImage:
    """An image ready for the pipeline: ``pixels`` uint8 [h, w, 3] at working size, plus
    its original size (H, W) and the conversions applied, for the trace."""

    path: str
    pixels: np.ndarray
    original_size: tuple[int, int]
    conversions: tuple[str, ...]
    original: np.ndarray | None = None


def read_image(path: str | Path, max_side: int = 1536, min_side: int = 32, keep_original: bool = False) -> LoadedImage:
    """Decode ``path`` to RGB uint8 and resize it to the working size: the long side at most
    ``max_side`` (area interpolation), the short side at least ``min_side`` (cubic).
    ``keep_original`` also keeps the decoded pixels at their stored size (for overlays)."""
    p = Path(path)
    if not p.exists():
        raise ImageError(f"{p}: no such file")
    if p.is_dir():
        raise ImageError(f"{p}: is a directory, not an image")
    if p.stat().st_size == 0:
        raise ImageError(f"{p}: empty file")
    conversions: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise ImageError(f"{p}: {w}x{h} is over the {MAX_PIXELS:,}-pixel limit")
                if w < 1 or h < 1:
                    raise ImageError(f"{p}: image has no pixels ({w}x{h})")
                rgb = _to_rgb(im, conversions)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{p}: not an image file (no decoder recognises it)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageError(f"{p}: cannot decode image: {err}") from None
    original = rgb.shape[:2]
    pixels = _working_size(rgb, max_side, min_side, conversions)
    return LoadedImage(
        str(p), np.ascontiguousarray(pixels), (int(original[0]), int(original[1])), tuple(conversions),
        rgb if keep_original else None,
    )


def _to_rgb(im: Image.Image, conversions: list[str]) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        conversions.append(f"{mode} (16-bit greyscale) scaled to 8-bit RGB")
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(im).astype(np.float64)
        lo, hi = np.nanmin(arr), np.nanmax(arr)
        grey = np.zeros(arr.shape, np.uint8) if hi <= lo else np.round((arr - lo) / (hi - lo) * 255).astype(np.uint8)
        conversions.append("float image min-max scaled to 8-bit RGB")
        return np.repeat(grey[..., None], 3, axis=2)
    if mode != "RGB":
        note = {
            "L": "greyscale to RGB",
            "1": "1-bit to RGB",
            "P": "palette to RGB",
            "PA": "palette with alpha to RGB (alpha dropped)",
            "LA": "greyscale with alpha to RGB (alpha dropped)",
            "RGBA": "RGBA to RGB (alpha dropped)",
            "CMYK": "CMYK to RGB",
            "YCbCr": "YCbCr to RGB",
        }.get(mode, f"{mode} to RGB")
        conversions.append(note)
        im = im.convert("RGB")
    arr = np.asarray(im)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"unsupported pixel layout {arr.dtype} {arr.shape}")
    return arr


def _working_size(rgb: np.ndarray, max_side: int, min_side: int, conversions: list[str]) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = 1.0
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
    if min(h, w) * scale < min_side:
        scale = min_side / min(h, w)
    if scale == 1.0:
        return rgb
    nh, nw = max(min_side, round(h * scale)), max(min_side, round(w * scale))
    if max(nh, nw) > max_side * 4:
        # an extreme aspect ratio cannot satisfy both bounds; keep the short side
        nh, nw = min(nh, max_side * 4), min(nw, max_side * 4)
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC
    conversions.append(f"resized {w}x{h} -> {nw}x{nh} for processing (masks written at {w}x{h})")
    return cv2.resize(rgb, (nw, nh), interpolation=interp)


def to_original_size(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float [h, w] mask resized (bilinear) to the original (H, W); unchanged if equal."""
    h, w = size
    if mask.shape == (h, w):
        return mask
    return cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def mask_to_uint8(mask: np.ndarray) -> np.ndarray:
    """float [H, W] in [0, 1] -> uint8 [H, W], round(255 · m)."""
    return np.round(np.clip(mask, 0.0, 1.0) * 255.0).astype(np.uint8)


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 [H, W] or [H, W, 3] RGB array as PNG (deterministic bytes)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(p, format="PNG", optimize=False, compress_level=6)


def overlay(image: np.ndarray, binary: np.ndarray, color: tuple[int, int, int] = (255, 32, 32)) -> np.ndarray:
    """The image with the binary mask's contour drawn on it and its inside lightly tinted.

    image: uint8 [H, W, 3]; binary: bool [H, W]. Returns uint8 [H, W, 3].
    """
    out = image.copy()
    m = binary.astype(bool)
    tint = np.array(color, np.float32)
    out[m] = (0.75 * out[m].astype(np.float32) + 0.25 * tint).astype(np.uint8)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(max(image.shape[:2]) / 300))
    cv2.drawContours(out, contours, -1, color, thickness)
    return out


def write_json(path: str | Path, data: Any) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n", encoding="utf-8")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
