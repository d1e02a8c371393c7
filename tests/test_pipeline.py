"""The whole pipeline on the five real backends (tiny zoo): structure, shapes, determinism."""

import numpy as np
import pytest

from int_engine import IntEngine
from int_engine.bench.synthetic import make_scene
from int_engine.config import apply_overrides, EngineConfig
from int_engine.models.load import load_models
from int_engine.trace import STAGES


@pytest.fixture(scope="module")
def models(tiny_zoo):
    return load_models(EngineConfig().models, tiny_zoo)


def small_config(**kw):
    cfg = EngineConfig(iterations=2, max_new_tokens=12, **kw)
    return apply_overrides(cfg, ["models.inpaint.options.steps=2"])


def test_two_images_two_iterations_all_real_backends(models):
    engine = IntEngine(small_config(), models=models)
    for seed, (h, w) in enumerate([(96, 128), (80, 80)]):
        image, _ = make_scene(seed, h, w)
        r = engine.segment(image)
        assert r.soft.shape == (h, w) and r.soft.dtype == np.float32
        assert 0.0 <= r.soft.min() and r.soft.max() <= 1.0
        assert r.binary.shape == (h, w) and r.binary.dtype == bool
        t = r.trace
        assert len(t.iterations) == 2 and 0 <= t.final_iteration < 2
        for i, it in enumerate(t.iterations):
            assert it.iteration == i
            assert [v["name"] for v in it.views] == ["whole", "top", "bottom", "left", "right",
                                                     "top_left", "top_right", "bottom_left", "bottom_right"]
            assert it.pick and it.pick_source
            assert set(it.seconds) <= set(STAGES) and {"patches", "propose", "detect", "segment", "weight", "fuse"} <= set(it.seconds)
            assert len(it.mask_weights) == 9 and abs(sum(it.mask_weights) - 1.0) < 1e-6 or sum(it.mask_weights) == 0
            if it.pick_source == "negative mining":
                assert set(it.scores) == set(it.candidates) and len(it.view_picks) == 9
            for box in it.boxes:
                assert 0 <= box[0] <= box[2] <= w and 0 <= box[1] <= box[3] <= h
        assert np.array_equal(r.soft, np.asarray(r.iteration_masks[t.final_iteration]))


def test_same_image_config_and_seed_give_identical_masks(models):
    image, _ = make_scene(3, 64, 96)
    a = IntEngine(small_config(), models=models).segment(image)
    b = IntEngine(small_config(), models=models).segment(image)
    assert np.array_equal(a.soft, b.soft)
    assert [it.pick for it in a.trace.iterations] == [it.pick for it in b.trace.iterations]


def test_ablations_change_the_trace_as_documented(models):
    image, _ = make_scene(4, 64, 64)
    r = IntEngine(small_config(hcg=False, psnm=False, smg=False), models=models).segment(image)
    for it in r.trace.iterations:
        assert [v["name"] for v in it.views] == ["whole"]
        assert "inpaint" not in it.seconds and "score" not in it.seconds
        assert it.mask_weights == []
