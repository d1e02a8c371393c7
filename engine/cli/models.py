"""``int-engine models``: build, verify and check model folders."""

from __future__ import annotations

import argparse
import sys

from .common import FATAL


def cmd_models_tiny(args: argparse.Namespace) -> int:
    from ..models.zoo import build_tiny_zoo

    manifest = build_tiny_zoo(args.out, seed=args.seed, scale=args.scale, lineup=args.lineup)
    for role, m in manifest["models"].items():
        print(f"{role:10s} {m['format']:28s} {m['params']:>10,d} params  {m['build_seconds']:.1f}s")
    print(f"{args.scale} zoo written to {args.out}")
    return 0


def cmd_models_verify(args: argparse.Namespace) -> int:
    from ..errors import IntEngineError
    from ..models.zoo import verify_zoo

    try:
        bad = verify_zoo(args.dir)
    except IntEngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return FATAL
    for role in bad:
        print(f"{role}: files differ from the manifest checksum", file=sys.stderr)
    print("zoo intact" if not bad else f"{len(bad)} role(s) changed")
    return 0 if not bad else 1


def cmd_models_check(args: argparse.Namespace) -> int:
    """One line per role: does its backend exist, are its files there and readable (no
    weights loaded). 0 all ok; 1 a role's model is missing; FATAL the config is bad (the
    file, an override, or a role's backend or options)."""
    from pathlib import Path

    from ..config import EngineConfig, apply_overrides, preset_config
    from ..errors import IntEngineError
    from ..models.check_role import INVALID, check_models

    target = Path(args.target).expanduser()
    try:
        if target.is_dir():
            if args.models:
                raise IntEngineError(f"{target} is a models directory; --models only goes with a config file")
            cfg, models_dir = EngineConfig(), target
        elif target.is_file():
            cfg, models_dir = EngineConfig.from_file(target), args.models
        else:
            raise IntEngineError(f"{target}: no such models directory or config file")
        if args.preset:
            cfg = preset_config(args.preset, cfg)
        if args.set:
            cfg = apply_overrides(cfg, list(args.set))
    except IntEngineError as err:
        # one line: a YAML parser's message spans several (the line, a caret, the reason)
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return FATAL
    checks = check_models(cfg.models, models_dir)
    for check in checks:
        print(check.line())
    bad = [c.role for c in checks if not c.ok]
    if bad:
        print(f"error: not ready: {', '.join(bad)}", file=sys.stderr)
    if any(c.status == INVALID for c in checks):
        return FATAL
    return 1 if bad else 0


def add_parser(sub) -> None:
    models = sub.add_parser("models", help="model zoo tools").add_subparsers(dest="models_command", required=True)
    tiny = models.add_parser("tiny", help="build the tiny random-weight zoo (or, --scale small, larger real-shaped models)")
    tiny.add_argument("--out", required=True)
    tiny.add_argument(
        "--scale",
        choices=("tiny", "small"),
        default="tiny",
        help="small: ViT-B-sized SAM/CLIP, a 256 px SD UNet, ... for throughput measurements",
    )
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--lineup",
        choices=("paper", "modern"),
        default="paper",
        help="paper: LLaVA-1.5, SD2, GroundingDINO, SAM, CLIP; modern: Qwen3-VL, SDXL, GroundingDINO, SAM 2.1, CLIP, SAM 3",
    )
    tiny.set_defaults(func=cmd_models_tiny)
    verify = models.add_parser("verify", help="check a zoo against its manifest")
    verify.add_argument("dir")
    verify.set_defaults(func=cmd_models_verify)
    check = models.add_parser(
        "check",
        help="check every role's backend and files without loading weights (exit 0 ok, 1 missing, 101 bad config)",
        description="DIR|CONFIG: a models directory (vlm/ inpaint/ detector/ segmenter/ clip/) or a config file "
        "(YAML/JSON; a role's path may be a Hugging Face repo id, org/name, looked up in the local cache).",
    )
    check.add_argument("target", metavar="DIR|CONFIG")
    check.add_argument("--models", help="with a config file: the folder of the roles that have no path of their own")
    check.add_argument("--preset", help="check the roles as this preset names them (e.g. modern)")
    check.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    check.set_defaults(func=cmd_models_check)
