"""Camouflage-like synthetic scenes with exact ground truth, for demos, CI and tests.

A scene is a smooth random texture; the object is a random blob filled with a texture of
nearly the same colour statistics (the camouflage), so the object is hard to see but its
mask is known exactly.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def _texture(rng: np.random.Generator, h: int, w: int, base: np.ndarray, spread: float) -> np.ndarray:
    """Smooth coloured noise around ``base`` (RGB, 0..255): float32 [h, w, 3]."""
    layers = []
    for scale in (4, 16, 48):
        small = rng.standard_normal((max(1, h // scale), max(1, w // scale), 3)).astype(np.float32)
        layers.append(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC))
    noise = sum(layers) / len(layers)
    return base[None, None, :] + spread * noise


def _blob(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """A random star-convex blob: uint8 [h, w] in {0, 1}."""
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    radius = scale * min(h, w)
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    radii = radius * (1 + 0.35 * np.convolve(rng.uniform(-1, 1, 24), np.ones(3) / 3, mode="same"))
    pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).astype(np.int32)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [pts], 1)
    return mask


def make_scene(seed: int, height: int = 256, width: int = 320, contrast: float = 18.0) -> tuple[np.ndarray, np.ndarray]:
    """One scene: image uint8 [H, W, 3] RGB and ground truth uint8 [H, W] in {0, 255}.

    ``contrast`` is the colour offset between object and background (lower = better hidden).
    """
    rng = np.random.default_rng(seed)
    base = rng.uniform(60, 190, 3).astype(np.float32)
    background = _texture(rng, height, width, base, 40.0)
    shift = rng.standard_normal(3).astype(np.float32)
    shift = contrast * shift / (np.linalg.norm(shift) + 1e-6)
    foreground = _texture(rng, height, width, base + shift, 40.0)
    mask = _blob(rng, height, width, rng.uniform(0.12, 0.25))
    soft = cv2.GaussianBlur(mask.astype(np.float32), (5, 5), 0)[..., None]
    image = np.clip(soft * foreground + (1 - soft) * background, 0, 255).astype(np.uint8)
    return image, mask * 255


def write_synthetic_dataset(root: str | Path, count: int, seed: int = 0, height: int = 256, width: int = 320) -> Path:
    """``count`` scenes in the COD10K-v3 test layout under ``root`` (images .jpg, GT .png).

    Scene i uses seed ``seed * 100_003 + i``, so a larger count extends a smaller one with
    the same first scenes. Existing files are kept. Returns ``root``.
    """
    root = Path(root)
    img_dir, gt_dir = root / "COD10K-v3" / "Test" / "Image", root / "COD10K-v3" / "Test" / "GT_Object"
    img_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        name = f"COD10K-CAM-9-Synthetic-{seed}-Scene-{i:05d}"
        img_path, gt_path = img_dir / f"{name}.jpg", gt_dir / f"{name}.png"
        if img_path.exists() and gt_path.exists():
            continue
        image, gt = make_scene(seed * 100_003 + i, height, width)
        cv2.imwrite(str(gt_path), gt)
        cv2.imwrite(str(img_path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return root
