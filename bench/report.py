"""A run's scores from its saved predictions (metrics.csv, curves.npz), its summary (JSON,
Markdown in the paper's Table 1 layout) and its HTML report. ``run.py`` calls it at the end of
a session; it does not import ``run.py`` (the folder's names: ``run_folder.py``).

The HTML page is self-contained (no network): HTML tables, inline SVG charts (seconds per
stage, PR curve, Fβ against threshold) and PNG data URIs for the image gallery.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from ..io import overlay
from ..work import per_unit
from .datasets import Dataset, Pair
from .metrics import PER_IMAGE_KEYS, DatasetMetrics
from .run_folder import CURVES, METRICS_CSV, RUN_INFO, SUMMARY, read_gray

# (summary key, column title, lower is better)
TABLE = (("MAE", "M ↓", True), ("adpFm", "Fβ ↑", False), ("meanEm", "Eφ ↑", False), ("Sm", "Sα ↑", False))
EXTRAS = (("wFm", "wFβ ↑", False), ("maxFm", "maxFβ ↑", False), ("Dice", "mDice ↑", False), ("IoU", "mIoU ↑", False))
GALLERY_MAX = 6  # images per best / worst list


@dataclass
class Scores:
    """A run's figures from its saved prediction PNGs (PySODMetrics, ``bench/metrics.py``)."""

    summary: dict[str, float]  # SUMMARY_KEYS; empty when no image was scored
    per_image: dict[str, dict[str, float]]  # GT name -> PER_IMAGE_KEYS, for scored images
    curves: dict[str, np.ndarray] | None  # DatasetMetrics.curves(); None when no image was scored

    @property
    def scored(self) -> int:
        return len(self.per_image)


def dataset_metrics(out: Path, pairs: list[Pair], done: dict[str, dict]) -> Scores:
    """The dataset's metrics from the saved prediction PNGs (in dataset order).

    Computed again from pred/ rather than from the results lines, so that figures of a resumed
    run (or of rows written by an older version) come from one code path over the same files.
    """
    acc = DatasetMetrics()
    per_image: dict[str, dict[str, float]] = {}
    for pair in pairs:
        row = done.get(pair.name)
        if not row or not row["ok"]:
            continue
        m = acc.add(read_gray(out / "pred" / f"{pair.name}.png"), read_gray(pair.gt))
        per_image[pair.name] = {k: m[k] for k in PER_IMAGE_KEYS}
    if not per_image:
        return Scores({}, {}, None)
    return Scores(acc.summary(), per_image, acc.curves())


