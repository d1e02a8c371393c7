"""``int-engine bench --compare RUN...``: N runs' metrics in one table (rows: runs, columns:
metrics), as Markdown (printed), CSV and LaTeX (``--compare-out DIR``: compare.md, compare.csv,
compare.tex). The best value of each metric column is bold in Markdown and LaTeX."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .report import EXTRAS, TABLE
from .run_folder import SUMMARY

# (summary key, LaTeX column title); order and keys as report.TABLE + report.EXTRAS
LATEX_TITLES = {
    "MAE": r"$M\downarrow$",
    "adpFm": r"$F_\beta\uparrow$",
    "meanEm": r"$E_\phi\uparrow$",
    "Sm": r"$S_\alpha\uparrow$",
    "wFm": r"$F^w_\beta\uparrow$",
    "maxFm": r"max$F_\beta\uparrow$",
    "Dice": r"mDice$\uparrow$",
    "IoU": r"mIoU$\uparrow$",
}
METRICS = TABLE + EXTRAS
FILES = ("compare.md", "compare.csv", "compare.tex")


@dataclass
class Run:
    """One run folder's label (the path as given) and its summary.json."""

    label: str
    summary: dict[str, Any]

    def value(self, key: str) -> float | None:
        """A metric of the run; None where its summary lacks it (e.g. Dice in an older run)."""
        v = self.summary.get(key)
        return float(v) if isinstance(v, (int, float)) else None

    @property
    def iterations(self) -> float | None:
        """Mean iterations per image (fewer than configured where early stop ended images)."""
        v = (self.summary.get("iterations_per_image") or {}).get("mean")
        return float(v) if isinstance(v, (int, float)) else None

    @property
    def images_per_s(self) -> float | None:
        v = self.summary.get("throughput", {}).get("images_per_s")
        return float(v) if isinstance(v, (int, float)) else None


def load_runs(paths: list[str | Path]) -> list[Run]:
    """Each run folder's summary.json; a ValueError naming the folder if one is missing or unreadable."""
    runs = []
    for p in paths:
        path = Path(p) / SUMMARY
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{p}: no {SUMMARY} (not a finished bench run folder)") from None
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read: {err}") from None
        if not isinstance(summary, dict) or "dataset" not in summary:
            raise ValueError(f"{path}: not a bench summary (no 'dataset')")
        runs.append(Run(str(p), summary))
    return runs


def _best(runs: list[Run]) -> dict[str, set[int]]:
    """Metric key -> indices of the runs holding its best value (ties all count), where at least
    two runs have the metric (one value is not 'best' of anything)."""
    out: dict[str, set[int]] = {}
    for key, _, lower in METRICS:
        vals = [(i, v) for i, r in enumerate(runs) if (v := r.value(key)) is not None and v == v]  # v == v: not NaN
        if len(vals) < 2:
            continue
        target = min(v for _, v in vals) if lower else max(v for _, v in vals)
        out[key] = {i for i, v in vals if v == target}
    return out


def _fmt(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def to_markdown(runs: list[Run]) -> str:
    """The table in Markdown (values to 3 decimals, best in bold, — where a run lacks a metric)."""
    best = _best(runs)
    header = ["Run", "Dataset", "Images", *(t for _, t, _ in METRICS), "iterations/image", "images/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, r in enumerate(runs):
        cells = [r.label.replace("|", "\\|"), str(r.summary["dataset"]), str(r.summary.get("scored", ""))]
        for key, _, _ in METRICS:
            text = _fmt(r.value(key))
            cells.append(f"**{text}**" if i in best.get(key, ()) else text)
        cells += [_fmt(r.iterations, 2), _fmt(r.images_per_s)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(runs: list[Run]) -> str:
    """The table as CSV with full-precision values (blank where a run lacks a metric)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "dataset", "images", *(k for k, _, _ in METRICS), "iterations_per_image", "images_per_s"])
    for r in runs:
        vals = [r.value(k) for k, _, _ in METRICS] + [r.iterations, r.images_per_s]
        w.writerow([r.label, r.summary["dataset"], r.summary.get("scored", ""), *("" if v is None else repr(v) for v in vals)])
    return buf.getvalue()


_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def tex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (run folders often hold ``_``)."""
    return "".join(_TEX.get(c, c) for c in text)


def to_latex(runs: list[Run]) -> str:
    """The table as a LaTeX ``tabular`` (booktabs rules; best value of each column in bold)."""
    best = _best(runs)
    cols = "ll" + "r" * (len(METRICS) + 2)
    lines = [
        "% int-engine bench --compare; needs \\usepackage{booktabs}",
        f"\\begin{{tabular}}{{{cols}}}",
        "\\toprule",
        " & ".join(["Run", "Dataset", "Images", *(LATEX_TITLES[k] for k, _, _ in METRICS), "images/s"]) + r" \\",
        "\\midrule",
    ]
    for i, r in enumerate(runs):
        cells = [tex_escape(r.label), tex_escape(str(r.summary["dataset"])), str(r.summary.get("scored", ""))]
        for key, _, _ in METRICS:
            text = "--" if (v := r.value(key)) is None else f"{v:.3f}"
            cells.append(f"\\textbf{{{text}}}" if i in best.get(key, ()) else text)
        cells.append("--" if r.images_per_s is None else f"{r.images_per_s:.3f}")
        lines.append(" & ".join(cells) + r" \\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def compare(paths: list[str | Path], out_dir: str | Path | None = None) -> str:
    """Compare the runs; returns the Markdown table and, with ``out_dir``, writes compare.md,
    compare.csv and compare.tex there. Needs at least two runs (ValueError otherwise)."""
    if len(paths) < 2:
        raise ValueError(f"--compare needs at least two run folders, got {len(paths)}")
    runs = load_runs(paths)
    md = to_markdown(runs)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in zip(FILES, (md, to_csv(runs), to_latex(runs))):
            (out / name).write_text(text, encoding="utf-8")
    return md
