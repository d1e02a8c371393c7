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
    assert preset_config("gensam").active_splits == ("whole",)
    with pytest.raises(ConfigError, match="unknown preset"):
        preset_config("nope")


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
