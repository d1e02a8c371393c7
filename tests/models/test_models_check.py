"""``int-engine models check``: every role's backend, files and config, without loading weights."""

import functools
import json
import shutil

import pytest
import torch

from int_engine.cli import FATAL, main
from int_engine.config import EngineConfig, ModelsConfig
from int_engine.models import check_role as check_module
from int_engine.models.check_role import FILE_CHECKS, check_models
from int_engine.models.load import BACKENDS, PATHLESS, backend_class

ROLES = ("vlm", "inpaint", "detector", "segmenter", "clip")


def run_check(capsys, *argv: str) -> tuple[int, dict[str, list[str]], str]:
    """Exit code, role -> its line's words, stderr."""
    code = main(["models", "check", *argv])
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    return code, {line.split()[0]: line.split() for line in lines}, captured.err


@pytest.fixture
def zoo_copy(tiny_zoo, tmp_path):
    return shutil.copytree(tiny_zoo, tmp_path / "zoo")


def test_the_tiny_zoo_passes_with_one_line_per_role(tiny_zoo, capsys):
    code, lines, err = run_check(capsys, str(tiny_zoo))
    assert code == 0 and err == ""
    assert list(lines) == list(ROLES)
    for role, words in lines.items():
        assert words[1] == "ok" and words[3] == str(tiny_zoo / role)
    assert "(llava-hf LlavaForConditionalGeneration)" in " ".join(lines["vlm"])


@pytest.mark.parametrize(
    "removed",
    [
        "vlm/config.json",
        "inpaint/tokenizer/merges.txt",
        "detector/preprocessor_config.json",
        "segmenter/sam.pth",
        "clip/open_clip_config.json",
    ],
)
def test_a_missing_file_fails_naming_its_role_and_the_file(zoo_copy, removed, capsys):
    (zoo_copy / removed).unlink()
    role, name = removed.split("/", 1)
    code, lines, err = run_check(capsys, str(zoo_copy))
    assert code == 1 and f"not ready: {role}" in err
    assert lines[role][1] == "MISSING" and "missing" in lines[role] and name in " ".join(lines[role])
    assert all(words[1] == "ok" for r, words in lines.items() if r != role)


def test_a_truncated_json_file_fails(zoo_copy, capsys):
    (zoo_copy / "detector" / "config.json").write_text('{"model_type": "grounding-')
    code, lines, _ = run_check(capsys, str(zoo_copy))
    assert code == 1 and lines["detector"][1] == "MISSING"
    assert "config.json is not readable JSON" in " ".join(lines["detector"])


def test_a_sharded_checkpoint_missing_a_shard_fails(zoo_copy, capsys):
    vlm = zoo_copy / "vlm"
    (vlm / "model.safetensors").rename(vlm / "model-00001-of-00002.safetensors")
    index = {
        "metadata": {},
        "weight_map": {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"},
    }
    (vlm / "model.safetensors.index.json").write_text(json.dumps(index))
    code, lines, _ = run_check(capsys, str(zoo_copy))
    assert code == 1 and lines["vlm"][1] == "MISSING"
    line = " ".join(lines["vlm"])
    assert "model-00002-of-00002.safetensors" in line and "model-00001" not in line
    (vlm / "model-00002-of-00002.safetensors").write_bytes(b"")  # the shard arrives: the files are complete
    assert run_check(capsys, str(zoo_copy))[0] == 0


def test_no_weights_are_loaded(tiny_zoo, monkeypatch):
    def refusing(original):
        @functools.wraps(original)  # keeps load's signature: the option check reads it
        def refuse(*args, **kwargs):
            raise AssertionError("models check must not load a model")

        return refuse

    for role, backend in BACKENDS:
        cls = backend_class(role, backend)
        monkeypatch.setattr(cls, "load", classmethod(refusing(cls.load.__func__)))
    monkeypatch.setattr("torch.load", refusing(torch.load))
    assert [c.status for c in check_models(ModelsConfig(), tiny_zoo)] == ["ok"] * 5


def test_every_backend_with_files_has_a_file_check():
    assert set(BACKENDS) - set(PATHLESS) == set(FILE_CHECKS)


def test_a_config_file_with_paths_and_a_models_folder(tiny_zoo, tmp_path, capsys):
    cfg = tmp_path / "int.yaml"
    cfg.write_text(f"models:\n  inpaint: {{backend: telea}}\n  clip: {{path: {tiny_zoo / 'clip'}}}\n")
    code, lines, _ = run_check(capsys, str(cfg), "--models", str(tiny_zoo))
    assert code == 0 and " ".join(lines["inpaint"][1:]) == "ok telea (no model files)"
    # without --models, the roles that have no path of their own say so
    code, lines, _ = run_check(capsys, str(cfg))
    assert code == 1 and lines["clip"][1] == "ok"
    assert lines["vlm"][1] == "MISSING" and "no model path" in " ".join(lines["vlm"])


def test_a_bad_option_or_backend_is_invalid_and_fatal(tiny_zoo, tmp_path, capsys):
    cfg = tmp_path / "int.yaml"
    cfg.write_text("models:\n  segmenter: {options: {bach_size: 3}}\n  detector: {backend: owlvit}\n")
    code, lines, err = run_check(capsys, str(cfg), "--models", str(tiny_zoo))
    assert code == FATAL and "not ready: detector, segmenter" in err
    assert lines["segmenter"][1] == "INVALID" and "'batch_size'?" in " ".join(lines["segmenter"])
    assert lines["detector"][1] == "INVALID" and "unknown backend 'owlvit'" in " ".join(lines["detector"])
    assert lines["vlm"][1] == "ok"


def test_a_runtime_without_its_artifacts_folder_is_missing(tiny_zoo, tmp_path):
    cfg = EngineConfig.from_dict(
        {"models": {"segmenter": {"backend": "sam", "options": {"runtime": "onnx", "artifacts": str(tmp_path / "x")}}}}
    )
    (seg,) = [c for c in check_models(cfg.models, tiny_zoo) if c.role == "segmenter"]
    assert seg.status == "MISSING" and f"artifacts folder {tmp_path / 'x'}" in seg.detail


@pytest.mark.parametrize("text", ["models: [1, 2\n", "iterations: -1\n", "models: {vlm: {colour: red}}\n"])
def test_a_bad_config_file_is_one_line_and_fatal(tmp_path, capsys, text):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    code, lines, err = run_check(capsys, str(cfg))
    assert code == FATAL and lines == {}
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"error: {cfg}")


def test_a_missing_target_or_a_folder_with_models_is_fatal(tiny_zoo, tmp_path, capsys):
    code, _, err = run_check(capsys, str(tmp_path / "nowhere"))
    assert code == FATAL and "no such models directory or config file" in err
    code, _, err = run_check(capsys, str(tiny_zoo), "--models", str(tiny_zoo))
    assert code == FATAL and "--models only goes with a config file" in err


def test_check_role_lines_read_as_documented(tiny_zoo):
    line = check_module.check_role(ModelsConfig(), "vlm", tiny_zoo).line()
    assert line == f"vlm        ok       hf         {tiny_zoo / 'vlm'}  (llava-hf LlavaForConditionalGeneration)"


def test_a_path_for_a_backend_without_files_is_invalid(tiny_zoo):
    cfg = EngineConfig.from_dict({"models": {"inpaint": {"backend": "telea", "path": str(tiny_zoo / "inpaint")}}})
    (inpaint,) = [c for c in check_models(cfg.models, tiny_zoo) if c.role == "inpaint"]
    assert inpaint.status == "INVALID" and "remove models.inpaint.path" in inpaint.detail
