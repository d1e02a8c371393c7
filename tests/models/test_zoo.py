"""The tiny zoo: every model built, described in the manifest, and loaded back through the
same loader a real checkpoint uses, with the hub switched off."""

import json
import os

import numpy as np
import pytest

from int_engine.config import EngineConfig, ModelsConfig
from int_engine.errors import ConfigError, ModelLoadError
from int_engine.models.load import load_models, load_role
from int_engine.models.zoo import checksum, read_manifest, verify_zoo
from int_engine.protocols import VLM, Clip, Detector, Inpainter, Segmenter

ROLES = ("vlm", "inpaint", "detector", "segmenter", "clip")


def test_manifest_lists_every_model_with_format_params_and_checksum(tiny_zoo):
    m = read_manifest(tiny_zoo)
    assert set(m["models"]) == set(ROLES)
    for role, entry in m["models"].items():
        assert entry["params"] > 1000 and entry["format"]
        assert entry["sha256"] == checksum(tiny_zoo / role)
    assert verify_zoo(tiny_zoo) == []


def test_build_is_fast_and_deterministic(tiny_zoo, tmp_path):
    from int_engine.models.zoo import build_tiny_zoo

    m = build_tiny_zoo(tmp_path / "again", seed=0)
    total = sum(e["build_seconds"] for e in m["models"].values())
    assert total < 60, f"building the zoo took {total:.1f}s"
    first = read_manifest(tiny_zoo)["models"]
    assert {r: e["sha256"] for r, e in m["models"].items()} == {r: e["sha256"] for r, e in first.items()}


def test_every_model_loads_offline_through_the_real_loader(tiny_zoo):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    models = load_models(ModelsConfig(), tiny_zoo)
    assert isinstance(models.vlm, VLM) and isinstance(models.inpainter, Inpainter)
    assert isinstance(models.detector, Detector) and isinstance(models.segmenter, Segmenter)
    assert isinstance(models.clip, Clip)


def test_a_changed_model_fails_verification(tiny_zoo, tmp_path):
    import shutil

    copy = tmp_path / "zoo"
    shutil.copytree(tiny_zoo, copy)
    cfg = json.loads((copy / "detector" / "config.json").read_text())
    cfg["num_queries"] = cfg["num_queries"] + 1
    (copy / "detector" / "config.json").write_text(json.dumps(cfg))
    assert verify_zoo(copy) == ["detector"]


@pytest.mark.parametrize("role", ROLES)
def test_missing_model_path_names_role_and_path(tmp_path, role):
    with pytest.raises(ModelLoadError) as info:
        load_role(ModelsConfig(), role, tmp_path / "nowhere")
    msg = str(info.value)
    assert msg.startswith(f"{role}:") and str(tmp_path / "nowhere" / role) in msg


def test_unknown_backend_and_missing_models_dir():
    cfg = EngineConfig.from_dict({"models": {"vlm": {"backend": "gpt"}}}).models
    with pytest.raises(ConfigError, match="unknown backend 'gpt'"):
        load_role(cfg, "vlm", "/tmp")
    with pytest.raises(ConfigError, match="no model path"):
        load_role(ModelsConfig(), "clip", None)


def test_telea_backend_needs_no_path(tiny_zoo):
    cfg = EngineConfig.from_dict({"models": {"inpaint": {"backend": "telea"}}}).models
    inp = load_role(cfg, "inpaint", None)
    img = np.full((16, 16, 3), 120, np.uint8)
    img[6:10, 6:10] = 0
    mask = np.zeros((16, 16), np.float32)
    mask[5:11, 5:11] = 1
    out = inp.inpaint([img], [mask], [""], [""], [0])[0]
    assert out[8, 8].min() > 60
