"""What the subcommands share: the run's config from the flags, the models folder, the inputs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..presets import PRESETS

FATAL = 101


def _config(args: argparse.Namespace):
    """The run's config from --config, --preset and the overrides, its backend options
    checked so that a misspelt option stops the run before any model is built or loaded."""
    from ..config import EngineConfig, apply_overrides, preset_config
    from ..models.load import check_options

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
    if getattr(args, "early_stop", False):
        overrides.append("early_stop=true")
    cfg = apply_overrides(cfg, overrides) if overrides else cfg
    check_options(cfg.models)
    return cfg


ABLATIONS = ("hcg", "psnm", "pnm", "smg")


def _ablation(item: str) -> str:
    """``pnm=off`` -> the override ``pnm=false`` (switches of paper Table 3c)."""
    from ..errors import ConfigError

    name, _, state = item.partition("=")
    value = {"on": "true", "off": "false", "true": "true", "false": "false"}.get(state.strip().lower())
    if name.strip() not in ABLATIONS or value is None:
        raise ConfigError(f"--ablation {item!r}: expected one of {', '.join(ABLATIONS)} = on|off")
    return f"{name.strip()}={value}"


def _models_dir(args: argparse.Namespace, cfg) -> Path | None:
    from ..models.cache import TINY_WARNING, ensure_tiny_zoo
    from ..models.zoo import zoo_lineup

    if args.models:
        return Path(args.models)
    if all(cfg.models.role(r).path for r in cfg.models.roles):
        return None
    zoo = ensure_tiny_zoo(lineup=zoo_lineup(cfg.models))
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


EARLY_STOP_HELP = "stop an image once its pick and segmentation stop changing (stop_iou, min_iterations; SPEC)"


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """The flags ``_config`` reads: --task, --preset, --config, --iterations, --early-stop, --seed,
    --device, --ablation, --set."""
    parser.add_argument("--task", help='task-generic prompt, e.g. "camouflaged animal"')
    parser.add_argument("--preset", help=" | ".join(PRESETS))
    parser.add_argument("--config", help="YAML or JSON EngineConfig")
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--early-stop", action="store_true", help=EARLY_STOP_HELP)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--ablation", action="append", metavar="SWITCH=on|off", help="hcg, psnm, pnm or smg on/off")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config field (repeatable)")
