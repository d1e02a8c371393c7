"""``int-engine export``, ``profile`` and ``sample``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import FATAL, _config, _models_dir, add_config_flags


def cmd_export(args: argparse.Namespace) -> int:
    from ..errors import IntEngineError
    from ..export import export_models
    from ..models.cache import ensure_tiny_zoo
    from ..models.load import quiet_libraries

    quiet_libraries()
    try:
        models = args.models or ensure_tiny_zoo()
        manifest = export_models(
            models,
            args.format,
            args.out,
            roles=tuple(args.roles),
            device=args.device,
            precision=args.precision,
            max_batch=args.max_batch,
            sam_batch_size=args.sam_batch_size,
            sam_decode_batch=args.sam_decode_batch,
        )
    except IntEngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return FATAL
    for entry in manifest["artifacts"]:
        print(f"{entry['role']}/{entry['module']:14s} {entry['format']:9s} -> {entry.get('file') or '(torch.compile at load)'}")
    print(f"manifest: {Path(args.out) / 'manifest.json'}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from ..api import IntEngine
    from ..errors import IntEngineError
    from ..profile import profile

    try:
        cfg = _config(args)
        engine = IntEngine(cfg, models_dir=_models_dir(args, cfg))
        table, trace = profile(engine, args.image, args.out)
    except IntEngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return FATAL
    finally:
        if "engine" in locals():
            engine.close()
    print(f"{args.image}: {len(trace.iterations)} iterations, {trace.seconds_total:.3f} s, device {cfg.models.device}")
    print(table)
    print(
        f"chrome trace: {Path(args.out) / 'trace.json'} (open in chrome://tracing or Perfetto); chart: {Path(args.out) / 'stages.png'}"
    )
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from ..bench.synthetic import make_scene
    from ..io import write_png

    image, gt = make_scene(args.seed, args.height, args.width)
    write_png(args.out, image)
    if args.gt:
        write_png(args.gt, gt)
    print(f"wrote {args.out}" + (f" and {args.gt}" if args.gt else ""))
    return 0


def add_parsers(sub) -> None:
    prof = sub.add_parser("profile", help="time every stage of every iteration of one image")
    prof.add_argument("image")
    prof.add_argument("--out", default="profile", help="folder for trace.json, stages.png, stages.json")
    prof.add_argument("--models", help="folder with vlm/ inpaint/ detector/ segmenter/ clip/ (default: the tiny zoo)")
    add_config_flags(prof)
    prof.set_defaults(func=cmd_profile)

    export = sub.add_parser("export", help="compile SAM and the inpainting UNet/VAE to ONNX / TensorRT / torch.compile")
    export.add_argument("--models", help="folder with segmenter/ and inpaint/ (default: the tiny zoo)")
    export.add_argument("--format", required=True, choices=("onnx", "tensorrt", "compile"))
    export.add_argument("--out", default="exported_models", help="artifacts and manifest.json (default: exported_models)")
    export.add_argument("--roles", nargs="+", default=["segmenter", "inpaint"], choices=("segmenter", "inpaint"))
    export.add_argument("--device", default="cpu")
    export.add_argument("--precision", default="float16", help="TensorRT engine precision: float16 | bfloat16 | float32")
    export.add_argument(
        "--max-batch", type=int, help="TensorRT profiles: inpainting jobs per pass (the UNet's batch is twice it; default 8)"
    )
    export.add_argument("--sam-batch-size", type=int, help="TensorRT profiles: images per SAM encoder pass (default 4)")
    export.add_argument("--sam-decode-batch", type=int, help="TensorRT profiles: prompts per SAM decoder pass (default 64)")
    export.set_defaults(func=cmd_export)

    sample = sub.add_parser("sample", help="write a synthetic camouflage scene")
    sample.add_argument("--out", required=True)
    sample.add_argument("--gt", help="also write its ground-truth mask here")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--height", type=int, default=256)
    sample.add_argument("--width", type=int, default=320)
    sample.set_defaults(func=cmd_sample)
