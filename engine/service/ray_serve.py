"""``int-engine serve --ray``: the service's FastAPI app (``create_app``) as a Ray Serve deployment.

Each replica is a Ray actor that loads its own ``IntEngine`` once (its own models, its own
engine core batching the requests that replica holds) and serves the very app the
single-process server does: the same endpoints, statuses, JSON errors and per-replica
``/metrics``. Ray Serve's proxy listens on ``--host``/``--port`` and routes each request to a
replica; a replica that dies is replaced by Ray Serve's controller. The requests it held are
sent once more to a live replica by the proxy's ``ReplicaLossMiddleware`` (else they get a JSON
503), and the proxy's ``request_timeout_s`` bounds every request, so none hangs.

Ray is imported, and a cluster started or joined, by ``ray_runtime`` (shared with ``bench --ray``),
which also holds the one shim around Ray Serve's private replica module.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any

from ..config import EngineConfig
from ..log import get_logger
from .ray_runtime import bind_replica_grpc_to_node_ip, connect, import_serve, init_local

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .app import ServiceSettings

log = get_logger("service")

APP_NAME = "int-engine"
REPLICA_HEADER = "x-int-engine-replica"  # which replica answered: Ray Serve's routing, made visible
RESENT_HEADER = "x-int-engine-resent"  # how often the proxy sent a request again after losing its replica
# Ray Serve's proxy imports its middleware from this path, named in its environment
PROXY_HOOK = "int_engine.service.ray_serve:proxy_middlewares"
PROXY_BODY_ENV = "INT_ENGINE_PROXY_MAX_BODY_BYTES"  # the app's body limit, for the proxy's retry buffer
# CPU share of a CPU-only cluster given to replicas; the rest keeps the proxy, the controller
# and Ray's own workers running (replicas holding every CPU starve them and requests hang).
REPLICA_CPU_SHARE = 0.75


@dataclass
class RaySettings:
    """How the deployment is laid out on Ray.

    replicas: fixed replica count (ignored when ``max_replicas`` is set); min/max_replicas:
    autoscaling bounds; replica_cpus: CPUs reserved per replica (None: a share of the cluster's,
    or 1 beside each replica's GPU); address: an existing cluster (None: start a local one on
    loopback); temp_dir: the local cluster's session/log folder; object_store_bytes: its
    object store."""

    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    replica_cpus: float | None = None
    address: str | None = None
    temp_dir: str | None = None
    object_store_bytes: int = 1 << 30


def cuda_devices(config: EngineConfig) -> list[str]:
    """The distinct CUDA devices the config's roles run on, in order ("cuda" counts as "cuda:0")."""
    devices = {_cuda_index(config.models.device_of(role)) for role in config.models.roles}
    return [f"cuda:{i}" for i in sorted(d for d in devices if d is not None)]


