"""``int-engine``: the command-line front door.

    int-engine segment IMAGE... --out DIR [--task T | --preset P] [--config F] [--models DIR] [--set k=v]
    int-engine bench --dataset NAME --out RUN        metrics, throughput and a report on a dataset
    int-engine models tiny --out DIR                 build the tiny random-weight zoo
    int-engine models verify DIR                     check a zoo against its manifest
    int-engine models check DIR|CONFIG               every role's files present (no weights loaded)
    int-engine sample --out FILE                     write a synthetic camouflage scene to try things on
    int-engine config show [--preset P] [--config F] [--set k=v]   the resolved config as YAML
    int-engine serve [--models DIR] [--host 127.0.0.1] [--port 8000]  POST /v1/segment over HTTP
    int-engine --version | -v/-vv | --log-level LEVEL (or INT_ENGINE_LOG_LEVEL)

Exit codes: 0 success; N (1..100) = number of images that failed (capped at 100);
101 = the run could not start (bad config, models that cannot be loaded);
2 = a usage error (an unknown flag or subcommand, argparse's own code).
"""

from __future__ import annotations

import argparse
import sys

from .common import FATAL, _ablation, _config, _models_dir, _output_dirs, expand_inputs

__all__ = ["FATAL", "main", "build_parser", "expand_inputs", "_config", "_ablation", "_models_dir", "_output_dirs"]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from ..log import LEVELS
    from . import bench, config_cmd, models, segment, serve, tools

    parser = argparse.ArgumentParser(prog="int-engine", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"int-engine {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v: info lines (models loaded, ...); -vv: debug")
    parser.add_argument("--log-level", choices=LEVELS, help="overrides -v and INT_ENGINE_LOG_LEVEL")
    sub = parser.add_subparsers(dest="command", required=True)
    segment.add_parser(sub)
    bench.add_parser(sub)
    tools.add_parsers(sub)
    models.add_parser(sub)
    config_cmd.add_parser(sub)
    serve.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..log import cli_logging, resolve_level

    args = build_parser().parse_args(argv)
    try:
        level = resolve_level(args.log_level, args.verbose)
    except ValueError as err:  # a bad INT_ENGINE_LOG_LEVEL
        print(f"error: {err}", file=sys.stderr)
        return FATAL
    with cli_logging(level):
        return args.func(args)
