"""``int-engine config show``: the config a run would use, resolved, as YAML."""

from __future__ import annotations

import argparse
import sys

from .common import FATAL, _config, add_config_flags


def cmd_config_show(args: argparse.Namespace) -> int:
    """Print the effective config (defaults < --preset < --config < flags < --set) as the YAML
    ``--config`` reads back; with --models, every role's path resolved as a run would load it."""
    from ..errors import IntEngineError
    from ..run_info import config_yaml, resolved_config

    try:
        cfg = _config(args)
        if args.models:
            cfg = resolved_config(cfg, args.models)
    except IntEngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return FATAL
    sys.stdout.write(config_yaml(cfg))
    return 0


def add_parser(sub) -> None:
    config = sub.add_parser("config", help="show the resolved config").add_subparsers(dest="config_command", required=True)
    show = config.add_parser("show", help="print the effective config as YAML (what --config reads back)")
    add_config_flags(show)
    show.add_argument("--models", help="resolve every role's path against this models folder")
    show.set_defaults(func=cmd_config_show)
