"""Extreme shapes are input, not crashes (issue item 10).

A 5 x 4000 strip, a 1-pixel row or column, a 1 x 1 image: the image is padded (its mean
colour, centred) to ``max_aspect`` before the views are cut, so that every view reaching a
model has both sides >= min_side // 2, and every mask is cropped back to the image.
"""

import json

import numpy as np
import pytest
from PIL import Image

from int_engine import IntEngine
from int_engine.cli import main
from int_engine.config import ConfigError, EngineConfig, apply_overrides
from int_engine.io import clear_padding, crop_to_region, from_pixels, pad_to_aspect, padded_shape, padding_note, read_image
from int_engine.patches import views
from int_engine.testing import ColourWorld, Thing, scripted_models
from int_engine.testing.backends import ScriptedSegmenter
from int_engine.testing.recorder import Recorder
from int_engine.testing.scenes import compose

SPLITS = ("whole", "halves_h", "halves_v", "quarters")
SHAPES = [(1, 1), (1, 2), (2, 1), (1, 700), (700, 1), (3, 5000), (5, 4000), (4000, 5), (64, 64), (33, 132), (500, 37)]


def strip(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def view_bound(min_side: int, max_aspect: float) -> tuple[int, float]:
    """What pad_to_aspect promises for every view: (shortest side, largest long/short ratio)."""
    return min_side // 2, 2 * max_aspect * (1 + 1 / (min_side - 1))


# -- pure: padding, its inverse, the working size -------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("max_aspect, min_side", [(4.0, 32), (1.0, 2), (3.3, 7), (8.0, 32)])
def test_pad_round_trip_and_bounds(shape, max_aspect, min_side):
    image = strip(*shape)
    padded, region = pad_to_aspect(image, max_aspect, min_side)
    ph, pw = padded.shape[:2]
    assert (ph, pw) == padded_shape(*shape, max_aspect, min_side)
    assert max(ph, pw) / min(ph, pw) <= max_aspect and min(ph, pw) >= min_side
    top, left, h, w = region
    assert (h, w) == shape and top == (ph - h) // 2 and left == (pw - w) // 2  # centred
    assert np.array_equal(crop_to_region(padded, region), image)
    outside = np.ones((ph, pw), bool)
    outside[top : top + h, left : left + w] = False
    fill = np.round(image.reshape(-1, 3).astype(np.float64).mean(axis=0)).astype(np.uint8)
    assert (padded[outside] == fill).all()  # flat, the image's own mean colour
    shortest, ratio = view_bound(min_side, max_aspect)
    for v in views(ph, pw, SPLITS):
        assert min(v.height, v.width) >= shortest, v
        assert max(v.height, v.width) / min(v.height, v.width) <= ratio, v


def test_an_image_within_the_bounds_is_not_touched():
    image = strip(96, 128)
    padded, region = pad_to_aspect(image, 4.0, 32)
    assert padded is image and region == (0, 0, 96, 128)
    mask = np.random.default_rng(1).random((96, 128)).astype(np.float32)
    assert clear_padding(mask, region) is mask
    assert padding_note(region, (96, 128), 4.0) == ""


def test_clear_padding_zeroes_exactly_the_padding():
    padded, region = pad_to_aspect(strip(5, 100), 4.0, 32)
    mask = np.ones(padded.shape[:2], np.float32)
    cleared = clear_padding(mask, region)
    assert cleared.sum() == 5 * 100 and crop_to_region(cleared, region).all()
    assert mask.all()  # a new array: the model's mask is not changed in place
    assert "padded 100x5 -> 100x32" in padding_note(region, padded.shape[:2], 4.0)


@pytest.mark.parametrize("shape", SHAPES)
def test_working_size_keeps_the_aspect_and_bounds_the_padded_frame(shape):
    cfg = EngineConfig()
    loaded = from_pixels(strip(*shape), cfg.max_side, cfg.min_side, cfg.max_aspect)
    h, w = loaded.pixels.shape[:2]
    assert loaded.original_size == shape
    ph, pw = padded_shape(h, w, cfg.max_aspect, cfg.min_side)
    assert max(ph, pw) <= cfg.max_side and min(ph, pw) >= cfg.min_side
    if min(shape) > 1 and (h, w) != shape:  # one scale for both sides (a side may round to 1 pixel)
        assert abs(h / shape[0] - w / shape[1]) <= 1.0 / shape[0] + 1.0 / shape[1]


def test_working_size_of_the_issue_strip():
    loaded = from_pixels(strip(5, 4000))
    assert loaded.pixels.shape == (2, 1536, 3)  # 0.384 x both sides, not 32 x 6144 stretched
    padded, _ = pad_to_aspect(loaded.pixels, 4.0, 32)
    assert padded.shape == (384, 1536, 3)


def test_what_every_view_becomes_inside_the_models():
    """Every view of every shape, through each model's own resize rule, keeps both sides >= 8
    pixels: GroundingDINO (tiny zoo 128/128, real 800/1333), SAM's ResizeLongestSide
    (tiny 128, real 1024), LLaVA (each view padded to a square first, ``llava_image.pad_to_square``,
    so its processor's resize and crop see a square), open_clip (a plain resize to its square). At the default bounds the worst
    view is 16 x 132 (aspect 8.25): 16 x 127 in the tiny GroundingDINO, 160 x 1333 in the real one,
    16 x 128 in the tiny SAM, 124 x 1024 in the real one."""
    from segment_anything.utils.transforms import ResizeLongestSide
    from transformers.image_transforms import get_size_with_aspect_ratio

    cfg = EngineConfig()
    for shape in SHAPES:
        loaded = from_pixels(strip(*shape), cfg.max_side, cfg.min_side, cfg.max_aspect)
        padded, _ = pad_to_aspect(loaded.pixels, cfg.max_aspect, cfg.min_side)
        for v in views(*padded.shape[:2], SPLITS):
            for short, long in [(128, 128), (800, 1333)]:
                assert min(get_size_with_aspect_ratio((v.height, v.width), short, long)) >= 8, (shape, v)
            for long in (128, 1024):
                assert min(ResizeLongestSide.get_preprocess_shape(v.height, v.width, long)) >= 8, (shape, v)
            # LLaVA: the view padded to a square of its long side; the bound keeps the view's own
            # short side at >= 1/8.25 of that square (>= 40 of LLaVA's 336 pixels)
            assert 336 * max(v.height, v.width) / min(v.height, v.width) <= 336 * 8.25, (shape, v)


def test_config_validates_max_aspect():
    for bad in (0.5, 0.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="max_aspect"):
            EngineConfig(max_aspect=bad)
    assert apply_overrides(EngineConfig(), ["max_aspect=8"]).max_aspect == 8


def test_read_image_of_the_issue_strip(tmp_path):
    Image.fromarray(strip(5, 4000)).save(tmp_path / "thin.png")
    img = read_image(tmp_path / "thin.png")
    assert img.pixels.shape == (2, 1536, 3) and img.original_size == (5, 4000)


# -- end to end: the tiny zoo's real architectures ------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(tiny_zoo):
    from int_engine.models.load import load_models

    return load_models(EngineConfig().models, tiny_zoo)


def fast_config(**kw) -> EngineConfig:
    return apply_overrides(EngineConfig(iterations=1, max_new_tokens=8, **kw), ["models.inpaint.options.steps=2"])


@pytest.mark.parametrize("shape", [(1, 700), (700, 1), (3, 5000), (33, 132), (1, 1)])
def test_extreme_shapes_run_on_the_tiny_zoo(tiny_models, shape):
    r = IntEngine(fast_config(), models=tiny_models).segment(strip(*shape, seed=sum(shape)))
    assert r.soft.shape == shape and r.soft.dtype == np.float32
    assert 0.0 <= r.soft.min() and r.soft.max() <= 1.0
    assert r.binary.shape == shape and r.binary.dtype == bool
    assert r.iteration_masks[0].shape == tuple(r.trace.working_size)
    if max(shape) / min(shape) > 4:
        assert any(c.startswith("padded ") for c in r.trace.conversions)


# -- the padding never becomes part of the object ------------------------------------------------

WORLD = ColourWorld([Thing("bark", (120, 80, 40), kind="background"), Thing("frog", (70, 140, 50))])
H, W = 16, 480  # aspect 30: padded to PH x W = 120 x 480, the strip at rows 52..67
PH = W // 4


def frog_at_the_edge():
    """A frog on the strip's bottom edge, right next to the padding below it."""
    frog = np.zeros((H, W), bool)
    frog[6:, 200:280] = True
    return compose(WORLD, "bark", [("frog", frog)], H, W, seed=3)


class GreedySegmenter(ScriptedSegmenter):
    """A segmenter that claims every pixel of every view, the padding included."""

    def _one(self, r):
        return np.ones(r.image.shape[:2], np.float32)


def padding_pixels(frame: np.ndarray) -> np.ndarray:
    """The padded rows of the PH x W frame around the H-row strip: [(PH - H) * W, 3]."""
    top = (PH - H) // 2
    return np.concatenate([frame[:top], frame[top + H :]]).reshape(-1, 3)


@pytest.mark.parametrize("greedy", [False, True])
def test_padding_never_leaks_into_the_mask(greedy):
    scene = frog_at_the_edge()
    models = scripted_models(WORLD)
    if greedy:
        models.segmenter = GreedySegmenter(WORLD)
    rec = Recorder(models)
    cfg = EngineConfig(iterations=2, reweight_w=0.3)
    r = IntEngine(cfg, models=rec.wrapped()).segment(scene.image)
    assert r.soft.shape == (H, W) and all(m.shape == (H, W) for m in r.iteration_masks)
    # iteration 2's detector sees X_2 = w·X·M_1 + (1 − w)·X_1 (eq 12): had M_1 been > 0 anywhere
    # in the padding, the padding there would be brighter than (1 − w) times the fill
    first, second = rec.of("detector", "detect")[:2]
    whole_1, whole_2 = first.args[0][0], second.args[0][0]
    assert whole_1.shape[:2] == (PH, W) and whole_2.shape[:2] == (PH, W)
    fill = padding_pixels(whole_1)
    assert (fill == fill[0]).all()
    expected = np.clip(np.round((1 - cfg.reweight_w) * fill[0].astype(np.float32)), 0, 255).astype(np.uint8)
    assert (np.abs(padding_pixels(whole_2).astype(int) - expected.astype(int)) <= 1).all()
    # the VLM sees the original image, padding and all, in every iteration (SPEC step 10): asked
    # once, greedy, its answers serve both iterations
    (vlm,) = rec.of("vlm", "generate")
    assert np.array_equal(padding_pixels(vlm.args[0][0]), fill)
    if not greedy:
        # the frog on the edge is still found, and nothing else (recall is lower on the row next
        # to the padding: there the frog is cut by a border, as at any image border in SAM)
        gt, found = scene.gt("frog"), r.binary
        assert (found & gt).sum() / gt.sum() > 0.6 and (found & gt).sum() / found.sum() > 0.9


# -- the CLI, as the issue's user ran it ---------------------------------------------------------


def test_cli_segments_a_5_by_4000_png(tiny_zoo, tmp_path):
    Image.fromarray(strip(5, 4000)).save(tmp_path / "thin.png")
    code = main(
        [
            "segment",
            str(tmp_path / "thin.png"),
            "--out",
            str(tmp_path / "out"),
            "--models",
            str(tiny_zoo),
            "--iterations",
            "1",
            "--set",
            "max_new_tokens=8",
            "--set",
            "models.inpaint.options.steps=2",
            "--quiet",
        ]
    )
    assert code == 0
    for f in ("soft.png", "binary.png", "overlay.png"):
        with Image.open(tmp_path / "out" / "thin" / f) as im:
            assert im.size == (4000, 5), f
    trace = json.loads((tmp_path / "out" / "thin" / "trace.json").read_text())
    assert trace["original_size"] == [5, 4000] and any(c.startswith("padded ") for c in trace["conversions"])
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["succeeded"] == 1
