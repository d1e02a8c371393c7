"""Hostile images: each works (converted as documented) or fails with one line naming the file."""

import numpy as np
import pytest
from PIL import Image

from int_engine.errors import ImageError
from int_engine.io import mask_to_uint8, overlay, read_image, to_original_size


def _save(tmp_path, name, im):
    p = tmp_path / name
    im.save(p)
    return p


def test_rgb_is_unchanged(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    img = read_image(_save(tmp_path, "a.png", Image.fromarray(arr)))
    assert np.array_equal(img.pixels, arr) and img.original_size == (40, 50) and img.conversions == ()


@pytest.mark.parametrize(
    "mode,note", [("L", "greyscale"), ("RGBA", "alpha dropped"), ("P", "palette"), ("CMYK", "CMYK"), ("LA", "alpha")]
)
def test_modes_convert_to_rgb(tmp_path, mode, note):
    ext = "jpg" if mode == "CMYK" else "png"
    im = Image.new(mode, (37, 41), color=(30, 60, 90, 255)[: len(mode)] if mode not in ("L", "P") else 77)
    img = read_image(_save(tmp_path, f"x.{ext}", im))
    assert img.pixels.shape == (41, 37, 3) and img.pixels.dtype == np.uint8
    assert any(note in c for c in img.conversions)


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    arr = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    img = read_image(_save(tmp_path, "g16.png", Image.fromarray(arr)))
    assert img.pixels.min() == 0 and img.pixels.max() == 255
    assert len(np.unique(img.pixels[..., 0])) > 200  # the full range, not saturated


def test_16_bit_rgb(tmp_path):
    import cv2

    arr = (np.random.default_rng(1).random((30, 40, 3)) * 65535).astype(np.uint16)
    p = tmp_path / "rgb16.png"
    cv2.imwrite(str(p), arr)
    img = read_image(p, min_side=2)
    assert img.pixels.shape == (30, 40, 3) and img.pixels.dtype == np.uint8
    assert np.array_equal(img.pixels, (arr[..., ::-1] >> 8).astype(np.uint8))


def test_one_pixel_image_is_upscaled_to_min_side(tmp_path):
    img = read_image(_save(tmp_path, "one.png", Image.new("RGB", (1, 1), (10, 200, 30))), min_side=32)
    assert img.pixels.shape == (32, 32, 3) and img.original_size == (1, 1)
    assert (img.pixels == [10, 200, 30]).all()


def test_huge_image_is_downscaled_and_keeps_its_original_size(tmp_path):
    p = _save(tmp_path, "huge.png", Image.new("RGB", (12000, 12000), (90, 90, 90)))
    img = read_image(p, max_side=1024)
    assert img.pixels.shape == (1024, 1024, 3) and img.original_size == (12000, 12000)
    assert any("resized 12000x12000" in c for c in img.conversions)
    mask = to_original_size(np.ones((1024, 1024), np.float32), img.original_size)
    assert mask.shape == (12000, 12000)


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("empty.png", b"", "empty file"),
        ("text.png", b"this is not an image at all", "not an image"),
        ("trunc.png", None, "cannot decode"),
    ],
)
def test_bad_files_name_the_file(tmp_path, name, content, message):
    p = tmp_path / name
    if content is None:
        good = _save(tmp_path, "good.png", Image.new("RGB", (64, 64), (1, 2, 3)))
        p.write_bytes(good.read_bytes()[:60])
    else:
        p.write_bytes(content)
    with pytest.raises(ImageError) as info:
        read_image(p)
    assert str(p) in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="directory"):
        read_image(tmp_path)


def test_mask_png_and_overlay_helpers():
    m = np.array([[0.0, 0.5, 1.0, 2.0]], np.float32)
    assert mask_to_uint8(m).tolist() == [[0, 128, 255, 255]]
    img = np.zeros((20, 20, 3), np.uint8)
    b = np.zeros((20, 20), bool)
    b[5:15, 5:15] = True
    out = overlay(img, b)
    assert out.shape == img.shape and out[5, 5].any() and not out[0, 0].any()
