"""A run's summary (JSON, Markdown in the paper's Table 1 layout), its HTML report, and the
side-by-side comparison of two runs."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..io import overlay
from ..work import per_unit
from .datasets import Dataset, Pair

# (summary key, column title, lower is better)
TABLE = (("MAE", "M ↓", True), ("adpFm", "Fβ ↑", False), ("meanEm", "Eφ ↑", False), ("Sm", "Sα ↑", False))
EXTRAS = (("wFm", "wFβ ↑", False), ("maxFm", "maxFβ ↑", False))


def write_reports(out: Path, dataset: Dataset, pairs: list[Pair], done: dict[str, dict], wall: float, processed: int,
                  work: dict[str, float] | None = None, image_iterations: int = 0) -> dict[str, Any]:
    """``work``: the models' ``int_engine.work`` counters this session added over its
    ``image_iterations`` (iterations of the images it finished); summed over the run's sessions."""
    from .run import SUMMARY, dataset_metrics, peak_rss_mb

    metrics, scored = dataset_metrics(out, pairs, done)
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
        "scored": scored,
        "failed": [{"name": r["name"], "image": r["image"], "error": r["error"]} for r in rows if not r["ok"]],
        # images whose binary mask came out empty (rows written before this field count as non-empty)
        "empty_masks": [r["name"] for r in ok if r.get("empty_mask")],
        "unpaired_images": [str(p) for p in dataset.unpaired_images],
        "unpaired_gt": len(dataset.unpaired_gt),
        **metrics,
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
        # what the models computed per image-iteration (UNet evaluations x latent pixels, VLM prefill
        # tokens, SAM encoder images, CLIP and detector images: int_engine.work), apart from speed
        "work_per_image_iteration": per_unit(work_total, sum(x.get("image_iterations", 0) for x in counted)),
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(markdown(summary), encoding="utf-8")
    (out / "report.html").write_text(html_report(out, summary, pairs, done), encoding="utf-8")
    return summary


def _record_session(out: Path, images: int, seconds: float, work: dict[str, float] | None = None,
                    image_iterations: int = 0) -> list[dict[str, Any]]:
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


def markdown(summary: dict[str, Any]) -> str:
    m, t = summary, summary["throughput"]
    cols = TABLE + EXTRAS
    lines = [
        f"# int-engine bench: {summary['dataset']} (task: \"{summary['task']}\")",
        "",
        "| Dataset | " + " | ".join(c[1] for c in cols) + " |",
        "|---|" + "---|" * len(cols),
        f"| {summary['dataset']} | " + " | ".join(_fmt(m.get(c[0])) for c in cols) + " |",
        "",
        f"{summary['scored']} of {summary['images']} images scored; {len(summary['failed'])} failed"
        + (f"; {len(summary['unpaired_images'])} images without GT" if summary["unpaired_images"] else "")
        + f"; {len(summary['empty_masks'])} with an empty binary mask.",
        "",
        f"Throughput: {t['images_per_s']:.3f} images/s ({t['seconds_per_image']:.2f} s/image wall clock; "
        f"latency {t['latency_seconds_per_image']:.2f} s/image in flight), peak RSS {t['peak_rss_mb']:.0f} MB.",
        "",
        "Work per image-iteration: "
        + (", ".join(f"{k} {v:.4g}" for k, v in summary.get("work_per_image_iteration", {}).items()) or "not counted")
        + ".",
        "",
        "| stage | s/image (its share of each batch) |",
        "|---|---|",
        *[f"| {k} | {v:.3f} |" for k, v in t["seconds_per_image_by_stage"].items()],
    ]
    if summary["failed"]:
        lines += ["", "Failed images:", ""] + [f"- `{f['image']}`: {f['error']}" for f in summary["failed"]]
    return "\n".join(lines) + "\n"


def _thumb(image: np.ndarray, height: int = 140) -> str:
    """An RGB or grey uint8 image as an inline PNG data URI, ``height`` pixels high."""
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_AREA)
    if small.ndim == 3:
        small = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", small)
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


