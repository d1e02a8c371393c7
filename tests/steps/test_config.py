import json

import pytest

from int_engine.config import EngineConfig, apply_overrides, preset_config
from int_engine.errors import ConfigError


def test_defaults_are_the_papers():
    c = EngineConfig()
    assert (c.task, c.iterations, c.reweight_w, c.eps, c.box_threshold, c.text_threshold) == (
        "camouflaged animal",
        4,
        0.3,
        1e-3,
        0.35,
        0.25,
    )
    assert c.active_splits == ("whole", "halves_h", "halves_v", "quarters")


def test_presets():
    assert preset_config("polyp").iterations == 6 and preset_config("polyp").task == "polyp"
    assert preset_config("skin").task == "skin lesion"
    assert preset_config("gensam").active_splits == ("whole",) and preset_config("gensam").box_source == "none"
    with pytest.raises(ConfigError, match="unknown preset"):
        preset_config("nope")


def test_the_default_is_the_paper_preset_with_the_authors_choices():
    """SPEC: the defaults follow the paper and, where it is silent, the authors' released code."""
    c = EngineConfig()
    assert c.preset == "paper" and preset_config("paper") == c
    assert (c.vlm_image, c.contrast_mask, c.inpaint_scope, c.box_source, c.view_boxes) == (
        "original",
        "support",
        "image",
        "detector",
        "own",
    )
    assert (c.points_rule, c.points_grid, c.points_threshold, c.clip_background) == ("threshold", 28, 0.9, True)
    assert (c.mask_score_input, c.mask_weighting, c.segmentation, c.select_weight, c.mask_combine) == (
        "canvas",
        "promac",
        "selected",
        0.7,
        "sum",
    )
    assert (c.reweight_base, c.reweight_w, c.temperature, c.contrast_support) == ("original", 0.3, 0.0, 1 / 255)
    from int_engine.config import CHOICES

    for name, values in CHOICES.items():  # every choice's first value is the default
        assert getattr(c, name) == values[0], name


def test_promac_is_five_views_and_the_vlms_box():
    p = preset_config("promac")
    assert p.preset == "promac" and p.active_splits == ("whole", "halves_h", "halves_v")
    assert p.box_source == "vlm" and not p.pnm and p.psnm and p.temperature == 0.2
    assert preset_config("cod", p).preset == "cod"  # the last preset applied is the one named


def test_a_preset_read_from_a_file_keeps_its_fields_and_the_files_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: promac\niterations: 2\n")
    c = EngineConfig.from_file(path)
    assert c.preset == "promac" and c.box_source == "vlm" and c.iterations == 2
    path.write_text("preset: promc\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*did you mean 'promac'"):
        EngineConfig.from_file(path)


@pytest.mark.parametrize(
    "field, value",
    [("segmentation", "union"), ("box_source", "dino"), ("vlm_image", "x"), ("points_rule", "top3"), ("preset", "nope")],
)
def test_a_choice_outside_its_values_is_refused_naming_them(field, value):
    with pytest.raises(ConfigError, match=field):
        apply_overrides(EngineConfig(), [f"{field}={value}"])


def test_temperature_and_levels_are_checked():
    for override in ("temperature=-0.1", "contrast_support=1.5", "select_weight=1", "points_grid=0", "points_threshold=0"):
        with pytest.raises(ConfigError):
            apply_overrides(EngineConfig(), [override])


def test_overrides_reach_nested_fields_and_merge_options():
    c = apply_overrides(
        EngineConfig(),
        ["iterations=2", "models.inpaint.options.steps=3", "models.inpaint.options.size=64", "models.inpaint.backend=telea"],
    )
    assert c.iterations == 2 and c.models.inpaint.options == {"steps": 3, "size": 64}
    assert c.models.inpaint.backend == "telea"


def test_file_round_trip_yaml_and_json(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("preset: polyp\nseed: 7\nmodels:\n  vlm:\n    path: /ckpt/llava\n")
    c = EngineConfig.from_file(y)
    assert (c.task, c.iterations, c.seed, c.models.vlm.path) == ("polyp", 6, 7, "/ckpt/llava")
    j = tmp_path / "c.json"
    j.write_text(json.dumps(c.to_dict()))
    assert EngineConfig.from_file(j) == c


@pytest.mark.parametrize(
    "text,message",
    [
        ("iterations: 0", "iterations"),
        ("bogus: 1", "unknown config key"),
        ("models: {vlm: {bogus: 1}}", "unknown config key"),
        ("splits: [whole, thirds]", "splits"),
        ("[1, 2]", "mapping"),
        ("iterations: [", "not valid YAML"),
        ("iterations: four", "config.iterations must be int"),
        ("reweight_w: yes", "config.reweight_w must be float"),
        ("models: {device: 0}", "config.models.device must be str"),
        ("models: {sam: 1}", "unknown config key"),
        ("models: {vlm: {options: 5}}", "options must be a mapping"),
    ],
)
def test_bad_config_files_name_the_file_and_problem(tmp_path, text, message):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        EngineConfig.from_file(p)
    assert message in str(info.value)
    assert str(p) in str(info.value) or message == "not valid YAML"


def test_bad_override():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(EngineConfig(), ["iterations"])


def test_a_seed_beyond_32_bits_is_refused_before_any_model_sees_it():
    # request_seed multiplies it by 1_000_003: a 1e30 seed crashed the inpainter's generator
    with pytest.raises(ConfigError, match="seed must be between -4294967295 and 4294967295"):
        EngineConfig(seed=10**30)
    assert EngineConfig(seed=2**32 - 1).seed == 2**32 - 1
