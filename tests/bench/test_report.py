"""bench/report.py and bench/compare.py on run folders made by hand (no models): the HTML page
(tables, charts, data-URI images, disjoint best/worst lists), metrics.csv, curves.npz, and
``--compare`` over N runs in Markdown, CSV and LaTeX."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from int_engine.bench.compare import compare, tex_escape
from int_engine.bench.datasets import Dataset, Pair
from int_engine.bench.metrics import PER_IMAGE_KEYS, DatasetMetrics, image_metrics
from int_engine.bench.report import write_reports
from int_engine.bench.synthetic import make_scene
from int_engine.cli import FATAL, main


def make_run(root: Path, n: int, failed: int = 0) -> tuple[Path, Dataset, dict[str, dict]]:
    """A run folder of ``n`` scored images (predictions of graded quality, so Sα ranks them) and
    ``failed`` failed ones, with results rows shaped as bench/run.py writes them."""
    img_dir, gt_dir, out = root / "img", root / "gt", root / "run"
    for d in (img_dir, gt_dir, out / "pred"):
        d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    pairs, done = [], {}
    for i in range(n + failed):
        name = f"scene-{i:02d}"
        image, gt = make_scene(100 + i, 48, 64)
        cv2.imwrite(str(img_dir / f"{name}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(gt_dir / f"{name}.png"), gt)
        pair = Pair(name, img_dir / f"{name}.jpg", gt_dir / f"{name}.png")
        pairs.append(pair)
        base = {"name": name, "image": str(pair.image), "gt": str(pair.gt)}
        if i >= n:
            done[name] = {**base, "ok": False, "error": "cannot read as an image", "traceback": None}
            continue
        noise = 15 + 140 * i / max(n - 1, 1)  # later images are worse
        pred = np.clip(cv2.GaussianBlur(gt.astype(np.float32), (0, 0), 2) + rng.normal(0, noise, gt.shape), 0, 255)
        cv2.imwrite(str(out / "pred" / f"{name}.png"), pred.astype(np.uint8))
        done[name] = {
            **base,
            "ok": True,
            "error": None,
            "metrics": {},
            "iterations": 2,
            "final_iteration": i % 2,
            "picks": [f"pick{i}a", f"pick{i}b"],
            "soft_max": [0.9, 0.8],
            "binary_area": [0.1, 0.2],
            "empty_mask": False,
            "seconds": {"propose": 0.5 + i, "segment": 0.25},
            "seconds_total": 1.0 + i,
        }
    dataset = Dataset("Hand", "camouflaged animal", "cod", img_dir, gt_dir, pairs)
    return out, dataset, done


class Page(HTMLParser):
    """The parts of report.html the tests look at."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.tables: list[str] = []  # class of each <table>
        self.imgs: list[str] = []
        self.gallery: dict[str, list[str]] = {"best": [], "worst": []}
        self.svg_text: list[str] = []
        self._table_class: list[str] = []
        self._in_text = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "table":
            self.tables.append(a.get("class") or "")
            self._table_class.append(a.get("class") or "")
        elif tag == "img":
            self.imgs.append(a["src"] or "")
        elif tag == "tr" and "data-name" in a:
            kind = self._table_class[-1].split()[-1]
            self.gallery[kind].append(a["data-name"] or "")
        elif tag == "text":
            self._in_text += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table_class.pop()
        elif tag == "text":
            self._in_text -= 1

    def handle_data(self, data: str) -> None:
        if self._in_text:
            self.svg_text.append(data)


def _page(out: Path) -> Page:
    page = Page()
    page.feed((out / "report.html").read_text(encoding="utf-8"))
    return page


