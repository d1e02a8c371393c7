"""``int-engine serve``: the engine behind an HTTP API (``int_engine.service``); with ``--ray``
the same app as a Ray Serve deployment of one or more replicas (``int_engine.service.ray_serve``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import largest_preset_iterations
from .common import FATAL, _config, _models_dir, add_config_flags


def cmd_serve(args: argparse.Namespace) -> int:
    from ..api import IntEngine
    from ..errors import IntEngineError

    try:
        from ..service import Limits, ServiceSettings, serve
    except ImportError as err:
        print(f"error: int-engine serve needs the [serve] extra (pip install 'int-engine[serve]'): {err}", file=sys.stderr)
        return FATAL
    if args.ray:
        problem = _check_ray_flags(args)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return FATAL
        try:  # before any model is looked at: a missing extra is the first thing to say
            from ..service import ray_runtime

            ray_runtime.import_serve(local=args.ray_address is None)
        except ImportError as err:
            print(f"error: int-engine serve --ray needs the [ray] extra (pip install 'int-engine[ray]'): {err}", file=sys.stderr)
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
    problem = _check_limit_flags(args, api_key)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return FATAL
    try:
        cfg = _config(args)
        settings = ServiceSettings(
            timeout_s=args.timeout,
            api_key=api_key,
            limits=Limits(
                max_body_bytes=args.max_body_mb * 1024 * 1024,
                max_pixels=args.max_pixels,
                # by default a request may ask for what any preset runs, or for what this server runs
                max_iterations=args.max_iterations or max(largest_preset_iterations(), cfg.iterations),
                max_task_chars=args.max_task_chars,
                upload_timeout_s=args.upload_timeout,
            ),
            metrics_auth=args.metrics_auth,
        )
        models_dir = _models_dir(args, cfg)
        if args.ray:  # the replicas load the models, each its own; this process only deploys them
            return _serve_on_ray(args, cfg, models_dir, settings)
        engine = IntEngine(cfg, models_dir=models_dir, max_queue=args.max_queue)
    except IntEngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return FATAL
    return serve(engine, settings, host=args.host, port=args.port, grace_s=args.grace)


def _check_limit_flags(args: argparse.Namespace, api_key: str | None) -> str | None:
    """What is wrong with --max-iterations / --max-task-chars / --upload-timeout / --metrics-auth, if anything."""
    if args.max_iterations is not None and args.max_iterations < 1:
        return f"--max-iterations must be >= 1, got {args.max_iterations}"
    if args.max_task_chars < 1:
        return f"--max-task-chars must be >= 1, got {args.max_task_chars}"
    if not args.upload_timeout > 0:
        return f"--upload-timeout must be > 0 seconds, got {args.upload_timeout}"
    if args.metrics_auth and api_key is None:
        return "--metrics-auth needs --api-key-file (the key /metrics then asks for)"
    return None


def _check_ray_flags(args: argparse.Namespace) -> str | None:
    """What is wrong with --replicas / --min-replicas / --max-replicas / --replica-cpus, if anything."""
    if args.replicas < 1:
        return f"--replicas must be >= 1, got {args.replicas}"
    if args.min_replicas is not None and args.max_replicas is None:
        return "--min-replicas needs --max-replicas (autoscaling between the two)"
    if args.min_replicas is not None and args.min_replicas < 0:
        return f"--min-replicas must be >= 0, got {args.min_replicas}"
    if args.max_replicas is not None:
        low = args.min_replicas if args.min_replicas is not None else 1
        if args.max_replicas < max(1, low):
            return f"--max-replicas must be >= 1 and >= --min-replicas ({low}), got {args.max_replicas}"
    if args.replica_cpus is not None and args.replica_cpus <= 0:
        return f"--replica-cpus must be > 0, got {args.replica_cpus}"
    return None


def _serve_on_ray(args: argparse.Namespace, cfg, models_dir: Path | None, settings) -> int:
    from ..service.ray_serve import RaySettings, serve_on_ray

    ray_settings = RaySettings(
        replicas=args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        replica_cpus=args.replica_cpus,
        address=args.ray_address,
        temp_dir=str(Path(args.ray_temp_dir).resolve()) if args.ray_temp_dir else None,
    )
    try:
        return serve_on_ray(
            cfg,
            models_dir.resolve() if models_dir else None,
            settings,
            max_queue=args.max_queue,
            ray_settings=ray_settings,
            host=args.host,
            port=args.port,
            grace_s=args.grace,
        )
    except RuntimeError as err:  # a replica that cannot load its models, a port in use (Ray's own errors)
        # a remote error carries its remote traceback: its last line says what failed
        print(f"error: Ray Serve could not start: {str(err).strip().splitlines()[-1]}", file=sys.stderr)
        return FATAL


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
    most = largest_preset_iterations()
    p.add_argument(
        "--max-iterations",
        type=int,
        help=f"most iterations a request may ask for (422 beyond; default: {most}, the most any preset runs, or --iterations if more)",
    )
    p.add_argument("--max-task-chars", type=int, default=200, help="longest task a request may name (422 beyond)")
    p.add_argument(
        "--upload-timeout",
        type=float,
        default=30.0,
        help="seconds a request's headers, then its body, may take to arrive (408 and the connection closed beyond)",
    )
    p.add_argument("--metrics-auth", action="store_true", help="/metrics asks for the --api-key-file key too (default: open)")
    ray = p.add_argument_group("Ray Serve (--ray; the [ray] extra)")
    ray.add_argument("--ray", action="store_true", help="serve on Ray Serve: replicas, each with its own engine")
    ray.add_argument("--replicas", type=int, default=1, help="fixed replica count (one per GPU when --device cuda)")
    ray.add_argument("--min-replicas", type=int, help="autoscaling lower bound (with --max-replicas)")
    ray.add_argument("--max-replicas", type=int, help="autoscale up to this many replicas (instead of --replicas)")
    ray.add_argument(
        "--replica-cpus", type=float, help="CPUs per replica (default: 1 beside a GPU, else 3/4 of the cluster's CPUs shared out)"
    )
    ray.add_argument("--ray-address", help="an existing Ray cluster (default: start a local one on 127.0.0.1)")
    ray.add_argument("--ray-temp-dir", help="the local cluster's session and log folder (default: Ray's own)")
    p.set_defaults(func=cmd_serve)
