"""The ``modern`` lineup end to end: its tiny zoo (Qwen3-VL, SDXL inpainting, GroundingDINO,
SAM 2.1, CLIP, SAM 3), loaded through the same code as real checkpoints, run by the CLI with
``--preset modern``, with and without SAM 3 in place of steps 7-8."""

import json

import numpy as np
import pytest
from PIL import Image

from int_engine.bench.synthetic import make_scene
from int_engine.cli import main
from int_engine.config import apply_overrides, preset_config
from int_engine.errors import ModelLoadError
from int_engine.models.check_role import check_models
from int_engine.models.load import load_models
from int_engine.models.zoo import build_tiny_zoo, is_complete_zoo, zoo_lineup

FAST = ["--iterations", "2", "--set", "max_new_tokens=8", "--set", "models.inpaint.options.steps=2", "--quiet"]
CONCEPT = ["--set", "models.concept.backend=sam3", "--set", "sam3_negatives=mined"]


@pytest.fixture(scope="module")
def modern_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("modern") / "zoo"
    build_tiny_zoo(out, lineup="modern")
    return out


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray(make_scene(0, 72, 90)[0]).save(path)
    return path


def test_the_modern_zoo_is_its_own_lineup(modern_zoo, tiny_zoo):
    manifest = json.loads((modern_zoo / "manifest.json").read_text())
    assert manifest["lineup"] == "modern" and set(manifest["models"]) == {
        "vlm",
        "inpaint",
        "detector",
        "segmenter",
        "clip",
        "concept",
    }
    assert is_complete_zoo(modern_zoo, lineup="modern") and not is_complete_zoo(modern_zoo)
    assert is_complete_zoo(tiny_zoo) and not is_complete_zoo(tiny_zoo, lineup="modern")
    assert zoo_lineup(preset_config("modern").models) == "modern" and zoo_lineup(preset_config("paper").models) == "paper"


def test_modern_preset_loads_every_role_and_models_check_knows_each_layout(modern_zoo, tiny_zoo):
    cfg = apply_overrides(preset_config("modern"), ["models.concept.backend=sam3"])
    assert [c.status for c in check_models(cfg.models, modern_zoo)] == ["ok"] * 6
    formats = {c.role: c.detail for c in check_models(cfg.models, modern_zoo)}
    assert (
        "Qwen" in formats["vlm"]
        and "diffusers" in formats["inpaint"]
        and "sam2" in formats["segmenter"]
        and "sam3" in formats["concept"]
    )
    models = load_models(cfg.models, modern_zoo)
    names = {
        role: type(getattr(models, field)).__name__
        for role, field in [("vlm", "vlm"), ("inpaint", "inpainter"), ("segmenter", "segmenter"), ("concept", "concept")]
    }
    assert names == {
        "vlm": "HFQwenVLM",
        "inpaint": "DiffusersInpainter",
        "segmenter": "Sam2Segmenter",
        "concept": "Sam3ConceptSegmenter",
    }
    # the paper's files under the modern preset: the check names the role and what is wrong
    checks = {c.role: c for c in check_models(cfg.models, tiny_zoo)}
    assert checks["segmenter"].status == "MISSING" and "segmenter" in checks["segmenter"].line()
    with pytest.raises(ModelLoadError, match="vlm"):
        load_models(preset_config("modern").models, tiny_zoo)


@pytest.mark.parametrize("extra", [[], CONCEPT], ids=["sam2", "sam3-mined"])
def test_segment_runs_end_to_end_with_the_modern_preset(modern_zoo, scene, tmp_path, extra):
    out = tmp_path / "out"
    assert main(["segment", str(scene), "--preset", "modern", "--models", str(modern_zoo), "--out", str(out), *FAST, *extra]) == 0
    mask = np.asarray(Image.open(next(out.rglob("binary.png"))))
    assert mask.shape[:2] == (72, 90)
    trace = json.loads(next(out.rglob("trace.json")).read_text())
    assert len(trace["iterations"]) == 2
    views = trace["iterations"][0]["views"]
    # SAM 3's path records each view's exemplars; SAM 2.1's its Spatial CLIP points
    assert all(("negative_boxes" in v) == bool(extra) and ("points" in v) != bool(extra) for v in views)


def test_bench_compares_paper_and_modern_on_the_synthetic_set(modern_zoo, tiny_zoo, tmp_path, capsys):
    common = ["--dataset", "synthetic", "--data-root", str(tmp_path / "data"), "--limit", "2", *FAST]
    assert main(["bench", *common, "--models", str(tiny_zoo), "--out", str(tmp_path / "paper")]) == 0
    assert main(["bench", *common, "--preset", "modern", "--models", str(modern_zoo), "--out", str(tmp_path / "modern")]) == 0
    capsys.readouterr()
    assert main(["bench", "--compare", str(tmp_path / "paper"), str(tmp_path / "modern")]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {tmp_path}")]
    assert [r.split("|")[1].strip() for r in rows] == [str(tmp_path / "paper"), str(tmp_path / "modern")]
    assert all(r.split("|")[3].strip() == "2" for r in rows)  # both ran the same 2 images


def test_models_check_tells_each_lineups_files_from_the_others(modern_zoo, tiny_zoo, capsys):
    """``models check`` reads each folder's model_type (diffusers: its pipeline class): the modern
    files under the paper's backends, and the paper's under the modern preset, are named, not ok."""
    assert main(["models", "check", str(modern_zoo), "--preset", "modern", "--set", "models.concept.backend=sam3"]) == 0
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()] == ["ok"] * 6
    assert main(["models", "check", str(modern_zoo)]) == 1
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "names 'qwen3_vl'; backend 'hf' reads llava" in lines["vlm"]
    assert "names 'StableDiffusionXLInpaintPipeline'; backend 'sd'" in lines["inpaint"]
    assert lines["detector"].split()[1] == "ok" and lines["segmenter"].split()[1] == "MISSING"
    assert main(["models", "check", str(tiny_zoo), "--preset", "modern"]) == 1
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "names 'llava'; backend 'qwen' reads qwen2_5_vl / qwen3_vl" in lines["vlm"]
    assert lines["segmenter"].split()[1] == "MISSING" and lines["inpaint"].split()[1] == "ok"  # SD2 through AutoPipeline


@pytest.mark.parametrize("role", ["segmenter", "concept", "inpaint"])
def test_models_check_takes_the_modern_backends_own_runtimes(modern_zoo, role, capsys):
    """SAM 2.1, SAM 3 and the diffusers inpainter compile in process (no exported graphs):
    ``compile`` is ok, ``onnx`` is refused with the runtimes they take, not with an export
    folder's requirements."""
    base = ["models", "check", str(modern_zoo), "--preset", "modern", "--set", "models.concept.backend=sam3"]
    assert main([*base, "--set", f"models.{role}.options.runtime=compile"]) == 0
    capsys.readouterr()
    assert main([*base, "--set", f"models.{role}.options.runtime=onnx"]) != 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(role))
    assert "INVALID" in line and "runtime must be one of eager, compile, got 'onnx'" in line