def write_metrics_csv(out: Path, pairs: list[Pair], done: dict[str, dict], per_image: dict[str, dict[str, float]]) -> Path:
    """RUN/metrics.csv: a row per recorded image in dataset order (each image once).

    Columns: name, ok, every PER_IMAGE_KEYS metric (blank for a failed image), final_iteration
    (0-based index of the iteration whose mask was kept) and its pick, iterations, seconds (first
    to last step of the image), seconds_<stage> (its share of each batch), error. Written whole
    (atomically) from results.jsonl and the saved PNGs, so a resumed run's file is complete.
    """
    rows = [done[p.name] for p in pairs if p.name in done]
    stages = sorted({s for r in rows if r["ok"] for s in r.get("seconds", {})})
    header = [
        "name",
        "ok",
        *PER_IMAGE_KEYS,
        "final_iteration",
        "pick",
        "iterations",
        "seconds",
        *(f"seconds_{s}" for s in stages),
        "error",
    ]
    path, tmp = out / METRICS_CSV, out / (METRICS_CSV + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in rows:
            m = per_image.get(r["name"], {})
            k, picks = r.get("final_iteration", -1), r.get("picks") or []
            pick = picks[k] if isinstance(k, int) and 0 <= k < len(picks) else ""
            writer.writerow(
                [
                    r["name"],
                    int(r["ok"]),
                    *(m.get(key, "") for key in PER_IMAGE_KEYS),
                    k if r["ok"] else "",
                    pick,
                    r.get("iterations", ""),
                    r.get("seconds_total", ""),
                    *(r.get("seconds", {}).get(s, "") for s in stages),
                    r.get("error") or "",
                ]
            )
    os.replace(tmp, path)
    return path


def write_curves(out: Path, curves: dict[str, np.ndarray] | None) -> Path | None:
    """RUN/curves.npz: ``thresholds, precision, recall, fmeasure, emeasure`` (float64 [256], see
    ``DatasetMetrics.curves``); removed when no image was scored, so a stale file never stays."""
    path = out / CURVES
    if curves is None:
        path.unlink(missing_ok=True)
        return None
    tmp = out / (CURVES + ".tmp.npz")
    np.savez(tmp, **curves)
    os.replace(tmp, path)
    return path


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_reports(
    out: Path,
    dataset: Dataset,
    pairs: list[Pair],
    done: dict[str, dict],
    wall: float,
    processed: int,
    work: dict[str, float] | None = None,
    image_iterations: int = 0,
) -> dict[str, Any]:
    """Score the saved predictions and write metrics.csv, curves.npz, summary.json, summary.md
    and report.html; returns the summary.

    ``work``: the models' ``int_engine.work`` counters this session added over its
    ``image_iterations`` (iterations of the images it finished); summed over the run's sessions."""
    scores = dataset_metrics(out, pairs, done)
    rows = [done[p.name] for p in pairs if p.name in done]
    ok = [r for r in rows if r["ok"]]
    stages: dict[str, float] = {}
    for r in ok:
        for stage, s in r["seconds"].items():
            stages[stage] = stages.get(stage, 0.0) + s
    latency = float(np.mean([r["seconds_total"] for r in ok])) if ok else 0.0
    sessions = _record_session(out, processed, wall, work, image_iterations)
    images_done = sum(x["images"] for x in sessions)
    counted = [x for x in sessions if x.get("work") is not None]  # sessions of older runs have none
    work_total: dict[str, float] = {}
    for x in counted:
        for k, v in x["work"].items():
            work_total[k] = work_total.get(k, 0.0) + v
    seconds = sum(x["seconds"] for x in sessions)
    summary = {
        "dataset": dataset.name,
        "task": dataset.task,
        "images": len(pairs),
        # what pred/ holds and the metrics scored: each image's segmentation (binary) or soft map
        "score": _scored_mask(out),
        "scored": scores.scored,
        "failed": [{"name": r["name"], "image": r["image"], "error": r["error"]} for r in rows if not r["ok"]],
        # images whose binary mask came out empty (rows written before this field count as non-empty)
        "empty_masks": [r["name"] for r in ok if r.get("empty_mask")],
        "unpaired_images": [str(p) for p in dataset.unpaired_images],
        "unpaired_gt": len(dataset.unpaired_gt),
        **scores.summary,
        "throughput": {
            # wall clock over every session of this run (images in flight together share it)
            "images_per_s": images_done / seconds if seconds > 0 else 0.0,
            "seconds_per_image": seconds / images_done if images_done else 0.0,
            # model and step time charged to each image (its share of every batch), by stage
            "seconds_per_image_by_stage": {k: v / len(ok) for k, v in sorted(stages.items())} if ok else {},
            # first step to last step of one image, waiting for its batches included
            "latency_seconds_per_image": latency,
            "this_session_images": processed,
            "this_session_images_per_s": processed / wall if wall > 0 and processed else 0.0,
            "peak_rss_mb": peak_rss_mb(),
        },
        # iterations each finished image ran: all of them, or fewer where early stop ended it
        "iterations_per_image": _iterations(ok),
        # what the models computed per image-iteration (UNet evaluations x latent pixels, VLM prefill
        # tokens, SAM encoder images, CLIP and detector images: int_engine.work), apart from speed
        "work_per_image_iteration": per_unit(work_total, sum(x.get("image_iterations", 0) for x in counted)),
    }
    write_metrics_csv(out, pairs, done, scores.per_image)
    write_curves(out, scores.curves)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(markdown(summary), encoding="utf-8")
    page = html_report(out, summary, pairs, done, scores.per_image, scores.curves)
    (out / "report.html").write_text(page, encoding="utf-8")
    return summary


def _record_session(
    out: Path, images: int, seconds: float, work: dict[str, float] | None = None, image_iterations: int = 0
) -> list[dict[str, Any]]:
    """Append this session's (images, wall seconds, work counters over its image-iterations) to
    RUN/sessions.jsonl; return all sessions."""
    path = out / "sessions.jsonl"
    if images:
        row: dict[str, Any] = {"images": images, "seconds": seconds}
        if work is not None:
            row.update(work=work, image_iterations=image_iterations)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def metric_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The paper's Table 1 row (M, Fβ, Eφ, Sα) plus wFβ, maxFβ, mDice, mIoU: (header, rows)."""
    cols = TABLE + EXTRAS
    return ["Dataset", *(c[1] for c in cols)], [[summary["dataset"], *(_fmt(summary.get(c[0])) for c in cols)]]


def stage_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Seconds per image by stage (each image's share of every batch): (header, rows)."""
    stages = summary["throughput"]["seconds_per_image_by_stage"]
    return ["stage", "s/image (its share of each batch)"], [[k, f"{v:.3f}"] for k, v in stages.items()]


def _iterations(ok: list[dict]) -> dict[str, Any]:
    """Mean and histogram ({iterations: images}) of the iterations the finished images ran."""
    runs = [int(r["iterations"]) for r in ok if isinstance(r.get("iterations"), int)]
    histogram = {str(n): runs.count(n) for n in sorted(set(runs))}
    return {"mean": float(np.mean(runs)) if runs else 0.0, "histogram": histogram}


def _iterations_line(summary: dict[str, Any]) -> str:
    it = summary.get("iterations_per_image") or {"mean": 0.0, "histogram": {}}
    spread = ", ".join(f"{n}: {k} images" for n, k in it["histogram"].items()) or "none"
    return f"Iterations per image: mean {it['mean']:.2f} ({spread})."


def _counts(summary: dict[str, Any]) -> str:
    return (
        f"{summary['scored']} of {summary['images']} images scored; {len(summary['failed'])} failed"
        + (f"; {len(summary['unpaired_images'])} images without GT" if summary["unpaired_images"] else "")
        + f"; {len(summary['empty_masks'])} with an empty binary mask."
    )


def _throughput(summary: dict[str, Any]) -> str:
    t = summary["throughput"]
    return (
        f"Throughput: {t['images_per_s']:.3f} images/s ({t['seconds_per_image']:.2f} s/image wall clock; "
        f"latency {t['latency_seconds_per_image']:.2f} s/image in flight), peak RSS {t['peak_rss_mb']:.0f} MB."
    )


def _work(summary: dict[str, Any]) -> str:
    return (
        "Work per image-iteration: "
        + (", ".join(f"{k} {v:.4g}" for k, v in summary.get("work_per_image_iteration", {}).items()) or "not counted")
        + "."
    )


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


SCORED_MEANING = {
    "binary": "segmentation (the binary mask eq 13 chose, as the authors scored)",
    "soft": "soft map (8-bit)",
}


def markdown(summary: dict[str, Any]) -> str:
    """RUN/summary.md: the metric table, counts, throughput, work and the per-stage table."""
    lines = [
        f'# int-engine bench: {summary["dataset"]} (task: "{summary["task"]}")',
        "",
        f"Scored: each image's {SCORED_MEANING.get(summary.get('score', 'soft'), summary.get('score'))}.",
        "",
        *_md_table(*metric_table(summary)),
        "",
        _counts(summary),
        "",
        _throughput(summary),
        "",
        _iterations_line(summary),
        "",
        _work(summary),
        "",
        *_md_table(*stage_table(summary)),
    ]
    if summary["failed"]:
        lines += ["", "Failed images:", ""] + [f"- `{f['image']}`: {f['error']}" for f in summary["failed"]]
    return "\n".join(lines) + "\n"


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "grid") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def svg_bars(items: Sequence[tuple[str, float]], unit: str, width: int = 560) -> str:
    """A horizontal bar chart as inline SVG: one bar per (label, value >= 0), value printed."""
    if not items:
        return ""
    bar, gap, left, right = 18, 6, 90, 90
    top = max((v for _, v in items), default=0.0) or 1.0
    height = len(items) * (bar + gap) + gap
    parts = [f'<svg width="{width}" height="{height}" role="img">']
    for i, (label, v) in enumerate(items):
        y = gap + i * (bar + gap)
        w = (width - left - right) * max(v, 0.0) / top
        parts.append(
            f'<text x="{left - 6}" y="{y + 13}" text-anchor="end" font-size="12">{html.escape(label)}</text>'
            f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar}" fill="#4a7fb5"><title>{v:.4g} {unit}</title></rect>'
            f'<text x="{left + w + 4:.1f}" y="{y + 13}" font-size="12">{v:.3f} {html.escape(unit)}</text>'
        )
    return "".join(parts) + "</svg>"


