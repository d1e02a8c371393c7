"""Reading images into the engine's form, and writing its outputs.

``read_image`` accepts what a demanding user will throw at it and documents each
conversion: greyscale, palette, CMYK and 16-bit images become 8-bit RGB; an alpha channel
is dropped (the colour pixels are segmented as stored); EXIF orientation is NOT applied,
because dataset ground truths are aligned with the stored pixel grid. Anything that cannot
become an RGB image raises ``ImageError`` whose message starts with the file name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageError

MAX_PIXELS = 400_000_000  # a 20000 x 20000 image; beyond this decoding alone is gigabytes
MAX_ASPECT = 4.0  # EngineConfig.max_aspect's default: the long side of the padded frame / its short side

# (top, left, height, width): where the image lies in the padded frame of ``pad_to_aspect``
Region = tuple[int, int, int, int]


@dataclass(frozen=True)
class LoadedImage:
    """An image ready for the pipeline: ``pixels`` uint8 [h, w, 3] at working size, plus
    its original size (H, W) and the conversions applied, for the trace."""

    path: str
    pixels: np.ndarray
    original_size: tuple[int, int]
    conversions: tuple[str, ...]
    original: np.ndarray | None = None


def read_image(
    path: str | Path, max_side: int = 1536, min_side: int = 32, keep_original: bool = False, max_aspect: float = MAX_ASPECT
) -> LoadedImage:
    """Decode ``path`` to RGB uint8 and resize it to the working size: one scale for both
    sides (the aspect ratio is kept), chosen so that the frame the pipeline pads the image to
    (``padded_shape`` with ``max_aspect``) has its long side at most ``max_side`` (area
    interpolation) and its short side at least ``min_side`` (cubic); ``min_side`` wins if both
    cannot hold. ``keep_original`` also keeps the decoded pixels at their stored size (for overlays)."""
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
    pixels = _working_size(rgb, max_side, min_side, conversions, max_aspect)
    return LoadedImage(
        str(p),
        np.ascontiguousarray(pixels),
        (int(original[0]), int(original[1])),
        tuple(conversions),
        rgb if keep_original else None,
    )


def from_pixels(
    pixels: np.ndarray, max_side: int = 1536, min_side: int = 32, max_aspect: float = MAX_ASPECT, source: str = "<array>"
) -> LoadedImage:
    """uint8 [H, W, 3] RGB pixels as ``read_image`` would load them from a file holding them:
    resized to the same working size, so an array and its PNG give the same masks, and
    ``max_side`` bounds an array's memory as it bounds a file's."""
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{source}: expected uint8 [H, W, 3] RGB pixels, got {arr.dtype} {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{source}: image has no pixels ({arr.shape[1]}x{arr.shape[0]})")
    conversions: list[str] = []
    working = _working_size(arr, max_side, min_side, conversions, max_aspect)
    return LoadedImage(source, np.ascontiguousarray(working), (int(arr.shape[0]), int(arr.shape[1])), tuple(conversions))


def from_pil(
    image: Image.Image, max_side: int = 1536, min_side: int = 32, max_aspect: float = MAX_ASPECT, source: str = "<PIL image>"
) -> LoadedImage:
    """A PIL image as ``read_image`` would load the file it came from: the same conversions to
    RGB uint8 [H, W, 3] (recorded), then ``from_pixels``'s working size."""
    conversions: list[str] = []
    try:
        rgb = _to_rgb(image, conversions)
    except (OSError, ValueError) as err:
        raise ImageError(f"{source}: cannot convert {image.mode} {image.size} image to RGB: {err}") from None
    loaded = from_pixels(rgb, max_side, min_side, max_aspect, source)
    return dataclasses.replace(loaded, conversions=tuple(conversions) + loaded.conversions)


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