def test_report_has_html_tables_charts_and_decodable_images(tmp_path):
    out, dataset, done = make_run(tmp_path, 8, failed=1)
    summary = write_reports(out, dataset, dataset.pairs, done, wall=2.0, processed=9)
    text = (out / "report.html").read_text(encoding="utf-8")
    page = _page(out)
    assert "pre" not in page.tags and "| Dataset |" not in text  # no raw Markdown any more
    assert page.tables.count("grid") == 2  # metrics, seconds by stage
    assert f"<td>{summary['Dice']:.3f}</td>" in text and "<th>mDice ↑</th>" in text and "<th>Sα ↑</th>" in text
    assert page.tags.count("svg") == 3  # stage bars, PR curve, Fβ against threshold
    assert {"propose", "segment", "recall", "precision", "threshold"} <= {t.strip() for t in page.svg_text}
    assert f"max {summary['maxFm']:.3f}" in page.svg_text
    assert "cannot read as an image" in text and "http://" not in text and "https://" not in text
    assert len(page.imgs) == 4 * 8
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            im.load()
            assert im.size[1] == 140 and im.size[0] > 0


@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
def test_best_and_worst_lists_never_share_an_image(tmp_path, n):
    out, dataset, done = make_run(tmp_path, n)
    write_reports(out, dataset, dataset.pairs, done, wall=1.0, processed=n)
    g = _page(out).gallery
    n_best = min(math.ceil(n / 2), 6)
    assert len(g["best"]) == n_best and len(g["worst"]) == min(n - n_best, 6)
    assert not set(g["best"]) & set(g["worst"])
    sm = {
        p.name: image_metrics(cv2.imread(str(out / "pred" / f"{p.name}.png"), 0), cv2.imread(str(p.gt), 0))["Sm"]
        for p in dataset.pairs
    }
    assert [sm[x] for x in g["best"]] == sorted(sm.values(), reverse=True)[:n_best]
    if g["worst"]:
        assert max(sm[x] for x in g["worst"]) <= min(sm[x] for x in g["best"])
        assert [sm[x] for x in g["worst"]] == sorted(sm.values())[: len(g["worst"])]


def _csv_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_metrics_csv_has_a_row_per_image_with_its_metrics(tmp_path):
    out, dataset, done = make_run(tmp_path, 5, failed=1)
    summary = write_reports(out, dataset, dataset.pairs, done, wall=1.0, processed=6)
    rows = _csv_rows(out)
    assert [r["name"] for r in rows] == [p.name for p in dataset.pairs]
    assert {"MAE", "Sm", "meanEm", "wFm", "adpFm", "Dice", "IoU", "final_iteration", "pick", "seconds"} <= set(rows[0])
    for r, p in zip(rows[:5], dataset.pairs):
        want = image_metrics(cv2.imread(str(out / "pred" / f"{p.name}.png"), 0), cv2.imread(str(p.gt), 0))
        assert r["ok"] == "1" and all(float(r[k]) == want[k] for k in PER_IMAGE_KEYS)
        d = done[p.name]
        assert r["pick"] == d["picks"][d["final_iteration"]] and float(r["seconds"]) == d["seconds_total"]
        assert float(r["seconds_propose"]) == d["seconds"]["propose"]
    assert rows[5]["ok"] == "0" and rows[5]["Dice"] == "" and rows[5]["error"] == "cannot read as an image"
    for key in ("MAE", "Dice", "IoU", "Sm", "adpFm", "wFm"):
        assert np.mean([float(r[key]) for r in rows[:5]]) == pytest.approx(summary[key], abs=1e-12)


def test_resumed_run_rewrites_csv_and_curves_whole(tmp_path):
    out, dataset, done = make_run(tmp_path, 7)
    first = dict(list(done.items())[:3])  # the session that was killed after three images
    write_reports(out, dataset, dataset.pairs, first, wall=1.0, processed=3)
    assert len(_csv_rows(out)) == 3
    write_reports(out, dataset, dataset.pairs, done, wall=1.0, processed=4)
    names = [r["name"] for r in _csv_rows(out)]
    assert names == [p.name for p in dataset.pairs]  # complete, in order, once each
    acc = DatasetMetrics()
    for p in dataset.pairs:
        acc.add(cv2.imread(str(out / "pred" / f"{p.name}.png"), 0), cv2.imread(str(p.gt), 0))
    with np.load(out / "curves.npz") as saved:
        assert set(saved.files) == {"thresholds", "precision", "recall", "fmeasure", "emeasure"}
        for key, want in acc.curves().items():
            np.testing.assert_array_equal(saved[key], want)
        summary = json.loads((out / "summary.json").read_text())
        assert saved["fmeasure"].max() == pytest.approx(summary["maxFm"], abs=1e-15)
        assert np.all(np.diff(saved["thresholds"]) > 0) and saved["recall"][0] == 1.0


