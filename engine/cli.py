"""``int-engine``: the command-line front door.

    int-engine segment IMAGE... --out DIR [--task T | --preset P] [--config F] [--models DIR] [--set k=v]
    int-engine models tiny --out DIR            build the tiny random-weight zoo
    int-engine models verify DIR                check a zoo against its manifest
    int-engine sample --out FILE                write a synthetic camouflage scene to try things on

Exit codes: 0 success; N (1..100) = number of images that failed (capped at 100);
101 = the run could not start (bad config, models that cannot be loaded).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

FATAL = 101


def _config(args: argparse.Namespace):
    """The run's config from --config, --preset and the overrides, its backend options
    checked so that a misspelt option stops the run before any model is built or loaded."""
    from .config import EngineConfig, apply_overrides, preset_config
    from .models.load import check_options

    cfg = EngineConfig.from_file(args.config) if args.config else EngineConfig()
    if args.preset:
        cfg = preset_config(args.preset, cfg)
    overrides = list(args.set or []) + [_ablation(item) for item in args.ablation or []]
    if args.task:
        overrides.append(f"task={args.task}")
    if args.iterations is not None:
        overrides.append(f"iterations={args.iterations}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.device:
        overrides.append(f"models.device={args.device}")
    cfg = apply_overrides(cfg, overrides) if overrides else cfg
    check_options(cfg.models)
    return cfg


ABLATIONS = ("hcg", "psnm", "pnm", "smg")


def _ablation(item: str) -> str:
    """``pnm=off`` -> the override ``pnm=false`` (switches of paper Table 3c)."""
    from .errors import ConfigError

    name, _, state = item.partition("=")
    value = {"on": "true", "off": "false", "true": "true", "false": "false"}.get(state.strip().lower())
    if name.strip() not in ABLATIONS or value is None:
        raise ConfigError(f"--ablation {item!r}: expected one of {', '.join(ABLATIONS)} = on|off")
    return f"{name.strip()}={value}"


def _models_dir(args: argparse.Namespace, cfg) -> Path | None:
    from .models.cache import TINY_WARNING, ensure_tiny_zoo

    if args.models:
        return Path(args.models)
    if all(cfg.models.role(r).path for r in ("vlm", "inpaint", "detector", "segmenter", "clip")):
        return None
    zoo = ensure_tiny_zoo()
    print(TINY_WARNING.format(path=zoo), file=sys.stderr)
    return zoo


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}


def expand_inputs(paths: list[str]) -> list[str]:
    """Files as given; a directory becomes its image files (by suffix), sorted by name."""
    out: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out += sorted(str(f) for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


def _output_dirs(images: list[str], out: Path) -> list[Path]:
    """One output folder per image, named after its file; repeated names get -2, -3, ..."""
    seen: dict[str, int] = {}
    dirs = []
    for image in images:
        stem = Path(image).stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        dirs.append(out / (stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"))
    return dirs


def cmd_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .api import IntEngine
    from .errors import IntEngineError
    from .io import mask_to_uint8, overlay, read_image, write_json, write_png
    from .pipeline import image_steps

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


def cmd_bench(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .api import IntEngine
    from .bench.datasets import find_dataset, folder_dataset
    from .bench.report import compare
    from .bench.run import run_bench
    from .bench.synthetic import write_synthetic_dataset
    from .errors import IntEngineError
    from .models.cache import cache_root

    if args.compare:
        try:
            print(compare(*args.compare))
        except (OSError, KeyError, ValueError) as err:
            print(f"error: cannot compare {args.compare[0]} and {args.compare[1]}: {err}", file=sys.stderr)
            return FATAL
        return 0
    if not args.dataset or not args.out:
        print("error: bench needs --dataset and --out (or --compare RUN_A RUN_B)", file=sys.stderr)
        return FATAL
    try:
        if args.dataset == "synthetic":
            root = Path(args.data_root) if args.data_root else cache_root() / "synthetic"
            count = args.synthetic_count or args.limit or 100
            dataset = find_dataset("cod10k", write_synthetic_dataset(root, count, seed=args.synthetic_seed))
            dataset.name, dataset.pairs = "Synthetic", dataset.pairs[:count]
        elif args.dataset == "folder":
            if not args.images or not args.masks:
                raise IntEngineError("--dataset folder needs --images DIR and --masks DIR")
            dataset = folder_dataset(args.images, args.masks, args.task or "camouflaged animal")
        else:
            if not args.data_root:
                raise IntEngineError(f"--dataset {args.dataset} needs --data-root (the folder holding the downloaded dataset)")
            dataset = find_dataset(args.dataset, args.data_root)
        if not args.config and not args.preset:
            args.preset = dataset.preset
        cfg = _config(args)
        models_dir = _models_dir(args, cfg)
        engine = IntEngine(cfg, models_dir=models_dir)
    except IntEngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return FATAL
    if dataset.unpaired_images:
        print(f"warning: {len(dataset.unpaired_images)} images have no GT and are skipped "
              f"(e.g. {dataset.unpaired_images[0]})", file=sys.stderr)
    total = min(len(dataset.pairs), args.limit) if args.limit else len(dataset.pairs)
    bar = tqdm(total=total, unit="img", disable=args.quiet, desc=dataset.name)
    failures = 0

    def progress(row: dict) -> None:
        nonlocal failures
        failures += not row["ok"]
        if not row["ok"]:
            tqdm.write(f"error: {row['image']}: {row['error']}", file=sys.stderr)
        bar.update(1)
        bar.set_postfix(failed=failures)

    try:
        summary = run_bench(engine, dataset, args.out, limit=args.limit, resume=args.resume,
                            models_label=str(models_dir) if models_dir else None, on_image=progress)
    except IntEngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return FATAL
    finally:
        bar.close()
        engine.close()
    print((Path(args.out) / "summary.md").read_text(encoding="utf-8"))
    return min(len(summary["failed"]), 100)


def cmd_export(args: argparse.Namespace) -> int:
    from .errors import IntEngineError
    from .export import export_models
    from .models.cache import ensure_tiny_zoo
    from .models.load import quiet_libraries

    quiet_libraries()
    try:
        models = args.models or ensure_tiny_zoo()
        manifest = export_models(models, args.format, args.out, roles=tuple(args.roles), device=args.device,
                                 precision=args.precision, max_batch=args.max_batch)
    except IntEngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return FATAL
    for entry in manifest["artifacts"]:
        print(f"{entry['role']}/{entry['module']:14s} {entry['format']:9s} -> {entry.get('file') or '(torch.compile at load)'}")
    print(f"manifest: {Path(args.out) / 'manifest.json'}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from .api import IntEngine
    from .errors import IntEngineError
    from .profile import profile

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
    print(f"chrome trace: {Path(args.out) / 'trace.json'} (open in chrome://tracing or Perfetto); chart: {Path(args.out) / 'stages.png'}")
    return 0


def cmd_models_tiny(args: argparse.Namespace) -> int:
    from .models.zoo import build_tiny_zoo

    manifest = build_tiny_zoo(args.out, seed=args.seed, scale=args.scale)
    for role, m in manifest["models"].items():
        print(f"{role:10s} {m['format']:28s} {m['params']:>10,d} params  {m['build_seconds']:.1f}s")
    print(f"{args.scale} zoo written to {args.out}")
    return 0


def cmd_models_verify(args: argparse.Namespace) -> int:
    from .errors import IntEngineError
    from .models.zoo import verify_zoo

    try:
        bad = verify_zoo(args.dir)
    except IntEngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return FATAL
    for role in bad:
        print(f"{role}: files differ from the manifest checksum", file=sys.stderr)
    print("zoo intact" if not bad else f"{len(bad)} role(s) changed")
    return 0 if not bad else 1


def cmd_sample(args: argparse.Namespace) -> int:
    from .bench.synthetic import make_scene
    from .io import write_png

    image, gt = make_scene(args.seed, args.height, args.width)
    write_png(args.out, image)
    if args.gt:
        write_png(args.gt, gt)
    print(f"wrote {args.out}" + (f" and {args.gt}" if args.gt else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="int-engine", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

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

    bench = sub.add_parser("bench", help="benchmark on a dataset: metrics, throughput, report")
    bench.add_argument("--dataset", help="cod10k | camo | chameleon | kvasir | cvc-colondb | isic | synthetic | folder")
    bench.add_argument("--data-root", help="folder holding the downloaded dataset (synthetic: where to generate it)")
    bench.add_argument("--images", help="--dataset folder: the images")
    bench.add_argument("--masks", help="--dataset folder: the GT masks (paired by file name)")
    bench.add_argument("--out", help="run folder (results.jsonl, pred/, summary.json, summary.md, report.html)")
    bench.add_argument("--limit", type=int, help="only the first N images")
    bench.add_argument("--resume", action="store_true", help="continue a run in --out, skipping finished images")
    bench.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), help="print two runs' tables side by side")
    bench.add_argument("--synthetic-count", type=int, help="synthetic: number of scenes (default: --limit or 100)")
    bench.add_argument("--synthetic-seed", type=int, default=0)
    for flag, kw in (("--task", {}), ("--preset", {}), ("--config", {}), ("--models", {}), ("--iterations", {"type": int}),
                     ("--seed", {"type": int}), ("--device", {})):
        bench.add_argument(flag, **kw)
    bench.add_argument("--ablation", action="append", metavar="SWITCH=on|off")
    bench.add_argument("--set", action="append", metavar="KEY=VALUE")
    bench.add_argument("--quiet", action="store_true")
    bench.set_defaults(func=cmd_bench)

    prof = sub.add_parser("profile", help="time every stage of every iteration of one image")
    prof.add_argument("image")
    prof.add_argument("--out", default="profile", help="folder for trace.json, stages.png, stages.json")
    for flag, kw in (("--task", {}), ("--preset", {}), ("--config", {}), ("--models", {}), ("--iterations", {"type": int}),
                     ("--seed", {"type": int}), ("--device", {})):
        prof.add_argument(flag, **kw)
    prof.add_argument("--ablation", action="append", metavar="SWITCH=on|off")
    prof.add_argument("--set", action="append", metavar="KEY=VALUE")
    prof.set_defaults(func=cmd_profile)

    export = sub.add_parser("export", help="compile SAM and the inpainting UNet/VAE to ONNX / TensorRT / torch.compile")
    export.add_argument("--models", help="folder with segmenter/ and inpaint/ (default: the tiny zoo)")
    export.add_argument("--format", required=True, choices=("onnx", "tensorrt", "compile"))
    export.add_argument("--out", default="exported_models", help="artifacts and manifest.json (default: exported_models)")
    export.add_argument("--roles", nargs="+", default=["segmenter", "inpaint"], choices=("segmenter", "inpaint"))
    export.add_argument("--device", default="cpu")
    export.add_argument("--precision", default="float16", help="TensorRT engine precision: float16 | bfloat16 | float32")
    export.add_argument("--max-batch", type=int, default=8, help="largest batch the TensorRT profiles allow")
    export.set_defaults(func=cmd_export)

    models = sub.add_parser("models", help="model zoo tools").add_subparsers(dest="models_command", required=True)
    tiny = models.add_parser("tiny", help="build the tiny random-weight zoo (or, --scale small, larger real-shaped models)")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--scale", choices=("tiny", "small"), default="tiny",
                      help="small: ViT-B-sized SAM/CLIP, a 256 px SD UNet, ... for throughput measurements")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_models_tiny)
    verify = models.add_parser("verify", help="check a zoo against its manifest")
    verify.add_argument("dir")
    verify.set_defaults(func=cmd_models_verify)

    sample = sub.add_parser("sample", help="write a synthetic camouflage scene")
    sample.add_argument("--out", required=True)
    sample.add_argument("--gt", help="also write its ground-truth mask here")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--height", type=int, default=256)
    sample.add_argument("--width", type=int, default=320)
    sample.set_defaults(func=cmd_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