def _working_size(
    rgb: np.ndarray, max_side: int, min_side: int, conversions: list[str], max_aspect: float = MAX_ASPECT
) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [h, w, 3] at one scale for both sides.

    The bounds apply to the padded frame (``padded_shape``), not to the image itself: a
    5 x 4000 strip is padded to 1000 x 4000 before the views are cut, so scaling it to
    384 x 1536 bounds every model input while the strip keeps its shape (2 x 1536). Scaling the
    sides separately instead would stretch the content by up to ``max_side / min_side``.
    """
    h, w = rgb.shape[:2]
    ph, pw = padded_shape(h, w, max_aspect)
    scale = 1.0
    if max(ph, pw) > max_side:
        scale = max_side / max(ph, pw)
    if min(ph, pw) * scale < min_side:
        scale = min_side / min(ph, pw)
    if scale == 1.0:
        return rgb
    # a side may round to 0 for a strip thinner than 1 / scale; keep one row (column) of it
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) == (h, w):
        return rgb
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC
    conversions.append(f"resized {w}x{h} -> {nw}x{nh} for processing (masks written at {w}x{h})")
    return cv2.resize(rgb, (nw, nh), interpolation=interp)


def padded_shape(height: int, width: int, max_aspect: float, min_side: int = 1) -> tuple[int, int]:
    """The (H', W') frame ``pad_to_aspect`` puts a ``height`` x ``width`` image in: each side
    the image's side, raised to at least ``min_side`` and to at least the other side divided
    by ``max_aspect`` (rounded up), so max(H', W') / min(H', W') <= ``max_aspect``."""
    if height < 1 or width < 1:
        raise ValueError(f"an image needs at least 1x1 pixels, got {width}x{height}")
    if not max_aspect >= 1.0:
        raise ValueError(f"max_aspect must be >= 1, got {max_aspect}")
    ph = max(height, min_side, math.ceil(width / max_aspect))
    pw = max(width, min_side, math.ceil(height / max_aspect))
    return ph, pw


def pad_to_aspect(image: np.ndarray, max_aspect: float, min_side: int = 1) -> tuple[np.ndarray, Region]:
    """``image`` [H, W, C] centred in a frame [H', W', C] of ``padded_shape``, and its region
    (top, left, H, W) there. A frame equal to the image returns ``image`` itself, region
    (0, 0, H, W): images within the bounds run exactly as without padding.

    With ``min_side`` >= 2 every view of the frame (halves and quarters halve a side) has both
    sides >= ``min_side // 2`` and a long / short side ratio <= 2 · ``max_aspect`` · (1 + 1 / (min_side − 1)).

    Centred, so that the halves and quarters each hold part of the image instead of one of them
    being all padding. The fill is the image's mean colour (per channel, rounded): flat, so
    it holds no edge or texture that SAM or GroundingDINO could take for an object, and of the
    image's own tone, so the VLM and CLIP do not see a black or white frame to describe.
    Edge replication would be worse: whatever touches the border (often the object itself)
    would be smeared across the whole padding, inventing a larger object. A mean colour is
    also how the models pad on their own: SAM pads its resized input to a square with zeros
    after normalisation (its pixel mean), GroundingDINO's processor pads a batch the same way.
    """
    h, w = image.shape[:2]
    ph, pw = padded_shape(h, w, max_aspect, min_side)
    if (ph, pw) == (h, w):
        return image, (0, 0, h, w)
    top, left, _, _ = centred_region(h, w, (ph, pw))
    mean = image.reshape(h * w, -1).astype(np.float64).mean(axis=0)
    fill = np.round(mean).astype(image.dtype) if np.issubdtype(image.dtype, np.integer) else mean.astype(image.dtype)
    out = np.empty((ph, pw) + image.shape[2:], image.dtype)
    out[...] = fill.reshape(image.shape[2:]) if image.ndim > 2 else fill[0]
    out[top : top + h, left : left + w] = image
    return out, (top, left, h, w)


def centred_region(height: int, width: int, frame: tuple[int, int]) -> Region:
    """Where ``pad_to_aspect`` puts a ``height`` x ``width`` image in a ``frame`` (H', W'):
    centred, (top, left, height, width). Overlays map the trace's boxes back with it."""
    return (frame[0] - height) // 2, (frame[1] - width) // 2, height, width


def crop_to_region(mask: np.ndarray, region: Region) -> np.ndarray:
    """The inverse of ``pad_to_aspect`` for a mask: [H', W', ...] -> [H, W, ...], the image's
    pixels only (a view, not a copy)."""
    top, left, h, w = region
    return mask[top : top + h, left : left + w]


