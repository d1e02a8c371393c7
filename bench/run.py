"""A benchmark run: segment every test image, save predictions, append results as they finish.

The run folder is a contract other tools read:
    RUN/run.json          what was run (dataset, folders, config) — a resume must match it
    RUN/config.yaml       the effective config with resolved checkpoint paths (``--config`` re-runs it)
    RUN/env.json          versions, git sha, devices (``int_engine.run_info``)
    RUN/results.jsonl     one line per image, appended and flushed as each finishes
    RUN/pred/<GT stem>.png what was scored at GT size: the binary segmentation (0/255, default,
                          as the authors scored) or the 8-bit soft map (``score="soft"``)
    RUN/metrics.csv       one row per image: its metrics, picked iteration, seconds (or its error)
    RUN/curves.npz        dataset PR and F-measure curves over 256 thresholds
    RUN/summary.json      metrics (MAE, adpFm, meanEm, Sm, ..., Dice, IoU) and throughput
    RUN/summary.md        the paper's Table 1 layout
    RUN/report.html       one self-contained page: tables, charts and best/worst images
A run killed at any point (even SIGKILL) and resumed with ``resume=True`` skips the images
already recorded and ends with the same table as an uninterrupted run. Everything but
results.jsonl, pred/ and sessions.jsonl is rewritten whole at the end of each session, from
those, so a resumed run's files are complete and hold each image once.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from ..config import EngineConfig
from ..errors import ConfigError, IntEngineError
from ..io import LoadedImage, mask_to_uint8
from ..run_info import write_run_info
from ..work import work_delta, work_of
from .datasets import Dataset, Pair
from .metrics import PER_IMAGE_KEYS, image_metrics
from .report import write_reports
from .run_folder import RESULTS, RUN_INFO, read_gray

# What pred/ holds and the metrics score: the segmentation eq 13 chose (the authors' code scores
# its binary mask, so Table 1's columns mean the same), or the soft map.
SCORES = ("binary", "soft")


def load_results(out: Path) -> dict[str, dict]:
    """The recorded line of each image (the last one wins); a torn last line is ignored."""
    done: dict[str, dict] = {}
    path = out / RESULTS
    if not path.exists():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill mid-write; that image is simply done again
        done[row["name"]] = row
    return done


def _rewrite_results(out: Path, rows: dict[str, dict]) -> None:
    """Drop torn lines before appending again, atomically."""
    tmp = out / (RESULTS + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows.values()), encoding="utf-8")
    os.replace(tmp, out / RESULTS)


def _append(out: Path, row: dict) -> None:
    with open(out / RESULTS, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _run_info(dataset: Dataset, cfg: EngineConfig, models: str | None, score: str) -> dict[str, Any]:
    return {
        "dataset": dataset.name,
        "images_dir": str(dataset.images_dir),
        "gt_dir": str(dataset.gt_dir),
        "models": models,
        "score": score,
        "config": cfg.to_dict(),
    }


def check_score(score: str) -> str:
    if score not in SCORES:
        raise ConfigError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    return score


def _check_resume(out: Path, info: dict[str, Any]) -> None:
    path = out / RUN_INFO
    if not path.exists():
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    for key in ("dataset", "images_dir", "gt_dir", "models", "score", "config"):
        if old.get(key, "soft" if key == "score" else None) != json.loads(json.dumps(info[key])):
            raise ConfigError(f"{out}: cannot resume: this run was started with a different {key}; use a new --out")


def _reader(engine) -> Callable[[Pair, str], LoadedImage]:
    """How ``engine.segment_many`` reads a pair when it admits it (images read lazily)."""

    def read(pair: Pair, name: str) -> LoadedImage:
        read_gray(pair.gt)  # a broken GT fails this image before any model time is spent
        return engine.read(pair.image)

    return read


def segment_pairs(engine, pairs: list[Pair], score: str = "binary") -> Iterator[tuple[Pair, bytes | None, dict[str, Any]]]:
    """Segment ``pairs`` through ``engine``'s scheduler; yields ``(pair, prediction PNG or None,
    results line)`` as each finishes (the PNG: what ``score`` names). Used in-process by
    ``run_bench`` and inside each Ray actor (``bench/ray_bench.py``), so both produce the very
    same bytes and lines."""
    by_name = {p.name: p for p in pairs}
    for name, outcome in engine.segment_many(((p.name, p) for p in pairs), load=_reader(engine)):
        pair = by_name[name]
        try:
            if isinstance(outcome, Exception):
                yield pair, None, error_row(pair, outcome)
                continue
            png, row = finish_pair(pair, outcome, score)
        except Exception as err:  # e.g. an unreadable GT at scoring time: recorded, the run goes on
            yield pair, None, error_row(pair, err)
            continue
        yield pair, png, row


def finish_pair(pair: Pair, result, score: str = "binary") -> tuple[bytes, dict[str, Any]]:
    """A finished image's prediction as PNG bytes at GT size (the binary segmentation as 0/255,
    or the 8-bit soft map, as ``score`` says) and its results line."""
    gt = read_gray(pair.gt)
    mask = result.binary.astype(np.float32) if score == "binary" else result.soft
    if mask.shape != gt.shape:  # a GT stored at another size than its image: score at GT size
        mask = cv2.resize(mask, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
        mask = (mask >= 0.5).astype(np.float32) if score == "binary" else mask
    pred = mask_to_uint8(mask)
    ok, png = cv2.imencode(".png", pred)
    if not ok:
        raise IntEngineError(f"{pair.name}: cannot encode the prediction as PNG")
    stages: dict[str, float] = {}
    for it in result.trace.iterations:
        for stage, s in it.seconds.items():
            stages[stage] = stages.get(stage, 0.0) + s
    return png.tobytes(), {
        "name": pair.name,
        "image": str(pair.image),
        "gt": str(pair.gt),
        "ok": True,
        "error": None,
        "metrics": {k: v for k, v in image_metrics(pred, gt).items() if k in PER_IMAGE_KEYS},
        "iterations": len(result.trace.iterations),
        "final_iteration": result.trace.final_iteration,
        "picks": [it.pick for it in result.trace.iterations],
        # per iteration: an empty mask shows as soft_max 0 / binary_area 0, not only as a bad metric
        "soft_max": [it.soft_max for it in result.trace.iterations],
        "binary_area": [it.binary_area for it in result.trace.iterations],
        "empty_mask": not bool(result.binary.any()),
        "seconds": stages,
        "seconds_total": result.trace.seconds_total,
    }


def error_row(pair: Pair, err: BaseException) -> dict[str, Any]:
    """The results line of an image that failed: its error, and a short traceback if unexpected."""
    message = str(err) if isinstance(err, IntEngineError) else f"{type(err).__name__}: {err}"
    return {
        "name": pair.name,
        "image": str(pair.image),
        "gt": str(pair.gt),
        "ok": False,
        "error": message,
        "traceback": None if isinstance(err, IntEngineError) else "".join(traceback.format_exception(err, limit=3)),
    }


def prepare_run(
    config: EngineConfig,
    dataset: Dataset,
    out: Path,
    limit: int | None,
    resume: bool,
    models_label: str | None,
    models_dir: str | Path | None,
    score: str = "binary",
) -> tuple[list[Pair], dict[str, dict], list[Pair]]:
    """Open the run folder (refusing a finished run without ``resume``, or a resume under another
    config or score), write run.json, config.yaml and env.json, drop torn results lines. Returns
    the dataset's pairs in scope, the lines already recorded, and the pairs still to run."""
    pairs = dataset.pairs[:limit] if limit else dataset.pairs
    info = _run_info(dataset, config, models_label, check_score(score))
    if out.exists() and (out / RESULTS).exists() and not resume:
        raise ConfigError(f"{out}: holds an earlier run; pass --resume to continue it or choose a new --out")
    if resume:
        _check_resume(out, info)
    (out / "pred").mkdir(parents=True, exist_ok=True)
    (out / RUN_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    # Before any image: a run killed part-way still says what made it (RUN/config.yaml, RUN/env.json).
    try:
        write_run_info(out, config, models_dir)
    except OSError as err:
        raise IntEngineError(f"{out}: cannot write {err.filename or 'config.yaml / env.json'}: {err.strerror or err}") from None
    done = load_results(out)
    _rewrite_results(out, done)
    todo = [p for p in pairs if not (p.name in done and done[p.name]["ok"])]
    return pairs, done, todo


class RunWriter:
    """Records finished images in a run folder: pred/<name>.png, then its results line.

    Idempotent per image, so that a batch Ray runs twice (its actor died after finishing it)
    changes nothing: the PNG is replaced atomically with the same bytes, and an image already
    recorded in this session gets no second line (results.jsonl holds each image once)."""

    def __init__(self, out: Path, done: dict[str, dict], on_image: Callable[[dict], None] | None = None) -> None:
        self.out, self.done, self.on_image = out, done, on_image
        self.seen: set[str] = set()
        self.processed = 0
        self.image_iterations = 0

    def write(self, pair: Pair, png: bytes | None, row: dict[str, Any]) -> bool:
        """Record one image; False (and nothing written) when it was already recorded this session."""
        if pair.name in self.seen:
            return False
        self.seen.add(pair.name)
        if png is not None:
            try:
                path, tmp = self.out / "pred" / f"{pair.name}.png", self.out / "pred" / f".{pair.name}.png.tmp"
                tmp.write_bytes(png)
                os.replace(tmp, path)  # a kill mid-write never leaves a torn PNG under the real name
            except OSError as err:  # the prediction cannot be written: recorded, the run goes on
                row = error_row(pair, err)
        _append(self.out, row)
        self.done[pair.name] = row
        self.processed += 1
        self.image_iterations += row.get("iterations", 0)
        if self.on_image:
            self.on_image(row)
        return True


def finish_run(
    out: Path, dataset: Dataset, pairs: list[Pair], writer: RunWriter, wall: float, work: dict[str, float] | None
) -> dict[str, Any]:
    """Score the saved predictions and write the run's tables and report; returns the summary."""
    return write_reports(
        out,
        dataset,
        pairs,
        writer.done,
        wall=wall,
        processed=writer.processed,
        work=work,
        image_iterations=writer.image_iterations,
    )


def run_bench(
    engine,
    dataset: Dataset,
    out: str | Path,
    limit: int | None = None,
    resume: bool = False,
    models_label: str | None = None,
    on_image: Callable[[dict], None] | None = None,
    models_dir: str | Path | None = None,
    score: str = "binary",
) -> dict[str, Any]:
    """Benchmark ``engine`` on ``dataset`` into ``out``; returns the summary (also written).

    ``score``: "binary" (default) scores each image's segmentation, as the authors' code scored
    its binary mask; "soft" its soft map. pred/ holds what was scored; summary.json says which.

    ``models_dir``: the folder the engine's checkpoints were loaded from (as given to
    ``IntEngine``), for RUN/config.yaml's resolved paths.
    ``on_image`` is called with each new results line (the CLI's progress bar hooks in here).
    Images run through the engine's scheduler (``max_in_flight`` at once); each line is
    appended as its image finishes. A failing image is recorded with its error and the run goes on.
    The same run on a Ray cluster: ``bench/ray_bench.py``.
    """
    out = Path(out)
    pairs, done, todo = prepare_run(engine.config, dataset, out, limit, resume, models_label, models_dir, score)
    writer = RunWriter(out, done, on_image)
    start = time.perf_counter()
    models = getattr(engine, "models", None)
    work_before = work_of(models)  # int_engine.work counters of this session
    for pair, png, row in segment_pairs(engine, todo, score):
        writer.write(pair, png, row)
    wall = time.perf_counter() - start
    return finish_run(out, dataset, pairs, writer, wall, work_delta(work_before, work_of(models)))
