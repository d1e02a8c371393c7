"""`int-engine bench`: datasets, the run folder contract, resume after SIGKILL, broken files."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from int_engine.bench.datasets import DATASETS, find_dataset
from int_engine.bench.synthetic import make_scene, write_synthetic_dataset
from int_engine.cli import FATAL, main
from int_engine.config import EngineConfig
from int_engine.errors import ConfigError
from int_engine.run_info import resolved_config

FAST = ["--iterations", "1", "--set", "max_new_tokens=8", "--set", "models.inpaint.options.steps=2", "--quiet"]


def _touch_pair(img_dir: Path, gt_dir: Path, stem: str, gt_stem: str | None = None, ext: str = ".jpg"):
    img_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    image, gt = make_scene(len(stem), 40, 48)
    cv2.imwrite(str(img_dir / f"{stem}{ext}"), image)
    cv2.imwrite(str(gt_dir / f"{gt_stem or stem}.png"), gt)


@pytest.mark.parametrize(
    "key,img_rel,gt_rel,gt_suffix",
    [
        ("cod10k", "COD10K-v3/Test/Image", "COD10K-v3/Test/GT_Object", ""),
        ("cod10k", "TestDataset/COD10K/Imgs", "TestDataset/COD10K/GT", ""),
        ("camo", "CAMO-V.1.0-CVIU2019/Images/Test", "CAMO-V.1.0-CVIU2019/GT", ""),
        ("chameleon", "CHAMELEON/Imgs", "CHAMELEON/GT", ""),
        ("kvasir", "Kvasir-SEG/images", "Kvasir-SEG/masks", ""),
        ("cvc-colondb", "TestDataset/CVC-ColonDB/images", "TestDataset/CVC-ColonDB/masks", ""),
        ("isic", "ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth", "_segmentation"),
    ],
)
def test_standard_layouts_are_recognised_and_paired(tmp_path, key, img_rel, gt_rel, gt_suffix):
    stems = ["COD10K-CAM-1-Aquatic-1-BatFish-1", "COD10K-CAM-2-Terrestrial-23-Cat-2"] if key == "cod10k" else ["a1", "b2"]
    for s in stems:
        _touch_pair(tmp_path / img_rel, tmp_path / gt_rel, s, s + gt_suffix)
    _touch_pair(tmp_path / img_rel, tmp_path / "elsewhere", "lonely" if key != "cod10k" else "COD10K-CAM-3-x-9-y-3")
    if key == "cod10k":
        _touch_pair(tmp_path / img_rel, tmp_path / gt_rel, "COD10K-NonCAM-5-Background-1-Sky-7")
    ds = find_dataset(key, tmp_path)
    assert [p.name for p in ds.pairs] == [s + gt_suffix for s in stems]
    assert len(ds.unpaired_images) == 1 and ds.task == DATASETS[key].task
    # the dataset folder itself as --data-root works too
    first = Path(img_rel).parts[0]
    if first not in ("TestDataset",) and len(Path(img_rel).parts) > 1:
        assert len(find_dataset(key, tmp_path / first).pairs) == 2


def test_missing_dataset_names_the_expected_layout(tmp_path):
    with pytest.raises(ConfigError) as info:
        find_dataset("kvasir", tmp_path)
    assert "Kvasir-SEG/images/ + Kvasir-SEG/masks/" in str(info.value) and str(tmp_path) in str(info.value)
    with pytest.raises(ConfigError, match="unknown dataset"):
        find_dataset("coco", tmp_path)


def test_synthetic_scenes_are_seeded_and_extend(tmp_path):
    write_synthetic_dataset(tmp_path / "a", 3)
    write_synthetic_dataset(tmp_path / "b", 5)
    a, b = find_dataset("cod10k", tmp_path / "a"), find_dataset("cod10k", tmp_path / "b")
    assert len(a.pairs) == 3 and len(b.pairs) == 5
    for pa, pb in zip(a.pairs, b.pairs):
        assert pa.name == pb.name and pa.image.read_bytes() == pb.image.read_bytes()
    gt = cv2.imread(str(a.pairs[0].gt), cv2.IMREAD_GRAYSCALE)
    assert set(np.unique(gt)) == {0, 255} and 0.01 < (gt > 0).mean() < 0.5


def test_bench_synthetic_writes_the_run_folder_contract(tiny_zoo, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        [
            "bench",
            "--dataset",
            "synthetic",
            "--data-root",
            str(tmp_path / "data"),
            "--limit",
            "8",
            "--out",
            str(run),
            "--models",
            str(tiny_zoo),
            *FAST,
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| Dataset | M ↓ | Fβ ↑ | Eφ ↑ | Sα ↑ |" in printed
    rows = [json.loads(l) for l in (run / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(r["ok"] and r["name"] and r["picks"] for r in rows)
    preds = sorted((run / "pred").glob("*.png"))
    assert [p.stem for p in preds] == sorted(r["name"] for r in rows)
    for p in preds:
        gt = cv2.imread(str(tmp_path / "data" / "COD10K-v3/Test/GT_Object" / p.name), cv2.IMREAD_GRAYSCALE)
        assert cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape == gt.shape
    summary = json.loads((run / "summary.json").read_text())
    for key in ("MAE", "adpFm", "meanEm", "Sm", "wFm", "maxFm"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["scored"] == 8 and summary["failed"] == []
    # what was scored, and what pred/ holds: each image's segmentation, as the authors scored
    assert summary["score"] == "binary" and "segmentation" in (run / "summary.md").read_text()
    assert all(set(np.unique(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE))) <= {0, 255} for p in preds)
    # an empty mask is visible: per iteration in each row, and listed in the summary
    for r in rows:
        assert len(r["soft_max"]) == len(r["binary_area"]) == r["iterations"]
        assert all(0.0 <= m <= 1.0 for m in r["soft_max"]) and all(0.0 <= a <= 1.0 for a in r["binary_area"])
        assert r["empty_mask"] == (cv2.imread(str(run / "pred" / f"{r['name']}.png"), cv2.IMREAD_GRAYSCALE) < 128).all()
    assert summary["empty_masks"] == [r["name"] for r in rows if r["empty_mask"]]
    assert f"{len(summary['empty_masks'])} with an empty binary mask" in (run / "summary.md").read_text()
    t = summary["throughput"]
    assert (
        t["images_per_s"] > 0
        and t["peak_rss_mb"] > 100
        and {"propose", "detect", "segment"} <= set(t["seconds_per_image_by_stage"])
    )
    page = (run / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 * 8 and "http://" not in page and "https://" not in page
    assert page.count("soft max / binary area: ") == 8  # 8 images: best 4 and worst 4, none twice
    assert "<pre>" not in page and page.count("<svg") == 3
    # metrics.csv: a row per image, its figures averaging to the summary's
    with open(run / "metrics.csv", encoding="utf-8", newline="") as f:
        table = list(csv.DictReader(f))
    assert sorted(r["name"] for r in table) == sorted(r["name"] for r in rows)
    for key in ("MAE", "Sm", "adpFm", "wFm", "Dice", "IoU"):
        assert np.mean([float(r[key]) for r in table]) == pytest.approx(summary[key], abs=1e-9), key
    by_name = {r["name"]: r for r in rows}
    assert all(int(r["final_iteration"]) == by_name[r["name"]]["final_iteration"] for r in table)
    with np.load(run / "curves.npz") as curves:
        assert {"thresholds", "precision", "recall", "fmeasure"} <= set(curves.files)
        assert curves["fmeasure"].shape == (256,) and curves["fmeasure"].max() == pytest.approx(summary["maxFm"], abs=1e-12)
    assert (run / "summary.md").read_text().startswith("# int-engine bench: Synthetic")
    # model work per image-iteration (int_engine.work): 9 views through the detector, each view's map from CLIP
    w = summary["work_per_image_iteration"]
    assert (
        w["detector.images"] == 9
        and 9 <= w["clip.images"] <= 18
        and w["vlm.prefill_tokens"] > 0
        and "Work per image-iteration: " in (run / "summary.md").read_text()
    )


def test_summary_equals_pysodmetrics_on_the_saved_pngs(tiny_zoo, tmp_path):
    from py_sod_metrics import MAE, Emeasure, Fmeasure, Smeasure, WeightedFmeasure

    run = tmp_path / "run"
    assert (
        main(
            [
                "bench",
                "--dataset",
                "synthetic",
                "--data-root",
                str(tmp_path / "data"),
                "--limit",
                "3",
                "--out",
                str(run),
                "--models",
                str(tiny_zoo),
                *FAST,
            ]
        )
        == 0
    )
    fm, wfm, sm, em, mae = Fmeasure(), WeightedFmeasure(), Smeasure(), Emeasure(), MAE()
    for pred_path in sorted((run / "pred").glob("*.png")):
        pred = cv2.imread(str(pred_path), cv2.IMREAD_GRAYSCALE)
        gt = cv2.imread(str(tmp_path / "data/COD10K-v3/Test/GT_Object" / pred_path.name), cv2.IMREAD_GRAYSCALE)
        for m in (fm, wfm, sm, em, mae):
            m.step(pred=pred, gt=gt)
    ref = {
        "MAE": mae.get_results()["mae"],
        "adpFm": fm.get_results()["fm"]["adp"],
        "maxFm": fm.get_results()["fm"]["curve"].max(),
        "meanEm": em.get_results()["em"]["curve"].mean(),
        "Sm": sm.get_results()["sm"],
        "wFm": wfm.get_results()["wfm"],
    }
    # Dice / IoU in numpy: min-max normalised prediction > 0.5 against GT > 128, averaged over images
    dice, iou = [], []
    for pred_path in sorted((run / "pred").glob("*.png")):
        p = cv2.imread(str(pred_path), cv2.IMREAD_GRAYSCALE) / 255
        g = cv2.imread(str(tmp_path / "data/COD10K-v3/Test/GT_Object" / pred_path.name), cv2.IMREAD_GRAYSCALE) > 128
        b = (p - p.min()) / (p.max() - p.min()) > 0.5 if p.max() > p.min() else p > 0.5
        tp, fp, fn = (b & g).sum(), (b & ~g).sum(), (~b & g).sum()
        dice.append(2 * tp / (2 * tp + fp + fn))
        iou.append(tp / (tp + fp + fn))
    ref.update(Dice=np.mean(dice), IoU=np.mean(iou))
    summary = json.loads((run / "summary.json").read_text())
    for key, value in ref.items():
        assert summary[key] == pytest.approx(float(value), abs=1e-6), key


def test_broken_files_are_recorded_and_every_good_image_scored(tiny_zoo, tmp_path, capsys):
    images, masks = tmp_path / "img", tmp_path / "gt"
    for i in range(3):
        _touch_pair(images, masks, f"good{i}", ext=".png")
    (images / "empty.jpg").write_bytes(b"")
    (images / "text.png").write_text("no pixels here")
    (images / "cut.png").write_bytes((images / "good0.png").read_bytes()[:80])
    for stem in ("empty", "text", "cut"):
        cv2.imwrite(str(masks / f"{stem}.png"), np.zeros((40, 48), np.uint8))
    _touch_pair(images, masks, "badgt", ext=".png")
    (masks / "badgt.png").write_bytes(b"\x89PNG broken")
    run = tmp_path / "run"
    code = main(
        [
            "bench",
            "--dataset",
            "folder",
            "--images",
            str(images),
            "--masks",
            str(masks),
            "--out",
            str(run),
            "--models",
            str(tiny_zoo),
            *FAST,
        ]
    )
    assert code == 4
    summary = json.loads((run / "summary.json").read_text())
    assert summary["scored"] == 3
    failed = {Path(f["image"]).name: f["error"] for f in summary["failed"]}
    assert set(failed) == {"empty.jpg", "text.png", "cut.png", "badgt.png"}
    assert "empty file" in failed["empty.jpg"] and "badgt.png" in failed["badgt.png"]
    assert sorted(p.stem for p in (run / "pred").glob("*.png")) == ["good0", "good1", "good2"]
    md = (run / "summary.md").read_text()
    assert "4 failed" in md and "empty.jpg" in md


def test_an_existing_run_needs_resume_and_a_changed_config_is_refused(tiny_zoo, tmp_path, capsys):
    args = [
        "bench",
        "--dataset",
        "synthetic",
        "--data-root",
        str(tmp_path / "d"),
        "--limit",
        "2",
        "--out",
        str(tmp_path / "r"),
        "--models",
        str(tiny_zoo),
        *FAST,
    ]
    assert main(args) == 0
    assert main(args) == FATAL and "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0
    assert main(args + ["--resume", "--set", "reweight_w=0.5"]) == FATAL
    assert "different config" in capsys.readouterr().err


def test_compare_prints_a_row_per_run(tiny_zoo, tmp_path, capsys):
    base = [
        "bench",
        "--dataset",
        "synthetic",
        "--data-root",
        str(tmp_path / "d"),
        "--limit",
        "2",
        "--models",
        str(tiny_zoo),
        *FAST,
    ]
    assert main(base + ["--out", str(tmp_path / "a")]) == 0
    assert main(base + ["--out", str(tmp_path / "b"), "--ablation", "smg=off", "--iterations", "2", "--early-stop"]) == 0
    capsys.readouterr()
    assert main(["bench", "--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--compare-out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| Run | Dataset | Images | M ↓ |") and len(out) == 4
    for line, run in zip(out[2:], ("a", "b")):
        s = json.loads((tmp_path / run / "summary.json").read_text())
        assert line.startswith(f"| {tmp_path / run} | Synthetic | 2 |")
        assert all(f"{s[k]:.3f}" in line for k in ("MAE", "Sm", "Dice", "IoU"))
        assert f"| {s['iterations_per_image']['mean']:.2f} |" in line  # iterations per image, side by side
    a, b = (json.loads((tmp_path / r / "summary.json").read_text())["iterations_per_image"] for r in ("a", "b"))
    assert a == {"mean": 1.0, "histogram": {"1": 2}}
    assert sum(b["histogram"].values()) == 2 and set(b["histogram"]) <= {"1", "2"}  # early stop: 2 at most
    assert "Iterations per image: mean 1.00 (1: 2 images)." in (tmp_path / "a" / "summary.md").read_text()
    assert (tmp_path / "cmp" / "compare.tex").is_file() and (tmp_path / "cmp" / "compare.csv").is_file()


def test_bench_run_describes_itself(tiny_zoo, tmp_path):
    run = tmp_path / "run"
    assert (
        main(
            [
                "bench",
                "--dataset",
                "synthetic",
                "--data-root",
                str(tmp_path / "d"),
                "--limit",
                "1",
                "--out",
                str(run),
                "--models",
                str(tiny_zoo),
                *FAST,
                "--set",
                "reweight_w=0.25",
            ]
        )
        == 0
    )
    assert (run / "config.yaml").is_file() and (run / "env.json").is_file()
    engine_cfg = EngineConfig.from_dict(json.loads((run / "run.json").read_text())["config"])  # the engine's config
    assert engine_cfg.reweight_w == 0.25
    written = EngineConfig.from_file(run / "config.yaml")
    assert written == resolved_config(engine_cfg, tiny_zoo)
    assert written.models.role("segmenter").path == str((tiny_zoo / "segmenter").resolve())
    env = json.loads((run / "env.json").read_text())
    assert env["packages"]["pysodmetrics"] and env["python"]


def _bench_cmd(tiny_zoo, data, out, *extra):
    exe = str(Path(sys.executable).parent / "int-engine")
    # two images in flight: results land in waves of two, so a kill after the first wave is part-way
    return [
        exe,
        "bench",
        "--dataset",
        "synthetic",
        "--data-root",
        str(data),
        "--limit",
        "6",
        "--out",
        str(out),
        "--models",
        str(tiny_zoo),
        "--set",
        "max_in_flight=2",
        *FAST,
        *extra,
    ]


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_table(tiny_zoo, tmp_path):
    data = write_synthetic_dataset(tmp_path / "data", 6)
    full = subprocess.run(_bench_cmd(tiny_zoo, data, tmp_path / "full"), capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen(_bench_cmd(tiny_zoo, data, tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = tmp_path / "killed" / "results.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not results.exists() or len(results.read_text().splitlines()) < 2):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    from int_engine.bench.run import load_results

    done_before = len(load_results(tmp_path / "killed"))  # a line torn by the kill does not count
    assert 2 <= done_before < 6, "the run must be killed part-way"
    resumed = subprocess.run(
        _bench_cmd(tiny_zoo, data, tmp_path / "killed", "--resume"), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "full/summary.json").read_text())
    b = json.loads((tmp_path / "killed/summary.json").read_text())
    for key in ("MAE", "adpFm", "meanEm", "Sm", "wFm", "maxFm", "Dice", "IoU", "scored"):
        assert a[key] == b[key], key
    assert b["throughput"]["this_session_images"] == 6 - done_before
    names = [json.loads(l)["name"] for l in results.read_text().splitlines()]
    assert sorted(names) == sorted(set(names)) and len(names) == 6
    # metrics.csv of the resumed run: every image once, the same figures as the uninterrupted run's
    tables = []
    for run in ("full", "killed"):
        with open(tmp_path / run / "metrics.csv", encoding="utf-8", newline="") as f:
            tables.append({r["name"]: r for r in csv.DictReader(f)})
    assert sorted(tables[1]) == sorted(names)
    for name, row in tables[0].items():
        assert all(tables[1][name][k] == row[k] for k in ("MAE", "Sm", "Dice", "IoU", "final_iteration", "pick")), name
    with np.load(tmp_path / "full/curves.npz") as x, np.load(tmp_path / "killed/curves.npz") as y:
        np.testing.assert_array_equal(x["precision"], y["precision"])


def _bench(tiny_zoo, tmp_path, out, *extra):
    return main(
        ["bench", "--dataset", "synthetic", "--data-root", str(tmp_path / "data"), "--limit", "2", "--out", str(out)]
        + ["--models", str(tiny_zoo), *FAST, *extra]
    )


def test_score_soft_writes_the_soft_maps_and_a_resume_keeps_the_score(tiny_zoo, tmp_path, capsys):
    """``--score soft`` scores (and saves) each image's 8-bit soft map; the binary default scores the
    segmentation, the same images' binary masks; a resume under the other score is refused."""
    from int_engine.api import IntEngine
    from int_engine.bench.run_folder import read_gray

    assert _bench(tiny_zoo, tmp_path, tmp_path / "soft", "--score", "soft") == 0
    assert _bench(tiny_zoo, tmp_path, tmp_path / "binary") == 0
    soft = json.loads((tmp_path / "soft" / "summary.json").read_text())
    assert soft["score"] == "soft" and json.loads((tmp_path / "soft" / "run.json").read_text())["score"] == "soft"
    cfg = EngineConfig.from_file(tmp_path / "binary" / "config.yaml")
    with IntEngine(cfg, models_dir=tiny_zoo) as engine:
        for png in sorted((tmp_path / "binary" / "pred").glob("*.png")):
            image = next((tmp_path / "data" / "COD10K-v3/Test/Image").glob(png.stem + ".*"))
            r = engine.segment(image)
            assert np.array_equal(read_gray(png) > 127, r.binary)
            soft_png = read_gray(tmp_path / "soft" / "pred" / png.name)
            assert np.abs(soft_png.astype(int) - np.round(r.soft * 255).astype(int)).max() <= 1
    assert _bench(tiny_zoo, tmp_path, tmp_path / "soft", "--resume") == FATAL
    assert "different score" in capsys.readouterr().err


