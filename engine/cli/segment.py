"""``int-engine segment``: masks for image files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..presets import PRESETS
from .common import EARLY_STOP_HELP, FATAL, _config, _models_dir, _output_dirs, expand_inputs


def _fatal(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return FATAL


def _out_refusal(out: Path, args: argparse.Namespace) -> str | None:
    """Why ``out`` cannot take this run's outputs, or None: a non-empty folder would mix two
    runs' files, so it needs --exist-ok (overwrite) or --resume (keep what is complete)."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file, not a folder"
    if out.is_dir() and any(out.iterdir()) and not (args.exist_ok or args.resume):
        return (
            f"--out {out} is not empty; pass --exist-ok to overwrite it, or --resume to keep the images "
            f"already done there and segment the rest"
        )
    return None


def _resume_refusal(out: Path, cfg, models_dir: Path | None) -> str | None:
    """With --resume, why the earlier run's ``OUT/config.yaml`` forbids adding to ``out`` (its
    settings or checkpoints differ: the folder would hold masks of two configs), or None."""
    from ..run_info import CONFIG_FILE, checkpoint_hashes, config_yaml, resolved_config

    path = out / CONFIG_FILE
    if not path.is_file():
        return None
    resolved = resolved_config(cfg, models_dir)
    if path.read_text(encoding="utf-8") == config_yaml(resolved, checkpoint_hashes(resolved)):
        return None
    return (
        f"--resume: {path} differs from this run's config (settings or checkpoints); resume with "
        f"--config {path} and no other settings, or write to a new --out"
    )


def cmd_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..api import IntEngine
    from ..errors import IntEngineError
    from ..io import LoadedImage
    from ..outputs import check_save, is_saved
    from ..run_info import write_run_info

    try:
        what = check_save(args.save)
    except ValueError as err:
        return _fatal(f"--save {args.save!r}: {err}")
    out = Path(args.out)
    refusal = _out_refusal(out, args)
    if refusal:
        return _fatal(refusal)
    images = expand_inputs(args.images)
    if not images:
        return _fatal(f"no image files in {', '.join(args.images)}")
    folders = _output_dirs(images, out)
    try:
        cfg = _config(args)
        models_dir = _models_dir(args, cfg)
        refusal = _resume_refusal(out, cfg, models_dir) if args.resume else None
        if refusal:
            return _fatal(refusal)
        todo = [i for i in range(len(images)) if not (args.resume and is_saved(folders[i], what))]
        skipped = len(images) - len(todo)
        if args.resume:
            print(f"--resume: {skipped} of {len(images)} images already done in {out}, skipped", file=sys.stderr)
        engine = IntEngine(cfg, models_dir=models_dir) if todo else None
    except IntEngineError as err:
        return _fatal(str(err))
    try:
        write_run_info(out, cfg, models_dir)
    except OSError as err:  # --out not writable: nothing could be saved either
        if engine:
            engine.close()
        return _fatal(f"--out {out}: cannot write {err.filename or out}: {err.strerror or err}")
    overlays = "overlay" in what
    originals: dict[str, np.ndarray] = {}  # held only while the image is in flight, and only for overlays

    def read(path: str, key: str) -> LoadedImage:
        """The image, read when the engine admits it; its original pixels kept for the overlay."""
        image = engine.read(path, keep_original=overlays)
        if overlays:
            originals[key] = image.original
        return image

    failed: list[tuple[str, str]] = []
    bar = tqdm(total=len(todo), unit="img", disable=args.quiet)
    # keyed by the image's index: the same file given twice has two output folders
    # iterations are written as they land (the first one empties the folder's iterations/)
    streamed = ("iterations",) if "iterations" in what else ()
    each = (lambda key, update: update.save(folders[int(key)])) if streamed else None
    results = engine.segment_many(((str(i), images[i]) for i in todo), load=read, on_iteration=each) if engine else iter(())
    for key, outcome in results:
        i = int(key)
        original = originals.pop(key, None)
        bar.update(1)
        if not isinstance(outcome, Exception):
            try:  # the same writer as Result.save; a folder that cannot be written fails that image only
                outcome.save(folders[i], what, image=original, already=streamed)
                continue
            except (OSError, ValueError) as err:
                outcome = err
        message = str(outcome) if isinstance(outcome, IntEngineError) else f"{images[i]}: {type(outcome).__name__}: {outcome}"
        failed.append((images[i], message))
        tqdm.write(f"error: {message}", file=sys.stderr)
    bar.close()
    if engine:
        engine.close()
    _write_summary(out, len(images), len(todo), skipped, failed)
    return min(len(failed), 100)


def _write_summary(out: Path, total: int, todo: int, skipped: int, failed: list[tuple[str, str]]) -> None:
    """``summary.json`` in ``out`` and one line on stderr: done, skipped, failed."""
    from ..io import write_json

    done = todo - len(failed)
    summary = {"images": total, "succeeded": done + skipped, "skipped": skipped}
    write_json(out / "summary.json", {**summary, "failed": [{"image": p, "error": e} for p, e in failed]})
    print(
        f"{done} of {total} images segmented into {out}"
        + (f"; {skipped} skipped (already done)" if skipped else "")
        + (f"; {len(failed)} failed" if failed else ""),
        file=sys.stderr,
    )


def add_parser(sub) -> None:
    seg = sub.add_parser("segment", help="segment images with INT")
    seg.add_argument("images", nargs="+", help="image files, or folders of them")
    seg.add_argument("--out", required=True, help="output folder: one sub-folder per image, config.yaml, env.json, summary.json")
    seg.add_argument(
        "--save",
        default="soft,binary,overlay",
        help="comma-separated outputs per image from soft, binary, overlay, rle (mask.rle.json, COCO RLE), "
        "iterations (iterations/<k>.png); trace.json is always written (default: %(default)s)",
    )
    seg.add_argument("--exist-ok", action="store_true", help="write into a non-empty --out, overwriting its files")
    seg.add_argument(
        "--resume",
        action="store_true",
        help="write into a non-empty --out, skipping images whose folder holds every --save output",
    )
    seg.add_argument("--task", help='task-generic prompt, e.g. "camouflaged animal"')
    seg.add_argument("--preset", help=" | ".join(PRESETS))
    seg.add_argument("--config", help="YAML or JSON EngineConfig (e.g. an earlier run's OUT/config.yaml)")
    seg.add_argument("--models", help="folder with vlm/ inpaint/ detector/ segmenter/ clip/ (default: the tiny zoo)")
    seg.add_argument("--iterations", type=int)
    seg.add_argument("--early-stop", action="store_true", help=EARLY_STOP_HELP)
    seg.add_argument("--seed", type=int)
    seg.add_argument("--device", help="cpu, cuda, cuda:1, ...")
    seg.add_argument(
        "--ablation", action="append", metavar="SWITCH=on|off", help="hcg, psnm, pnm or smg on/off (paper Table 3c; repeatable)"
    )
    seg.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config field (repeatable)")
    seg.add_argument("--quiet", action="store_true", help="no progress bar")
    seg.set_defaults(func=cmd_segment)