def test_a_run_with_nothing_scored_still_reports(tmp_path):
    out, dataset, done = make_run(tmp_path, 0, failed=2)
    (out / "curves.npz").write_bytes(b"stale")
    summary = write_reports(out, dataset, dataset.pairs, done, wall=1.0, processed=2)
    assert summary["scored"] == 0 and "Dice" not in summary and not (out / "curves.npz").exists()
    assert len(_csv_rows(out)) == 2 and "cannot read as an image" in (out / "report.html").read_text()


def _fake_run(path: Path, dataset: str, values: dict[str, float], ips: float) -> Path:
    path.mkdir(parents=True)
    summary = {"dataset": dataset, "scored": 10, **values, "throughput": {"images_per_s": ips}}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def _three_runs(tmp_path: Path) -> list[Path]:
    full = dict(MAE=0.05, adpFm=0.7, meanEm=0.8, Sm=0.81, wFm=0.6, maxFm=0.75, Dice=0.72, IoU=0.61)
    return [
        _fake_run(tmp_path / "base_run", "COD10K", full, 1.5),
        _fake_run(tmp_path / "no-smg", "COD10K", {**full, "MAE": 0.04, "Sm": 0.79, "Dice": 0.74}, 1.7),
        # a run from before Dice / IoU existed: those cells are blank, not an error
        _fake_run(tmp_path / "old", "COD10K", {k: v for k, v in full.items() if k not in ("Dice", "IoU")}, 1.2),
    ]


def test_compare_n_runs_to_markdown_csv_latex(tmp_path):
    runs = _three_runs(tmp_path)
    md = compare(runs, tmp_path / "cmp")
    assert md == (tmp_path / "cmp" / "compare.md").read_text(encoding="utf-8")
    lines = md.splitlines()
    assert lines[0].startswith("| Run | Dataset | Images | M ↓ | Fβ ↑ | Eφ ↑ | Sα ↑ |") and len(lines) == 2 + 3
    assert "**0.040**" in lines[3] and "**0.810**" in lines[2] and "**0.810**" in lines[4]  # best M; tied best Sα
    assert "| — | — |" in lines[4]  # the old run has no Dice / IoU
    with open(tmp_path / "cmp" / "compare.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == [str(r) for r in runs]
    assert float(rows[1]["Dice"]) == 0.74 and rows[2]["Dice"] == "" and float(rows[0]["images_per_s"]) == 1.5
    tex = (tmp_path / "cmp" / "compare.tex").read_text(encoding="utf-8")
    assert "\\begin{tabular}" in tex and tex.count(r" \\") == 4 and "\\textbf{0.040}" in tex
    assert tex_escape(str(runs[0])) in tex and "base\\_run" in tex
    with pytest.raises(ValueError, match="at least two"):
        compare(runs[:1])
    with pytest.raises(ValueError, match="no summary.json"):
        compare([runs[0], tmp_path / "missing"])


def test_compare_cli_takes_n_runs_and_refuses_one(tmp_path, capsys):
    runs = [str(r) for r in _three_runs(tmp_path)]
    assert main(["bench", "--compare", *runs, "--compare-out", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().out == (tmp_path / "o" / "compare.md").read_text(encoding="utf-8")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["compare.csv", "compare.md", "compare.tex"]
    assert main(["bench", "--compare", runs[0]]) == FATAL
    assert "at least two run folders" in capsys.readouterr().err
    assert main(["bench", "--compare", runs[0], str(tmp_path / "nope")]) == FATAL
    assert "no summary.json" in capsys.readouterr().err
