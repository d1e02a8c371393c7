"""`int-engine segment` as a user runs it: outputs, hostile inputs, exit codes, determinism."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from int_engine.bench.synthetic import make_scene
from int_engine.cli import FATAL, main

FAST = ["--iterations", "2", "--set", "max_new_tokens=8", "--set", "models.inpaint.options.steps=2", "--quiet"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    scene, _ = make_scene(0, 72, 90)
    Image.fromarray(scene).save(d / "scene.png")
    Image.fromarray(scene).convert("RGBA").save(d / "rgba.png")
    Image.fromarray(scene).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(scene).convert("L").save(d / "grey.png")
    Image.fromarray((np.asarray(Image.fromarray(scene).convert("L")).astype(np.uint16) * 257)).save(d / "grey16.png")
    Image.new("RGB", (1, 1), (40, 80, 120)).save(d / "one.png")
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.png").write_text("not an image")
    (d / "cut.png").write_bytes((d / "scene.png").read_bytes()[:100])
    return d


def test_segment_writes_four_outputs_and_survives_bad_files(tiny_zoo, images, tmp_path, capsys):
    good = ["scene.png", "rgba.png", "cmyk.jpg", "grey.png", "grey16.png", "one.png"]
    bad = ["empty.jpg", "notes.png", "cut.png", "missing.png"]
    args = [str(images / n) for n in good[:3] + bad[:2] + good[3:] + bad[2:]]
    code = main(["segment", *args, "--out", str(tmp_path / "out"), "--models", str(tiny_zoo), *FAST])
    err = capsys.readouterr().err
    assert code == len(bad)
    for n in bad:
        assert any(line.startswith("error: ") and str(images / n) in line for line in err.splitlines())
    for n in good:
        folder = tmp_path / "out" / n.rsplit(".", 1)[0]
        with Image.open(images / n) as src:
            size = src.size
        for f in ("soft.png", "binary.png", "overlay.png"):
            with Image.open(folder / f) as im:
                assert im.size == size, (n, f)
        with Image.open(folder / "binary.png") as im:
            assert set(np.unique(np.asarray(im))) <= {0, 255}
        trace = json.loads((folder / "trace.json").read_text())
        assert len(trace["iterations"]) == 2 and trace["source"].endswith(n)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["succeeded"] == len(good) and {f["image"] for f in summary["failed"]} == {str(images / n) for n in bad}


def test_same_image_config_seed_give_byte_identical_pngs(tiny_zoo, images, tmp_path):
    for run in ("a", "b"):
        assert main(["segment", str(images / "scene.png"), "--out", str(tmp_path / run), "--models", str(tiny_zoo), *FAST]) == 0
    for f in ("soft.png", "binary.png", "overlay.png"):
        assert (tmp_path / "a" / "scene" / f).read_bytes() == (tmp_path / "b" / "scene" / f).read_bytes()


def test_default_models_build_the_tiny_zoo_once_with_a_warning(tiny_zoo, images, tmp_path, monkeypatch, capsys):
    from int_engine.models.cache import default_zoo_dir

    monkeypatch.setenv("INT_ENGINE_CACHE", str(tmp_path / "cache"))
    shutil.copytree(tiny_zoo, default_zoo_dir())  # as if built by an earlier run
    assert main(["segment", str(images / "scene.png"), "--out", str(tmp_path / "o"), *FAST]) == 0
    err = capsys.readouterr().err
    assert "tiny random-weight model zoo" in err and "meaningless" in err and "--models" in err


def test_bad_config_is_one_line_and_fatal(images, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("iterations: -1\n")
    assert main(["segment", str(images / "scene.png"), "--out", str(tmp_path / "o"), "--config", str(cfg)]) == FATAL
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(cfg) in err[0] and "iterations" in err[0]


def test_missing_models_dir_is_fatal_and_names_role_and_path(images, tmp_path, capsys):
    code = main(["segment", str(images / "scene.png"), "--out", str(tmp_path / "o"), "--models", str(tmp_path / "none")])
    assert code == FATAL
    assert str(tmp_path / "none") in capsys.readouterr().err


def test_console_script_is_installed(tmp_path):
    exe = shutil.which("int-engine") or str((__import__("pathlib").Path(sys.executable).parent / "int-engine"))
    out = subprocess.run(
        [exe, "sample", "--out", str(tmp_path / "s.png"), "--gt", str(tmp_path / "g.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    with Image.open(tmp_path / "s.png") as im:
        assert im.size == (320, 256) and im.mode == "RGB"
    with Image.open(tmp_path / "g.png") as gt:
        assert set(np.unique(np.asarray(gt))) == {0, 255}


def test_a_folder_expands_to_its_images_sorted(images, tmp_path, capsys):
    from int_engine.cli import expand_inputs

    got = expand_inputs([str(images), str(images / "scene.png")])
    names = [p.rsplit("/", 1)[1] for p in got]
    assert names[:-1] == sorted(n for n in names[:-1]) and "scene.png" in names[:-1] and names[-1] == "scene.png"
    assert "notes.png" in names  # chosen by suffix; it fails later with its own error line
    (tmp_path / "empty").mkdir()
    assert main(["segment", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == FATAL
    assert "no image files" in capsys.readouterr().err


def test_misspelt_backend_option_is_one_line_and_fatal_before_loading(images, tmp_path):
    import os
    from pathlib import Path

    exe = shutil.which("int-engine") or str(Path(sys.executable).parent / "int-engine")
    env = {**os.environ, "INT_ENGINE_CACHE": str(tmp_path / "cache")}
    out = subprocess.run(
        [
            exe,
            "segment",
            str(images / "scene.png"),
            "--out",
            str(tmp_path / "o"),
            "--set",
            "models.segmenter.options.bach_size=8",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    err = out.stderr.strip().splitlines()
    assert out.returncode == FATAL and len(err) == 1, out.stderr
    assert "bach_size" in err[0] and "'batch_size'" in err[0] and "Traceback" not in out.stderr
    assert not (tmp_path / "cache").exists()  # refused before the tiny zoo was even built


ONE = ["--iterations", "1", "--set", "max_new_tokens=8", "--set", "models.inpaint.options.steps=2", "--quiet"]


def test_out_holds_its_config_and_reruns_from_it_to_the_same_bytes(tiny_zoo, images, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["segment", str(images / "scene.png"), "--out", str(first), "--models", str(tiny_zoo), *ONE]) == 0
    env = json.loads((first / "env.json").read_text())
    assert env["int_engine_version"] and env["packages"]["torch"]
    capsys.readouterr()
    # no --models and none of the flags above: everything comes from the first run's config.yaml
    assert (
        main(["segment", str(images / "scene.png"), "--out", str(second), "--config", str(first / "config.yaml"), "--quiet"]) == 0
    )
    assert "tiny random-weight model zoo" not in capsys.readouterr().err  # the paths in config.yaml were used
    assert (second / "config.yaml").read_text() == (first / "config.yaml").read_text()
    for f in ("soft.png", "binary.png"):
        assert (second / "scene" / f).read_bytes() == (first / "scene" / f).read_bytes()
    assert len(json.loads((second / "scene" / "trace.json").read_text())["iterations"]) == 1


def test_non_empty_out_is_refused_unless_exist_ok(tiny_zoo, images, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "scene").mkdir(parents=True)
    (out / "scene" / "soft.png").write_bytes(b"an earlier run's file")
    code = main(["segment", str(images / "scene.png"), "--out", str(out), "--models", str(tiny_zoo), *ONE])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == FATAL and len(err) == 1
    assert str(out) in err[0] and "not empty" in err[0] and "--exist-ok" in err[0] and "--resume" in err[0]
    assert (out / "scene" / "soft.png").read_bytes() == b"an earlier run's file" and not (out / "config.yaml").exists()
    assert main(["segment", str(images / "scene.png"), "--out", str(out), "--models", str(tiny_zoo), "--exist-ok", *ONE]) == 0
    with Image.open(out / "scene" / "soft.png") as im:
        assert im.size == (90, 72)
    assert (out / "config.yaml").is_file() and (out / "scene" / "trace.json").is_file()


def test_resume_skips_complete_images_and_says_how_many(tiny_zoo, images, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["segment", str(images / "scene.png"), str(images / "grey.png"), "--out", str(out), "--models", str(tiny_zoo), *ONE]
    assert main(args) == 0
    (out / "grey" / "trace.json").unlink()  # as if killed while writing grey
    kept = (out / "scene" / "soft.png").stat().st_mtime_ns
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "1 of 2 images already done" in err and "skipped" in err
    assert (out / "scene" / "soft.png").stat().st_mtime_ns == kept and (out / "grey" / "trace.json").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == 1 and summary["succeeded"] == 2
    # asking for an output the folders lack re-does both
    assert main([*args, "--resume", "--save", "binary,rle"]) == 0
    assert "0 of 2 images already done" in capsys.readouterr().err
    assert (out / "scene" / "mask.rle.json").is_file() and (out / "grey" / "mask.rle.json").is_file()
    # another config would mix two runs' masks in one folder: refused, naming the config file
    code = main([*args[: -len(ONE)], "--iterations", "2", "--quiet", "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == FATAL and len(err) == 1 and str(out / "config.yaml") in err[0]


def test_save_rle_iterations_and_overlay_boxes(tiny_zoo, images, tmp_path):
    from pycocotools import mask as coco_mask

    from int_engine.io import BOX_COLOUR

    out = tmp_path / "out"
    save = "soft,binary,overlay,rle,iterations"
    assert main(["segment", str(images / "scene.png"), "--out", str(out), "--models", str(tiny_zoo), "--save", save, *FAST]) == 0
    folder = out / "scene"
    with Image.open(folder / "binary.png") as im:
        binary = np.asarray(im) > 0
    rle = json.loads((folder / "mask.rle.json").read_text())
    assert rle["size"] == [72, 90] and isinstance(rle["counts"], str)
    assert np.array_equal(coco_mask.decode(rle).astype(bool), binary)
    trace = json.loads((folder / "trace.json").read_text())
    assert (
        sorted(p.name for p in (folder / "iterations").iterdir())
        == sorted(f"{k}{kind}.png" for k in range(len(trace["iterations"])) for kind in ("", "_binary"))
        == ["0.png", "0_binary.png", "1.png", "1_binary.png"]
    )
    final = trace["final_iteration"]  # the segmentation eq 13 kept is binary.png
    with Image.open(folder / "iterations" / f"{final}_binary.png") as im:
        assert np.array_equal(np.asarray(im) > 0, binary)
    with Image.open(folder / "iterations" / f"{trace['final_iteration']}.png") as im, Image.open(folder / "soft.png") as soft:
        assert im.size == (90, 72) and np.array_equal(np.asarray(im), np.asarray(soft))  # eq 13 keeps that iteration's mask
    boxes = trace["iterations"][trace["final_iteration"]]["boxes"]
    assert boxes, "the tiny zoo's detector found nothing to draw"
    with Image.open(folder / "overlay.png") as im, Image.open(images / "scene.png") as src:
        over, image = np.asarray(im), np.asarray(src.convert("RGB"))
    edge = np.zeros(binary.shape, bool)  # working size = image size here, no padding: trace boxes are pixels
    for x0, y0, x1, y1 in boxes:
        left, top, right, bottom = int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)) - 1, int(np.ceil(y1)) - 1
        edge[top, left : right + 1] = edge[bottom, left : right + 1] = edge[top : bottom + 1, left] = edge[
            top : bottom + 1, right
        ] = True
    on_edge = np.all(over[edge] == BOX_COLOUR, axis=-1)
    assert on_edge.mean() > 0.9  # all but the picked name's letters, drawn over some of them
    assert np.any(over[edge] != image[edge], axis=-1).mean() > 0.9


def test_bad_save_name_is_fatal_and_lists_the_choices(images, tmp_path, capsys):
    code = main(["segment", str(images / "scene.png"), "--out", str(tmp_path / "o"), "--save", "soft,mask"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == FATAL and len(err) == 1
    assert "'mask'" in err[0] and "soft, binary, overlay, rle, iterations" in err[0]
    assert not (tmp_path / "o").exists()