def _cuda_index(device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    return int(device.partition(":")[2] or 0)


def replica_config(config: EngineConfig) -> EngineConfig:
    """The config as a replica sees it: Ray gives it its GPUs as ``cuda:0..k-1`` (it sets
    CUDA_VISIBLE_DEVICES), so the k devices the config names are renumbered in order."""
    renumber = {_cuda_index(d): f"cuda:{k}" for k, d in enumerate(cuda_devices(config))}
    if not renumber:
        return config

    def moved(device: str | None) -> str | None:
        index = _cuda_index(device) if device else None
        return renumber[index] if index is not None else device

    models = replace(
        config.models,
        device=moved(config.models.device) or config.models.device,
        **{
            role: replace(config.models.role(role), device=moved(config.models.role(role).device)) for role in config.models.roles
        },
    )
    return replace(config, models=models)


class IntEngineReplica:
    """One replica: its own ``IntEngine`` and the service app around it. Ray Serve wraps this
    class with ``serve.ingress()`` (no app given: ``__serve_build_asgi_app__`` builds it once
    the engine is loaded, inside the replica) and ``serve.deployment``."""

    def __init__(
        self, config: EngineConfig, models_dir: str | None, settings: ServiceSettings, max_queue: int, torch_threads: int
    ) -> None:
        import torch
        from ray import serve

        from ..api import IntEngine

        # the replica's CPU reservation, not every core: replicas share the machine
        torch.set_num_threads(torch_threads)
        bind_replica_grpc_to_node_ip()
        self.engine = IntEngine(replica_config(config), models_dir=models_dir, max_queue=max_queue)
        self.settings = settings
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.service_app: "FastAPI | None" = None  # not ``app``: Ray's wrapper has a property of that name
        log.warning("replica %s (pid %d) loaded its models", self.replica_id, os.getpid())

    def __serve_build_asgi_app__(self) -> "FastAPI":
        """The single-process server's app around this replica's engine, each answer naming
        the replica (``X-Int-Engine-Replica``) so that routing and failover can be seen."""
        from .app import create_app

        app = create_app(self.engine, self.settings)
        app.add_middleware(NameReplica, replica=self.replica_id)
        self.service_app = app
        return app

    def check_health(self) -> None:
        """Ray Serve's periodic probe: a replica whose engine core stopped is replaced."""
        core = self.engine.core  # EngineClosed once closed: unhealthy
        if not core.alive:
            raise RuntimeError("the engine core's thread has stopped")

    def __del__(self) -> None:
        """Called by Ray Serve when the replica stops, after its requests in flight finished
        or its graceful_shutdown_timeout_s ran out: new work gets 503, the core drains."""
        # getattr: Ray calls this also after a constructor that failed part-way
        app, engine = getattr(self, "service_app", None), getattr(self, "engine", None)
        if app is not None:
            app.state.draining = True
        if engine is not None:
            engine.close(drain=True)


class NameReplica:
    """Pure ASGI middleware naming the replica in every answer's headers (a pure one, unlike
    ``@app.middleware``, leaves the app's own streaming and disconnect checks untouched)."""

    def __init__(self, app: Any, replica: str) -> None:
        self.app, self.header = app, (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def named(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, named)


class ReplicaLossMiddleware:
    """ASGI middleware in Ray Serve's proxy: a request whose replica died before answering is
    sent again (``retries`` times; segmentation is a pure function of the request, so a retry
    is safe), and the errors the proxy itself makes (its 408 timeout, 503 backpressure, 404 while
    the application is being deleted, which becomes the app's 503 "shutting down") get the app's
    JSON error body. The body is kept for a retry up to ``max_body_bytes`` (the app's own
    limit: a larger one is answered 413 anyway)."""

    def __init__(self, app: Any, max_body_bytes: int = 32 * 1024 * 1024, retries: int = 1) -> None:
        self.app, self.max_body_bytes, self.retries = app, max_body_bytes, retries

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body, complete, size = [], False, 0
        while not complete and size <= self.max_body_bytes:  # a larger body is the app's 413: not kept
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            body.append(message)
            size += len(message.get("body", b""))
            complete = not message.get("more_body", False)
        client = {"gone": False}

        async def client_stream() -> dict:
            message = await receive()
            client["gone"] = client["gone"] or message["type"] == "http.disconnect"
            return message

        tries = 0
        while True:
            tries += 1
            if await self._attempt(scope, self._replay(body, client_stream), send, tries - 1) or client["gone"]:
                return  # answered, or nobody is waiting for an answer
            if not complete or tries > self.retries:  # a body not kept cannot be sent again
                break
        await self._send_error(send, 503, f"the replica serving this request stopped ({tries} tries): retry")

    @staticmethod
    def _replay(body: list[dict], receive: Any) -> Any:
        queued = list(body)

        async def replay() -> dict:
            # the body read so far, then the client's own stream (the rest, or its disconnect)
            return queued.pop(0) if queued else await receive()

        return replay

    async def _attempt(self, scope: dict, receive: Any, send: Any, resent: int) -> bool:
        """One pass through the proxy; False when it ended with no response (the replica died).
        An answer to a request sent again says so (``X-Int-Engine-Resent: N``)."""
        state: dict[str, Any] = {"start": None, "pass": False, "chunks": []}

        async def forward(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["start"] = message
                ours = any(k.lower() == REPLICA_HEADER.encode() for k, _ in message.get("headers", []))
                state["pass"] = ours or message["status"] < 400  # the app's answers, the proxy's 200s
                if state["pass"]:
                    if resent:
                        message = {
                            **message,
                            "headers": [*message.get("headers", []), (RESENT_HEADER.encode(), str(resent).encode())],
                        }
                    await send(message)
            elif state["pass"] or message["type"] != "http.response.body":
                await send(message)
            else:  # the proxy's own error (plain text): collected, then sent as the app's JSON error
                state["chunks"].append(message.get("body", b""))
                if not message.get("more_body", False):
                    start, status = state["start"], state["start"]["status"]
                    text = b"".join(state["chunks"]).decode("utf-8", "replace").strip() or "proxy error"
                    extra = [(k, v) for k, v in start.get("headers", []) if k.lower() == b"retry-after"]
                    if status == 404:  # the app owns every path: the proxy's 404 means it is not deployed
                        status, text = 503, f"shutting down (or not yet serving): {text}"
                    await self._send_error(send, status, text, extra)

        await self.app(scope, receive, forward)
        return state["start"] is not None

    @staticmethod
    async def _send_error(send: Any, status: int, message: str, extra: list | None = None) -> None:
        data = json.dumps({"error": {"status": status, "message": message}}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
        await send({"type": "http.response.body", "body": data})


def proxy_middlewares() -> list:
    """Ray Serve's proxy hook (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` names it; Ray 2.60
    takes proxy middleware only that way): ``ReplicaLossMiddleware`` with the body limit the
    deploying process put in ``INT_ENGINE_PROXY_MAX_BODY_BYTES``."""
    from starlette.middleware import Middleware

    limit = int(os.environ.get(PROXY_BODY_ENV, str(32 * 1024 * 1024)))
    return [Middleware(ReplicaLossMiddleware, max_body_bytes=limit)]


def build_app(
    config: EngineConfig,
    models_dir: Path | None,
    settings: ServiceSettings,
    max_queue: int,
    ray_settings: RaySettings,
    grace_s: float,
    cluster_cpus: float,
) -> Any:
    """The Ray Serve application: ``IntEngineReplica`` as a deployment sized for the cluster."""
    from ray import serve

    gpus = len(cuda_devices(config))
    if ray_settings.replica_cpus is not None:
        cpus = ray_settings.replica_cpus
    elif gpus:
        cpus = 1.0
    else:
        cpus = REPLICA_CPU_SHARE * cluster_cpus / max(ray_settings.max_replicas or ray_settings.replicas, 1)
    options: dict[str, Any] = {
        "name": "IntEngine",
        "ray_actor_options": {"num_cpus": cpus, "num_gpus": gpus},
        # the replica's own core queues and batches; past its queue the app answers 429
        "max_ongoing_requests": config.max_in_flight + max_queue,
        "graceful_shutdown_timeout_s": grace_s,
        "health_check_period_s": 5.0,
        "max_constructor_retry_count": 3,  # a zoo that cannot load fails the deploy, not forever
    }
    if ray_settings.max_replicas is not None:
        options["autoscaling_config"] = {
            "min_replicas": ray_settings.min_replicas if ray_settings.min_replicas is not None else 1,
            "max_replicas": ray_settings.max_replicas,
            # a replica batches: scale when it holds more than a full batch of images
            "target_ongoing_requests": config.max_in_flight,
        }
    else:
        options["num_replicas"] = ray_settings.replicas
    deployment = serve.deployment(**options)(serve.ingress()(IntEngineReplica))
    return deployment.bind(config, str(models_dir) if models_dir else None, settings, max_queue, max(1, int(cpus)))


def deployment_problem(serve: ModuleType) -> str:
    """The deployment's own status message (a replica constructor's error, last line first)."""
    status = serve.status().applications.get(APP_NAME)
    messages = [d.message for d in status.deployments.values() if d.message] if status else []
    lines = [line.strip() for m in messages for line in m.strip().splitlines() if line.strip()]
    return f"({lines[-1]})" if lines else ""


def serve_on_ray(
    config: EngineConfig,
    models_dir: Path | None,
    settings: ServiceSettings,
    max_queue: int = 64,
    ray_settings: RaySettings | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    grace_s: float = 30.0,
) -> int:
    """Deploy on Ray Serve and serve until SIGTERM/SIGINT; returns the exit code (0).

    A local cluster is started (loopback only) unless ``ray_settings.address`` names one. On
    the signal the application is deleted (drained), then Serve is shut down on a local cluster
    (an existing one's Serve may hold other applications) and Ray is left."""
    ray_settings = ray_settings or RaySettings()
    local = ray_settings.address is None
    ray, serve = import_serve(local)
    if local:
        # the proxy's middleware: Ray's processes inherit this environment (on an existing
        # cluster its nodes must be started with it, README)
        os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", PROXY_HOOK)
        os.environ[PROXY_BODY_ENV] = str(settings.limits.max_body_bytes)
        init_local(ray_settings.temp_dir, ray_settings.object_store_bytes)
    else:
        connect(ray_settings.address)
    stop = threading.Event()

    def on_signal(sig: int, frame: FrameType | None) -> None:
        log.warning("signal %d: stopping the Ray Serve application", sig)
        stop.set()

    try:
        # the proxy's own bound on a request, past the app's timeout (which answers 504 first):
        # a request held by a replica that hangs still gets an answer (408)
        serve.start(http_options={"host": host, "port": port, "request_timeout_s": settings.timeout_s + 30.0})
        application = build_app(
            config, models_dir, settings, max_queue, ray_settings, grace_s, float(ray.cluster_resources().get("CPU", 1.0))
        )
        try:
            serve.run(application, name=APP_NAME, route_prefix="/")
        except RuntimeError as err:  # Ray says only that the deployment failed: say why
            raise RuntimeError(f"{err} {deployment_problem(serve)}".strip()) from None
        # once deployed: until then Ray's own handlers (set by ray.init) stop and clean up at once
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        low = ray_settings.min_replicas if ray_settings.min_replicas is not None else 1
        layout = (
            f"{low}..{ray_settings.max_replicas} replicas"
            if ray_settings.max_replicas is not None
            else f"{ray_settings.replicas} replica(s)"
        )
        log.warning(
            "serving on Ray Serve at http://%s:%d with %s (POST /v1/segment, GET /healthz /readyz /metrics)", host, port, layout
        )
        while not stop.wait(0.5):  # a timed wait: the signal handler runs between waits
            pass
    finally:
        # deleting the application first drains it: its replicas take no new requests and
        # finish those they hold (graceful_shutdown_timeout_s) while the proxy still answers
        serve.delete(APP_NAME)
        if local:
            serve.shutdown()
        ray.shutdown()
    return 0
