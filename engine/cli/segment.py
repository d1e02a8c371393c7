"""``int-engine segment``: masks for image files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .common import FATAL, _config, _models_dir, _output_dirs, expand_inputs


def cmd_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..api import IntEngine
    from ..errors import IntEngineError
    from ..io import mask_to_uint8, overlay, read_image, write_json, write_png
    from ..pipeline import image_steps

    try:
        cfg = _config(args)
        engine = IntEngine(cfg, models_dir=_models_dir(args, cfg))
    except IntEngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return FATAL
    out = Path(args.out)
    images = expand_inputs(args.images)
    if not images:
        print(f"error: no image files in {', '.join(args.images)}", file=sys.stderr)
        return FATAL
    folders = _output_dirs(images, out)
    originals: dict[int, np.ndarray] = {}  # held only while the image is in flight

    def make(i: int):
        def steps():
            image = read_image(images[i], cfg.max_side, cfg.min_side, keep_original=True, max_aspect=cfg.max_aspect)
            originals[i] = image.original
            return image_steps(image.pixels, cfg, image.path, image.original_size, image.conversions)
        return steps

    failed: list[tuple[str, str]] = []
    bar = tqdm(total=len(images), unit="img", disable=args.quiet)
    for i, outcome in engine.run_jobs((i, make(i)) for i in range(len(images))):
        original = originals.pop(i, None)
        bar.update(1)
        if isinstance(outcome, Exception):
            message = str(outcome) if isinstance(outcome, IntEngineError) else f"{images[i]}: {type(outcome).__name__}: {outcome}"
            failed.append((images[i], message))
            tqdm.write(f"error: {message}", file=sys.stderr)
            continue
        folder = folders[i]
        write_png(folder / "soft.png", mask_to_uint8(outcome.soft))
        write_png(folder / "binary.png", outcome.binary.astype(np.uint8) * 255)
        write_png(folder / "overlay.png", overlay(original, outcome.binary))
        write_json(folder / "trace.json", outcome.trace.to_dict())
    bar.close()
    engine.close()
    done = len(images) - len(failed)
    write_json(out / "summary.json", {"images": len(images), "succeeded": done,
                                      "failed": [{"image": p, "error": e} for p, e in failed]})
    print(f"{done} of {len(images)} images segmented into {out}" + (f"; {len(failed)} failed" if failed else ""),
          file=sys.stderr)
    return min(len(failed), 100)



def add_parser(sub) -> None:
    seg = sub.add_parser("segment", help="segment images with INT")
    seg.add_argument("images", nargs="+", help="image files, or folders of them")
    seg.add_argument("--out", required=True, help="output folder: one sub-folder per image")
    seg.add_argument("--task", help='task-generic prompt, e.g. "camouflaged animal"')
    seg.add_argument("--preset", help="cod | polyp | skin | gensam | promac")
    seg.add_argument("--config", help="YAML or JSON EngineConfig")
    seg.add_argument("--models", help="folder with vlm/ inpaint/ detector/ segmenter/ clip/ (default: the tiny zoo)")
    seg.add_argument("--iterations", type=int)
    seg.add_argument("--seed", type=int)
    seg.add_argument("--device", help="cpu, cuda, cuda:1, ...")
    seg.add_argument("--ablation", action="append", metavar="SWITCH=on|off",
                     help="hcg, psnm, pnm or smg on/off (paper Table 3c; repeatable)")
    seg.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config field (repeatable)")
    seg.add_argument("--quiet", action="store_true", help="no progress bar")
    seg.set_defaults(func=cmd_segment)