def _gallery_row(out: Path, row: dict) -> str:
    bgr = cv2.imread(row["image"], cv2.IMREAD_COLOR)
    pred = cv2.imread(str(out / "pred" / f"{row['name']}.png"), cv2.IMREAD_GRAYSCALE)
    gt = cv2.imread(row["gt"], cv2.IMREAD_GRAYSCALE)
    if bgr is None or pred is None or gt is None:
        return f"<tr><td colspan=5>{html.escape(row['name'])}: files missing</td></tr>"
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if rgb.shape[:2] != pred.shape:
        rgb = cv2.resize(rgb, (pred.shape[1], pred.shape[0]))
    over = overlay(rgb, pred >= 128)
    cells = "".join(f'<td><img src="{_thumb(a)}"></td>' for a in (rgb, gt, pred, over))
    picks = " → ".join(html.escape(p) for p in row["picks"])
    masks = " → ".join(f"{m:.2f} / {100 * a:.1f}%" for m, a in zip(row.get("soft_max", []), row.get("binary_area", [])))
    return (f"<tr>{cells}<td><b>{html.escape(row['name'])}</b><br>Sα {row['metrics']['Sm']:.3f}, "
            f"MAE {row['metrics']['MAE']:.3f}<br>picked: {picks}<br>soft max / binary area: {masks}</td></tr>")


def html_report(out: Path, summary: dict[str, Any], pairs: list[Pair], done: dict[str, dict], k: int = 6) -> str:
    """One page, no network: the summary table and the k worst and k best images by Sα."""
    ok = sorted((done[p.name] for p in pairs if p.name in done and done[p.name]["ok"]), key=lambda r: r["metrics"]["Sm"])
    worst, best = ok[:k], ok[::-1][:k]
    table = markdown(summary)
    head = "<tr><th>image</th><th>GT</th><th>prediction</th><th>overlay</th><th></th></tr>"
    failed = "".join(f"<li><code>{html.escape(f['image'])}</code>: {html.escape(f['error'] or '')}</li>" for f in summary["failed"])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>int-engine bench: {html.escape(summary['dataset'])}</title>
<style>body{{font-family:sans-serif;margin:2em}} td{{vertical-align:top;padding:4px}} pre{{background:#f4f4f4;padding:1em}}</style>
</head><body>
<h1>int-engine bench: {html.escape(summary['dataset'])}</h1>
<pre>{html.escape(table)}</pre>
{'<h2>Failed images</h2><ul>' + failed + '</ul>' if failed else ''}
<h2>Worst {len(worst)} by Sα</h2><table>{head}{''.join(_gallery_row(out, r) for r in worst)}</table>
<h2>Best {len(best)} by Sα</h2><table>{head}{''.join(_gallery_row(out, r) for r in best)}</table>
</body></html>
"""


def compare(run_a: str | Path, run_b: str | Path) -> str:
    """The two runs' tables side by side with B − A deltas (for ablations and backends)."""
    from .run import SUMMARY

    a, b = (json.loads((Path(r) / SUMMARY).read_text(encoding="utf-8")) for r in (run_a, run_b))
    lines = [f"A: {run_a} ({a['dataset']}, {a['scored']} images)", f"B: {run_b} ({b['dataset']}, {b['scored']} images)", "",
             f"{'metric':10s} {'A':>8s} {'B':>8s} {'B−A':>8s}"]
    for key, title, lower in TABLE + EXTRAS:
        va, vb = a.get(key), b.get(key)
        if va is None or vb is None:
            continue
        better = (vb < va) if lower else (vb > va)
        mark = "" if vb == va else (" better" if better else " worse")
        lines.append(f"{title:10s} {va:8.3f} {vb:8.3f} {vb - va:+8.3f}{mark}")
    ta, tb = a["throughput"], b["throughput"]
    lines.append(f"{'images/s':10s} {ta['images_per_s']:8.3f} {tb['images_per_s']:8.3f} {tb['images_per_s'] - ta['images_per_s']:+8.3f}")
    return "\n".join(lines)