def test_trials_run_one_seed_each_and_report_mean_and_spread(tiny_zoo, tmp_path, capsys):
    """``--trials 2``: two complete runs, seeds s and s+1, and each metric's mean and sample std."""
    out = tmp_path / "trials"
    assert _bench(tiny_zoo, tmp_path, out, "--trials", "2", "--seed", "5", "--set", "temperature=0.7") == 0
    runs = [json.loads((out / f"trial-{k}" / "summary.json").read_text()) for k in range(2)]
    seeds = [EngineConfig.from_file(out / f"trial-{k}" / "config.yaml").seed for k in range(2)]
    assert seeds == [5, 6]
    agg = json.loads((out / "trials.json").read_text())
    assert agg["seeds"] == [5, 6] and agg["score"] == "binary" and agg["failed"] == [0, 0]
    for key in ("MAE", "Sm", "IoU"):
        values = [r[key] for r in runs]
        assert agg["metrics"][key]["trials"] == values
        assert agg["metrics"][key]["mean"] == pytest.approx(np.mean(values))
        assert agg["metrics"][key]["std"] == pytest.approx(np.std(values, ddof=1))
    printed = capsys.readouterr().out
    assert "2 trials" in printed and "±" in printed and printed == (out / "trials.md").read_text() + "\n"
