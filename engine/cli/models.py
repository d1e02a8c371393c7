"""``int-engine models``: build, verify and check model folders."""

from __future__ import annotations

import argparse
import sys

from .common import FATAL


def cmd_models_tiny(args: argparse.Namespace) -> int:
    from ..models.zoo import build_tiny_zoo

    manifest = build_tiny_zoo(args.out, seed=args.seed, scale=args.scale)
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



def add_parser(sub) -> None:
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

