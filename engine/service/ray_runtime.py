"""Ray start-up for ``serve --ray`` (``service/ray_serve.py``) and ``bench --ray``
(``bench/ray_bench.py``): the one place that imports Ray and starts or joins a cluster, and
the one shim around Ray's private names.

A leaf: only the service, the bench and the CLI import it (the engine core never imports Ray).
Ray is imported only by :func:`import_ray`, after the environment for a local, loopback-only
cluster is set: Ray reads some of those variables when it is imported.

Ray's private names used here, each behind one function that fails loudly (naming the name
and the installed Ray version) when the installed Ray lacks it (``tests/service/test_ray_runtime.py``
pins the version of ``constraints.txt`` and checks each name):

* ``ray.init(_temp_dir=..., _node_ip_address=...)`` in :func:`init_local`: Ray 2.60 has no
  public argument for a local cluster's session folder or for binding its node to loopback;
* ``ray.serve._private.replica.add_port_to_grpc_server`` in :func:`bind_replica_grpc_to_node_ip`:
  Ray Serve 2.60 has no setting for the address of a replica's inter-deployment gRPC server
  (ray-project/ray#64544).
"""

from __future__ import annotations

import os
from importlib import metadata
from types import ModuleType
from typing import Any

# A local cluster: no usage report, no auth token written to ~/.ray, and every Ray port on
# 127.0.0.1 (Ray otherwise binds its node to the machine's outward address).
LOCAL_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
LOOPBACK = "127.0.0.1"
# Ray's private names this module relies on (tests/backends/test_private_api_shims.py checks
# they appear nowhere else in the source)
PRIVATE_INIT_KWARGS = ("_temp_dir", "_node_ip_address")
RAY_PINNED = "2.60.0"  # the Ray these shims were written and tested against (constraints.txt's pin)
GRPC_PORT_HOOK = "ray.serve._private.replica.add_port_to_grpc_server"


class RayPrivateApiGone(RuntimeError):
    """The installed Ray lacks a private name this module relies on."""


def ray_version() -> str:
    """The installed Ray's version (its distribution's metadata), or "(not installed)"."""
    try:
        return metadata.version("ray")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def _gone(name: str, purpose: str) -> RayPrivateApiGone:
    return RayPrivateApiGone(
        f"ray {ray_version()} has no {name}, a private Ray name int_engine.service.ray_runtime uses to {purpose} "
        f"(written against ray=={RAY_PINNED}, the version constraints.txt pins): install that version "
        "(pip install -c constraints.txt '.[ray]') or port the shim to this one"
    )


def import_ray(local: bool) -> ModuleType:
    """``ray``; for a local cluster the loopback-only environment is set first (``setdefault``:
    the caller's own values win). Raises ImportError without the [ray] extra."""
    if local:
        for key, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(key, value)
    import ray

    return ray


def import_serve(local: bool) -> tuple[ModuleType, ModuleType]:
    """``(ray, ray.serve)`` as :func:`import_ray` imports ``ray``. Raises ImportError without
    the [ray] extra (Ray Serve's own dependencies included)."""
    ray = import_ray(local)
    from ray import serve

    return ray, serve


def init_local(temp_dir: str | None, object_store_bytes: int = 1 << 30, num_cpus: int | None = None) -> ModuleType:
    """Start a local cluster and connect to it: every port on 127.0.0.1, no dashboard, no usage
    report or auth token, its session folder in ``temp_dir`` (None: Ray's own), its object store
    ``object_store_bytes``, ``num_cpus`` CPUs (None: the machine's). Returns ``ray``.

    Raises RayPrivateApiGone when the installed ``ray.init`` no longer takes the private keyword
    arguments for the session folder and the node's address."""
    ray = import_ray(local=True)
    private = dict(zip(PRIVATE_INIT_KWARGS, (temp_dir, LOOPBACK)))
    try:
        ray.init(
            address="local",
            include_dashboard=False,
            object_store_memory=object_store_bytes,
            num_cpus=num_cpus,
            log_to_driver=False,
            **private,
        )
    except RuntimeError as err:  # Ray refuses keywords it does not know, before it starts anything
        unknown = [k for k in PRIVATE_INIT_KWARGS if k in str(err)] if "Unknown keyword argument" in str(err) else []
        if unknown:
            raise _gone(f"ray.init({', '.join(f'{k}=' for k in unknown)})", "start a local cluster on loopback") from err
        raise
    return ray


def connect(address: str) -> ModuleType:
    """Connect to the existing cluster at ``address`` (e.g. ``ray://head:10001`` or ``auto``);
    returns ``ray``."""
    ray = import_ray(local=False)
    ray.init(address=address, log_to_driver=False)
    return ray


def bind_replica_grpc_to_node_ip() -> None:
    """Ray Serve 2.60 starts each replica's inter-deployment gRPC server (unused by this HTTP
    app unless RAY_SERVE_USE_GRPC_BY_DEFAULT=1) on ``[::]:0``, every interface, with no setting
    to change it (ray-project/ray#64544); bound to the node's own address instead, a local
    cluster listens on 127.0.0.1 only and a multi-node one still reaches it. Called in the
    replica's constructor, which Ray Serve runs before it starts that server.

    Raises RayPrivateApiGone when the installed Ray Serve has no ``add_port_to_grpc_server``
    in its replica module (the replica, and so the deploy, fails with that message)."""
    purpose = "bind each replica's gRPC server to the node's address"
    try:
        from ray.serve._private import replica as serve_replica
    except ImportError as err:
        raise _gone("ray.serve._private.replica", purpose) from err
    from ray.util import get_node_ip_address

    add_port = getattr(serve_replica, "add_port_to_grpc_server", None)
    if add_port is None:
        raise _gone(GRPC_PORT_HOOK, purpose)
    if getattr(add_port, "binds_node_ip", False):
        return  # already narrowed in this process
    host = get_node_ip_address()
    host = f"[{host}]" if ":" in host else host

    def add_port_on_node_ip(server: Any, address: str) -> int:
        if address.startswith("[::]:"):
            address = f"{host}:{address[len('[::]:') :]}"
        return add_port(server, address)

    add_port_on_node_ip.binds_node_ip = True  # type: ignore[attr-defined]
    serve_replica.add_port_to_grpc_server = add_port_on_node_ip
