"""The library's outputs: Result.save / to_rle / overlay, segment_many's inputs and keys, py.typed.

Scripted models (the colour world of ``int_engine.testing``) find the frog and box it, so the
overlay has real boxes to draw; each run takes a fraction of a second."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask
from scenarios import H, W, frog_scene

import int_engine
from int_engine import EngineConfig, IntEngine
from int_engine.io import BOX_COLOUR, mask_to_uint8, to_original_size
from int_engine.outputs import SAVE_CHOICES
from int_engine.pipeline import Result
from int_engine.testing import scripted_models
from int_engine.testing.scenes import ellipse
from int_engine.trace import ImageTrace, IterationTrace

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scene():
    return frog_scene([ellipse(H, W, 60, 50, 22, 16)], seed=1)


@pytest.fixture(scope="module")
def engine(scene):
    world, _ = scene
    return IntEngine(EngineConfig(iterations=2), models=scripted_models(world))


@pytest.fixture(scope="module")
def result(engine, scene):
    r = engine.segment(scene[1].image)
    assert r.binary.any() and r.trace.iterations[r.trace.final_iteration].boxes  # something to draw
    return r


def png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_save_writes_every_output_from_the_result(result, scene, tmp_path):
    image = scene[1].image
    paths = result.save(tmp_path / "frog", SAVE_CHOICES, image=image)
    folder = tmp_path / "frog"
    assert paths[-1] == folder / "trace.json" and all(p.exists() for p in paths)
    assert np.array_equal(png(folder / "soft.png"), mask_to_uint8(result.soft))
    assert np.array_equal(png(folder / "binary.png"), result.binary.astype(np.uint8) * 255)
    assert np.array_equal(png(folder / "overlay.png"), result.overlay(image))
    rle = json.loads((folder / "mask.rle.json").read_text())
    assert np.array_equal(coco_mask.decode(rle).astype(bool), result.binary)
    pngs = sorted((folder / "iterations").glob("?.png"))
    assert [p.name for p in pngs] == [f"{k}.png" for k in range(len(result.trace.iterations))]
    for k, p in enumerate(pngs):  # at the image's size, like soft.png
        assert np.array_equal(png(p), mask_to_uint8(to_original_size(result.iteration_masks[k], result.binary.shape)))
        segmentation = png(folder / "iterations" / f"{k}_binary.png") > 0
        assert np.array_equal(
            segmentation, to_original_size(result.iteration_segmentations[k].astype(np.float32), segmentation.shape) >= 0.5
        )
    assert np.array_equal(png(folder / "iterations" / f"{result.trace.final_iteration}_binary.png") > 0, result.binary)
    assert json.loads((folder / "trace.json").read_text())["final_iteration"] == result.trace.final_iteration


def test_save_default_is_soft_binary_overlay_and_rejects_unknown_names(result, scene, tmp_path):
    result.save(tmp_path / "d", image=scene[1].image)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["binary.png", "overlay.png", "soft.png", "trace.json"]
    with pytest.raises(ValueError, match="unknown output 'mask'.*soft, binary, overlay, rle, iterations"):
        result.save(tmp_path / "e", ("soft", "mask"))


def test_save_without_image_reads_the_source_file_and_refuses_pixels_without_one(engine, scene, tmp_path):
    path = tmp_path / "frog.png"
    Image.fromarray(scene[1].image).save(path)
    r = engine.segment(path)
    r.save(tmp_path / "from_file")
    assert np.array_equal(png(tmp_path / "from_file" / "overlay.png"), r.overlay(scene[1].image))
    array_result = engine.segment(scene[1].image)
    with pytest.raises(ValueError, match="overlay needs the image"):
        array_result.save(tmp_path / "no_image")
    array_result.save(tmp_path / "no_overlay", ("binary",))  # fine without one


def test_to_rle_is_coco_rle_with_str_counts(result):
    rle = result.to_rle()
    assert rle["size"] == list(result.binary.shape) and isinstance(rle["counts"], str)
    assert json.loads(json.dumps(rle)) == rle
    assert np.array_equal(coco_mask.decode(rle).astype(bool), result.binary)
    assert coco_mask.area(rle) == result.binary.sum()


def synthetic(boxes_per_iteration, final, working, original, frame=None, pick="frog") -> Result:
    """A Result with a hand-made trace: boxes in the padded working frame ``frame`` (H', W')."""
    fh, fw = frame or working
    trace = ImageTrace("<test>", original, working, [], "animal", final_iteration=final)
    for i, boxes in enumerate(boxes_per_iteration):
        trace.iterations.append(
            IterationTrace(
                iteration=i, boxes=boxes, pick=f"{pick}{i}" if pick else "", views=[{"name": "whole", "box": [0, 0, fw, fh]}]
            )
        )
    zeros = np.zeros(original, np.float32)
    return Result(zeros, zeros > 0, [np.zeros(working, np.float32)] * len(boxes_per_iteration), trace)


def test_overlay_draws_the_kept_iterations_boxes_on_the_image(result, scene):
    image = scene[1].image
    out = result.overlay(image)
    assert out.shape == image.shape and out.dtype == np.uint8
    boxes = result.trace.iterations[result.trace.final_iteration].boxes
    for x0, y0, x1, y1 in boxes:  # working size = image size here: one pixel each, on the bottom edge
        x, y = int((x0 + x1) / 2), int(np.ceil(y1)) - 1
        if not (out[y, x] == image[y, x]).all():  # not hidden under another box's label
            assert tuple(out[y, x]) == BOX_COLOUR
    x0, y0, x1, y1 = boxes[0]
    x, y = int((x0 + x1) / 2), int(np.ceil(y1)) - 1
    assert tuple(out[y, x]) == BOX_COLOUR and tuple(image[y, x]) != BOX_COLOUR


def test_overlay_maps_boxes_from_the_padded_working_frame_to_the_image():
    # working 10 x 80 padded to a 20 x 80 frame (image at top=5), shown at 20 x 160 (scale 2);
    # iteration 0 is the kept one: its box [10, 7, 30, 15] covers image pixels x 20..59, y 4..19
    r = synthetic([[[10, 7, 30, 15]], [[50, 5, 70, 15]]], final=0, working=(10, 80), original=(20, 160), frame=(20, 80), pick="")
    image = np.full((20, 160, 3), 90, np.uint8)
    out = r.overlay(image)
    box = np.all(out == BOX_COLOUR, axis=-1)
    assert box[19, 20:60].all() and box[4, 20:60].all() and box[4:20, 20].all() and box[4:20, 59].all()
    assert box.sum() == 2 * 40 + 2 * 14  # that rectangle, and nothing of iteration 1's box
    assert (out[~box] == 90).all()


def test_overlay_labels_the_box_with_the_picked_name():
    boxes = [[[20, 30, 70, 60]]]
    image = np.full((64, 96, 3), 128, np.uint8)
    named = synthetic(boxes, 0, (64, 96), (64, 96), pick="frog").overlay(image)
    plain = synthetic(boxes, 0, (64, 96), (64, 96), pick="").overlay(image)
    changed = np.argwhere(np.any(named != plain, axis=-1))
    assert len(changed) > 20
    assert changed[:, 0].max() < 30 and changed[:, 1].min() >= 20  # a tag just above the box's corner
    tag = named[changed[:, 0], changed[:, 1]]
    assert (tag == BOX_COLOUR).all(axis=-1).any() and (tag < 80).all(axis=-1).any()  # dark text on a box-coloured tag


def test_overlay_refuses_an_image_of_another_size(result):
    with pytest.raises(ValueError, match="pass the original image"):
        result.overlay(np.zeros((10, 10, 3), np.uint8))


def test_segment_many_takes_pil_images_arrays_and_named_pairs(engine, scene, tmp_path):
    pixels = scene[1].image
    path = tmp_path / "frog.png"
    Image.fromarray(pixels).save(path)
    one = engine.segment(pixels)
    bad = np.zeros((8, 8), np.float32)
    inputs = [Image.fromarray(pixels), pixels, ("named", pixels), str(path), bad, Image.fromarray(pixels).convert("L")]
    got = dict(engine.segment_many(inputs))
    assert set(got) == {"0", "1", "named", str(path), "4", "5"}
    for key in ("0", "1", "named", str(path)):
        assert isinstance(got[key], Result), got[key]
        assert np.array_equal(got[key].soft, one.soft) and np.array_equal(got[key].binary, one.binary), key
    assert got["0"].trace.source == "0" and got["named"].trace.source == "named"
    assert isinstance(got["4"], ValueError) and str(got["4"]).startswith("4: expected uint8 [H, W, 3]")
    assert isinstance(got["5"], Result) and "greyscale to RGB" in got["5"].trace.conversions  # converted like a file
    assert set(dict(engine.segment_many({"a": pixels}))) == {"a"}


def test_segment_takes_a_pil_image_like_its_pixels(engine, scene):
    pixels = scene[1].image
    assert np.array_equal(engine.segment(Image.fromarray(pixels)).soft, engine.segment(pixels).soft)
    with pytest.raises(TypeError, match="expected a path"):
        engine.segment([[1, 2, 3]])


def test_py_typed_is_shipped_next_to_the_package(tmp_path):
    assert (Path(int_engine.__file__).parent / "py.typed").is_file()
    # what a wheel would hold: setup.py's build_py copies the packages and their package_data
    out = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "int_engine" / "__init__.py").is_file() and (tmp_path / "int_engine" / "py.typed").is_file()