def clear_padding(mask: np.ndarray, region: Region) -> np.ndarray:
    """A float [H', W'] mask with every pixel outside ``region`` set to 0 (a new array; ``mask``
    itself when the region is the whole frame): the padding is never part of the object, also
    not for the next iteration's reweighting (eq 12) and inpainting masks (eq 4)."""
    if region == (0, 0) + tuple(mask.shape[:2]):
        return mask
    out = np.zeros_like(mask)
    crop_to_region(out, region)[...] = crop_to_region(mask, region)
    return out


def padding_note(region: Region, frame: tuple[int, int], max_aspect: float) -> str:
    """The trace's line for a padding (``conversions``), or "" when there was none."""
    top, left, h, w = region
    ph, pw = frame
    if (ph, pw) == (h, w):
        return ""
    return (
        f"padded {w}x{h} -> {pw}x{ph} (aspect <= {max_aspect:g}, short side >= min_side) with the image's mean "
        f"colour, image at x={left}, y={top}; views and boxes in this trace are in the padded frame, "
        f"masks are cropped back to {w}x{h}"
    )


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


MASK_COLOUR = (255, 32, 32)  # RGB: the mask's contour and tint
BOX_COLOUR = (255, 210, 0)  # RGB: the detections' boxes and the picked name's label


def overlay(
    image: np.ndarray,
    binary: np.ndarray,
    color: tuple[int, int, int] = MASK_COLOUR,
    boxes: np.ndarray | None = None,
    label: str | None = None,
    box_color: tuple[int, int, int] = BOX_COLOUR,
) -> np.ndarray:
    """The image with the binary mask's contour drawn on it and its inside lightly tinted, then
    ``boxes`` as rectangles and ``label`` (the picked name) on a filled tag at the first box's
    top-left corner (the image's, with no box).

    image: uint8 [H, W, 3] RGB; binary: bool [H, W]; boxes: float [N, 4] (x0, y0, x1, y1) in
    the image's pixels, x1 / y1 exclusive. Returns uint8 [H, W, 3].
    """
    image, m = np.asarray(image), np.asarray(binary).astype(bool)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"overlay: expected uint8 [H, W, 3] RGB pixels, got {image.dtype} {image.shape}")
    if m.shape != image.shape[:2]:
        raise ValueError(f"overlay: mask {m.shape[1]}x{m.shape[0]} does not match image {image.shape[1]}x{image.shape[0]}")
    out = np.ascontiguousarray(image).copy()
    tint = np.array(color, np.float32)
    out[m] = (0.75 * out[m].astype(np.float32) + 0.25 * tint).astype(np.uint8)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    h, w = m.shape
    thickness = max(1, round(max(h, w) / 300))
    cv2.drawContours(out, contours, -1, color, thickness)
    corners = []
    for x0, y0, x1, y1 in np.asarray(boxes if boxes is not None else np.zeros((0, 4)), np.float64).reshape(-1, 4):
        # pixels a box covers: [floor(x0), ceil(x1) - 1]; drawn after the mask so its edges stay visible
        left, top = int(np.clip(np.floor(x0), 0, w - 1)), int(np.clip(np.floor(y0), 0, h - 1))
        right, bottom = int(np.clip(np.ceil(x1) - 1, 0, w - 1)), int(np.clip(np.ceil(y1) - 1, 0, h - 1))
        if right >= left and bottom >= top:
            cv2.rectangle(out, (left, top), (right, bottom), box_color, thickness)
            corners.append((left, top))
    if label:
        _draw_label(out, label, corners[0] if corners else (0, 0), box_color)
    return out


def _draw_label(out: np.ndarray, text: str, corner: tuple[int, int], colour: tuple[int, int, int]) -> None:
    """Black ``text`` on a ``colour`` tag just above ``corner`` (inside the image when there is no
    room above); in place. OpenCV's fonts are ASCII only: other characters become '?'."""
    text = text.encode("ascii", "replace").decode("ascii")
    h, w = out.shape[:2]
    scale = max(0.3, max(h, w) / 1000)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = corner
    top = y - th - base - 2 if y - th - base - 2 >= 0 else y
    cv2.rectangle(out, (x, top), (min(w - 1, x + tw + 2), min(h - 1, top + th + base + 2)), colour, -1)
    cv2.putText(out, text, (x + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)


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