def svg_curve(
    x: np.ndarray, y: np.ndarray, xlabel: str, ylabel: str, mark: tuple[float, float, str] | None = None, size: int = 300
) -> str:
    """A line plot on [0, 1] x [0, 1] as inline SVG, with axes, ticks and an optional marked point."""
    pad = 40
    span = size - 2 * pad

    def px(u: float, v: float) -> tuple[float, float]:
        return pad + span * u, size - pad - span * v

    parts = [
        f'<svg width="{size}" height="{size}" role="img">',
        f'<rect x="{pad}" y="{pad}" width="{span}" height="{span}" fill="none" stroke="#999"/>',
    ]
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        (gx, gy0), (_, gy1) = px(t, 0), px(t, 1)
        parts.append(
            f'<line x1="{gx:.1f}" y1="{gy0:.1f}" x2="{gx:.1f}" y2="{gy1:.1f}" stroke="#eee"/>'
            f'<text x="{gx:.1f}" y="{gy0 + 14:.1f}" font-size="10" text-anchor="middle">{t:g}</text>'
        )
        (hx0, hy), (hx1, _) = px(0, t), px(1, t)
        parts.append(
            f'<line x1="{hx0:.1f}" y1="{hy:.1f}" x2="{hx1:.1f}" y2="{hy:.1f}" stroke="#eee"/>'
            f'<text x="{hx0 - 4:.1f}" y="{hy + 3:.1f}" font-size="10" text-anchor="end">{t:g}</text>'
        )
    ok = np.isfinite(x) & np.isfinite(y)
    points = " ".join("{:.1f},{:.1f}".format(*px(float(u), float(v))) for u, v in zip(x[ok], y[ok]))
    parts.append(f'<polyline points="{points}" fill="none" stroke="#c0392b" stroke-width="1.5"/>')
    if mark is not None:
        mx, my = px(mark[0], mark[1])
        parts.append(
            f'<circle cx="{mx:.1f}" cy="{my:.1f}" r="3.5" fill="#222"/>'
            f'<text x="{mx + 6:.1f}" y="{my - 6:.1f}" font-size="11">{html.escape(mark[2])}</text>'
        )
    parts.append(
        f'<text x="{size / 2}" y="{size - 6}" font-size="12" text-anchor="middle">{html.escape(xlabel)}</text>'
        f'<text x="12" y="{size / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 12 {size / 2})">{html.escape(ylabel)}</text>'
    )
    return "".join(parts) + "</svg>"


