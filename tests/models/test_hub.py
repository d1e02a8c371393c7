"""Hugging Face repo ids as model paths: resolved from a local hub cache only (never the network),
loaded through the same backends as a local directory, one line when the cache lacks them; and
the INFO lines that say which model loaded from where, how, in how long."""

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from int_engine.cli import FATAL, main
from int_engine.config import EngineConfig, ModelsConfig
from int_engine.errors import ModelLoadError
from int_engine.log import get_logger
from int_engine.models.hub import hub_cache_dir, looks_like_repo_id, split_revision
from int_engine.models.load import load_models, load_role, role_path

SHA = "0123456789abcdef0123456789abcdef01234567"
ROLES = ("vlm", "inpaint", "detector", "segmenter", "clip")


def put_in_hub_cache(cache: Path, repo_id: str, src: Path, sha: str = SHA) -> Path:
    """Lay ``src`` out as huggingface_hub stores a download: files in ``blobs/<hash>``, the
    snapshot ``snapshots/<sha>/...`` of relative symlinks to them, ``refs/main`` = sha."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / sha
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, blob)
        link = snapshot / f.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(sha)  # no newline, as huggingface_hub writes it
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty hub cache selected through the environment, with the hub offline."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def clip_config(path: str) -> ModelsConfig:
    return EngineConfig.from_dict({"models": {"clip": {"backend": "open_clip", "path": path}}}).models


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("llava-hf/llava-1.5-13b-hf", True),
        ("IDEA-Research/grounding-dino-tiny@main", True),
        ("org/name@refs/pr/1", True),
        ("org/name@0123456789abcdef0123456789abcdef01234567", True),
        ("/ckpt/llava", False),  # absolute
        ("./org/name", False),  # explicitly relative
        ("~/org", False),
        ("ckpt/org/name", False),  # three parts: a folder
        ("llava", False),  # no namespace
        ("org/../name", False),
        ("org/a--b", False),  # '--' is reserved by the hub
        ("org/name.", False),
        ("", False),
    ],
)
def test_which_paths_read_as_repo_ids(spec, expected):
    assert looks_like_repo_id(spec) is expected


def test_split_revision():
    assert split_revision("org/name@v1.0") == ("org/name", "v1.0")
    assert split_revision("org/name") == ("org/name", None)


@pytest.mark.parametrize(
    "env",
    [
        {"HF_HUB_CACHE": "{tmp}/a", "HUGGINGFACE_HUB_CACHE": "{tmp}/b", "HF_HOME": "{tmp}/c"},
        {"HUGGINGFACE_HUB_CACHE": "{tmp}/b", "HF_HOME": "{tmp}/c"},
        {"HF_HOME": "{tmp}/c", "XDG_CACHE_HOME": "{tmp}/d"},
        {"XDG_CACHE_HOME": "{tmp}/d"},
        {},
    ],
)
def test_cache_dir_follows_the_environment_as_huggingface_hub_does(env, tmp_path, monkeypatch):
    names = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    # huggingface_hub fixes its cache dir when imported: ask a fresh interpreter with this env.
    theirs = subprocess.run(
        [sys.executable, "-c", "from huggingface_hub import constants; print(constants.HF_HUB_CACHE)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert str(hub_cache_dir()) == theirs


def test_a_cached_repo_loads_like_the_local_directory(tiny_zoo, hub_cache):
    snapshot = put_in_hub_cache(hub_cache, "tiny-org/tiny-clip", tiny_zoo / "clip")
    cfg = clip_config("tiny-org/tiny-clip")
    assert role_path(cfg, "clip", None) == snapshot
    assert (snapshot / "open_clip_config.json").is_symlink()  # the hub's layout, not a copy

    from_hub = load_role(cfg, "clip")
    local = load_role(ModelsConfig(), "clip", tiny_zoo)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    texts = ["a camouflaged animal", "background"]
    got = from_hub.image_text_similarity([image, image], texts)
    want = local.image_text_similarity([image, image], texts)
    assert np.asarray(got).shape == (2,) and np.allclose(got, want, atol=0, rtol=0)


def test_a_revision_picks_that_snapshot(tiny_zoo, hub_cache):
    snapshot = put_in_hub_cache(hub_cache, "tiny-org/tiny-clip", tiny_zoo / "clip")
    assert role_path(clip_config(f"tiny-org/tiny-clip@{SHA}"), "clip", None) == snapshot
    assert role_path(clip_config("tiny-org/tiny-clip@main"), "clip", None) == snapshot
    with pytest.raises(ModelLoadError) as info:
        role_path(clip_config("tiny-org/tiny-clip@v9"), "clip", None)
    assert "hf download tiny-org/tiny-clip --revision v9" in str(info.value)


def test_a_repo_missing_from_the_cache_is_one_line_naming_cache_and_command(hub_cache):
    with pytest.raises(ModelLoadError) as info:
        load_role(clip_config("llava-hf/llava-1.5-13b-hf"), "clip")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("clip: llava-hf/llava-1.5-13b-hf ")
    assert f"Hugging Face cache {hub_cache} " in msg
    assert "hf download llava-hf/llava-1.5-13b-hf" in msg and "huggingface-cli download llava-hf/llava-1.5-13b-hf" in msg
    assert not any(hub_cache.iterdir())  # offline means nothing was written to the cache either


def test_an_existing_local_path_wins_over_the_repo_id(tiny_zoo, hub_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_zoo / "clip", tmp_path / "tiny-org" / "tiny-clip")
    cfg = clip_config("tiny-org/tiny-clip")  # not in the cache: only the local folder can satisfy it
    assert role_path(cfg, "clip", None) == Path("tiny-org/tiny-clip")
    assert load_role(cfg, "clip").image_text_similarity([np.zeros((8, 8, 3), np.uint8)], ["x"]).shape == (1,)


def test_a_path_that_is_no_repo_id_is_left_to_the_backend(tmp_path):
    with pytest.raises(ModelLoadError, match=r"^clip: model path .*/no/such/dir does not exist"):
        load_role(clip_config(str(tmp_path / "no" / "such" / "dir")), "clip")


@pytest.fixture
def models_log(caplog, monkeypatch):
    """caplog on ``int_engine.models`` at INFO, whatever propagation an earlier test left set."""
    monkeypatch.setattr(get_logger(), "propagate", True)
    caplog.set_level(logging.INFO, logger="int_engine.models")
    return caplog


def test_loading_logs_one_line_per_role_with_backend_device_and_seconds(tiny_zoo, models_log):
    load_models(ModelsConfig(), tiny_zoo)
    lines = [r for r in models_log.records if r.name == "int_engine.models" and " loaded in " in r.getMessage()]
    assert [r.role for r in lines] == list(ROLES)
    backends = {"vlm": "hf", "inpaint": "sd", "detector": "gdino", "segmenter": "sam", "clip": "open_clip"}
    for r in lines:
        msg = r.getMessage()
        assert r.levelno == logging.INFO and msg.startswith(r.role)
        assert f"backend {backends[r.role]}," in msg and "dtype float32" in msg and "device cpu" in msg
        assert f"path {tiny_zoo / r.role}" in msg and r.seconds >= 0 and f"in {r.seconds:.2f}s" in msg


def test_a_repo_loaded_from_the_cache_is_logged_with_its_id(tiny_zoo, hub_cache, models_log):
    snapshot = put_in_hub_cache(hub_cache, "tiny-org/tiny-clip", tiny_zoo / "clip")
    load_role(clip_config("tiny-org/tiny-clip"), "clip")
    (line,) = [r.getMessage() for r in models_log.records if " loaded in " in r.getMessage()]
    assert f"path tiny-org/tiny-clip -> {snapshot}" in line


def test_building_the_tiny_zoo_is_logged_with_where_and_how_long(tmp_path, monkeypatch, models_log):
    import json

    from int_engine.models import cache

    def fake_build(out, seed=0, lineup="paper"):  # a complete manifest is all ensure_tiny_zoo looks at
        Path(out).mkdir(parents=True, exist_ok=True)
        manifest = {"version": cache.ZOO_VERSION, "seed": seed, "scale": "tiny", "models": {r: {} for r in ROLES}}
        (Path(out) / "manifest.json").write_text(json.dumps(manifest))

    monkeypatch.setattr(cache, "build_tiny_zoo", fake_build)
    target = cache.ensure_tiny_zoo(tmp_path / "zoo")
    built = [r for r in models_log.records if r.levelno == logging.WARNING]
    assert len(built) == 1 and str(target) in built[0].getMessage() and "built" in built[0].getMessage()
    assert "s (first use" in built[0].getMessage()
    models_log.clear()
    assert cache.ensure_tiny_zoo(tmp_path / "zoo") == target
    assert not [r for r in models_log.records if r.levelno >= logging.INFO]  # reused: nothing to say


def test_models_check_passes_a_config_naming_cached_repos(tiny_zoo, hub_cache, tmp_path, capsys):
    put_in_hub_cache(hub_cache, "tiny-org/tiny-clip", tiny_zoo / "clip")
    put_in_hub_cache(hub_cache, "tiny-org/tiny-sam", tiny_zoo / "segmenter")
    cfg = tmp_path / "int.yaml"
    cfg.write_text("models:\n  clip: {path: tiny-org/tiny-clip}\n  segmenter: {path: tiny-org/tiny-sam}\n")
    assert main(["models", "check", str(cfg), "--models", str(tiny_zoo)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5 and all(line.split()[1] == "ok" for line in out)
    clip_line = next(line for line in out if line.startswith("clip"))
    assert f"tiny-org/tiny-clip -> {hub_cache}" in clip_line


def test_models_check_names_a_repo_the_cache_lacks(tiny_zoo, hub_cache, tmp_path, capsys):
    cfg = tmp_path / "int.json"
    cfg.write_text('{"models": {"vlm": {"path": "llava-hf/llava-1.5-13b-hf"}}}')
    assert main(["models", "check", str(cfg), "--models", str(tiny_zoo)]) == 1
    out = capsys.readouterr().out.splitlines()
    vlm = next(line for line in out if line.startswith("vlm"))
    assert vlm.split()[1] == "MISSING" and str(hub_cache) in vlm and "hf download llava-hf/llava-1.5-13b-hf" in vlm
    assert sum(line.split()[1] == "ok" for line in out) == 4


def test_models_check_of_a_bad_config_is_fatal(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("models: [1, 2\n")
    assert main(["models", "check", str(cfg)]) == FATAL
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(cfg) in err[0]
