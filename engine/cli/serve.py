"""``int-engine serve``: the engine behind an HTTP API (``int_engine.service``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import FATAL, _config, _models_dir, add_config_flags


def cmd_serve(args: argparse.Namespace) -> int:
    from ..api import IntEngine
    from ..errors import IntEngineError

    try:
        from ..service import Limits, ServiceSettings, serve
    except ImportError as err:
        print(f"error: int-engine serve needs the [serve] extra (pip install 'int-engine[serve]'): {err}", file=sys.stderr)
        return FATAL
    api_key = None
    if args.api_key_file:
        try:
            api_key = Path(args.api_key_file).read_text(encoding="utf-8").strip()
        except OSError as err:
            print(f"error: {args.api_key_file}: cannot read the API key: {err.strerror or err}", file=sys.stderr)
            return FATAL
        if not api_key:
            print(f"error: {args.api_key_file}: the API key file is empty", file=sys.stderr)
            return FATAL
    try:
        cfg = _config(args)
        engine = IntEngine(cfg, models_dir=_models_dir(args, cfg), max_queue=args.max_queue)
    except IntEngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return FATAL
    settings = ServiceSettings(timeout_s=args.timeout, api_key=api_key,
                               limits=Limits(max_body_bytes=args.max_body_mb * 1024 * 1024, max_pixels=args.max_pixels))
    return serve(engine, settings, host=args.host, port=args.port, grace_s=args.grace)


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve POST /v1/segment over HTTP (FastAPI + uvicorn; the [serve] extra)")
    p.add_argument("--models", help="folder with vlm/ inpaint/ detector/ segmenter/ clip/ (default: the tiny zoo)")
    add_config_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond those in flight; past it 429")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request before 504 (the image is cancelled)")
    p.add_argument("--grace", type=float, default=30.0, help="seconds SIGTERM waits for requests in flight")
    p.add_argument("--api-key-file", help="require this key (Authorization: Bearer KEY or X-API-Key)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image accepted (413 beyond)")
    p.add_argument("--max-body-mb", type=int, default=32, help="largest request body in MiB (413 beyond)")
    p.set_defaults(func=cmd_serve)