def curve_charts(curves: dict[str, np.ndarray] | None) -> str:
    """The PR curve and Fβ against threshold (RUN/curves.npz's arrays), side by side."""
    if curves is None:
        return ""
    t, f = curves["thresholds"], curves["fmeasure"]
    best = int(np.argmax(f))
    pr = svg_curve(curves["recall"], curves["precision"], "recall", "precision")
    fth = svg_curve(t, f, "threshold", "Fβ (β² = 0.3)", mark=(float(t[best]), float(f[best]), f"max {f[best]:.3f}"))
    return f'<div class="charts">{pr}{fth}</div>'


def best_and_worst(ranked: list[dict], k: int = GALLERY_MAX) -> tuple[list[dict], list[dict]]:
    """Disjoint best and worst lists from rows sorted worst first: with N rows, best takes
    ceil(N / 2) at most, worst the rest, each capped at ``k`` (so no image is in both)."""
    n_best = min(math.ceil(len(ranked) / 2), k)
    n_worst = min(len(ranked) - n_best, k)
    return ranked[::-1][:n_best], ranked[:n_worst]


def _thumb(image: np.ndarray, height: int = 140) -> str:
    """An RGB or grey uint8 image as an inline PNG data URI, ``height`` pixels high."""
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_AREA)
    if small.ndim == 3:
        small = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", small)
    if not ok:
        raise ValueError("cannot encode a thumbnail as PNG")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


def _gallery_row(out: Path, row: dict, metrics: dict[str, float]) -> str:
    bgr = cv2.imread(row["image"], cv2.IMREAD_COLOR)
    pred = cv2.imread(str(out / "pred" / f"{row['name']}.png"), cv2.IMREAD_GRAYSCALE)
    gt = cv2.imread(row["gt"], cv2.IMREAD_GRAYSCALE)
    if bgr is None or pred is None or gt is None:
        return f"<tr><td colspan=5>{html.escape(row['name'])}: files missing</td></tr>"
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if rgb.shape[:2] != pred.shape:
        rgb = cv2.resize(rgb, (pred.shape[1], pred.shape[0]))
    over = overlay(rgb, pred >= 128)
    cells = "".join(f'<td><img src="{_thumb(a)}" alt=""></td>' for a in (rgb, gt, pred, over))
    picks = " → ".join(html.escape(p) for p in row["picks"])
    masks = " → ".join(f"{m:.2f} / {100 * a:.1f}%" for m, a in zip(row.get("soft_max", []), row.get("binary_area", [])))
    return (
        f'<tr class="image" data-name="{html.escape(row["name"])}">{cells}<td><b>{html.escape(row["name"])}</b><br>'
        f"Sα {metrics['Sm']:.3f}, MAE {metrics['MAE']:.3f}, Dice {metrics['Dice']:.3f}, IoU {metrics['IoU']:.3f}"
        f"<br>picked: {picks}<br>soft max / binary area: {masks}</td></tr>"
    )


def _gallery(out: Path, title: str, rows: list[dict], per_image: dict[str, dict[str, float]], cls: str) -> str:
    if not rows:
        return ""
    head = "<tr><th>image</th><th>GT</th><th>prediction</th><th>overlay</th><th></th></tr>"
    body = "".join(_gallery_row(out, r, per_image[r["name"]]) for r in rows)
    return f'<h2>{html.escape(title)}</h2><table class="gallery {cls}"><thead>{head}</thead><tbody>{body}</tbody></table>'


def html_report(
    out: Path,
    summary: dict[str, Any],
    pairs: list[Pair],
    done: dict[str, dict],
    per_image: dict[str, dict[str, float]],
    curves: dict[str, np.ndarray] | None,
) -> str:
    """One page, no network: tables, the per-stage and curve charts, the worst and best images by Sα.

    ``per_image``: GT name -> metrics of the scored images (``Scores.per_image``); ``curves``:
    ``Scores.curves`` (None when nothing was scored).
    """

    def sm_key(r: dict) -> tuple[int, float]:
        sm = per_image[r["name"]]["Sm"]
        return (0, 0.0) if math.isnan(sm) else (1, sm)  # a NaN Sα (PySODMetrics' quirk) ranks worst

    ok = [done[p.name] for p in pairs if p.name in done and done[p.name]["ok"] and p.name in per_image]
    best, worst = best_and_worst(sorted(ok, key=sm_key))
    from ..trace import STAGES  # pipeline order reads better than summary.json's alphabetical one

    by_stage = summary["throughput"]["seconds_per_image_by_stage"]
    stages = sorted(by_stage.items(), key=lambda kv: (STAGES.index(kv[0]) if kv[0] in STAGES else len(STAGES), kv[0]))
    failed = "".join(
        f"<li><code>{html.escape(f['image'])}</code>: {html.escape(f['error'] or '')}</li>" for f in summary["failed"]
    )
    name = html.escape(summary["dataset"])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>int-engine bench: {name}</title>
<style>body{{font-family:sans-serif;margin:2em}} td{{vertical-align:top;padding:4px}}
table.grid{{border-collapse:collapse}} table.grid td,table.grid th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
table.grid td:first-child{{text-align:left}} .charts svg{{margin-right:2em}}</style>
</head><body>
<h1>int-engine bench: {name} (task: "{html.escape(summary["task"])}")</h1>
{_html_table(*metric_table(summary))}
<p>{html.escape(_counts(summary))}</p>
<p>{html.escape(_throughput(summary))}</p>
<p>{html.escape(_work(summary))}</p>
<h2>Seconds per image by stage</h2>
{svg_bars(stages, "s")}
{_html_table(*stage_table(summary))}
{"<h2>Precision–recall and Fβ against threshold</h2>" + curve_charts(curves) if curves is not None else ""}
{"<h2>Failed images</h2><ul>" + failed + "</ul>" if failed else ""}
{_gallery(out, f"Worst {len(worst)} by Sα", worst, per_image, "worst")}
{_gallery(out, f"Best {len(best)} by Sα", best, per_image, "best")}
</body></html>
"""


def _scored_mask(out: Path) -> str:
    """ "binary" or "soft", as the run folder's run.json says (runs made before it: "soft")."""
    try:
        return json.loads((out / RUN_INFO).read_text(encoding="utf-8")).get("score", "soft")
    except (OSError, ValueError):
        return "soft"
