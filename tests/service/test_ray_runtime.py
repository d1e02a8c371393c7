"""Ray's private names, used by the service and the bench through their one shim
(``int_engine.service.ray_runtime``): the installed Ray is the version constraints.txt pins, each
name still exists, and the shim fails loudly, naming the name and the version, when it is gone.
That they appear nowhere else is tests/backends/test_private_api_shims.py's scan (PRIVATE_NAMES).

Ray: ``ray.init(_temp_dir=, _node_ip_address=)`` (``ray_runtime.init_local``) and
``ray.serve._private.replica.add_port_to_grpc_server`` (``ray_runtime.bind_replica_grpc_to_node_ip``)."""

from __future__ import annotations

import inspect
import os
import re
from importlib import metadata

import pytest
from pins import pinned

from int_engine.service import ray_runtime
from int_engine.service.ray_runtime import RayPrivateApiGone

# ---- Ray ----------------------------------------------------------------------------------

try:
    import ray

    RAY_MISSING = None
except ImportError as err:
    RAY_MISSING = f"ray is not installed (pip install -c constraints.txt '.[ray]'): {err}"
needs_ray = pytest.mark.skipif(RAY_MISSING is not None, reason=RAY_MISSING or "")


@needs_ray
def test_ray_is_the_version_constraints_txt_pins():
    assert metadata.version("ray") == pinned("ray"), (
        "another Ray: check each private name below still exists (ray_runtime's shims), then move the pin"
    )
    assert ray_runtime.ray_version() == pinned("ray")
    assert ray_runtime.RAY_PINNED == pinned("ray"), "ray_runtime.RAY_PINNED differs from constraints.txt"


@needs_ray
def test_ray_init_still_takes_the_private_keywords():
    source = inspect.getsource(ray.init)  # the undecorated function
    for name in ray_runtime.PRIVATE_INIT_KWARGS:
        assert re.search(rf"kwargs\.pop\(\s*[\"']{name}[\"']", source), (
            f"ray {metadata.version('ray')}: ray.init no longer takes {name}= (int_engine.service.ray_runtime.init_local)"
        )


@needs_ray
def test_ray_serve_replica_still_has_add_port_to_grpc_server():
    from ray.serve._private import replica

    assert callable(getattr(replica, "add_port_to_grpc_server", None)), (
        f"ray {metadata.version('ray')}: {ray_runtime.GRPC_PORT_HOOK} is gone "
        "(int_engine.service.ray_runtime.bind_replica_grpc_to_node_ip)"
    )
    # the replica binds its inter-deployment gRPC server through it, on every interface
    assert re.search(r"add_port_to_grpc_server\(\s*self\._server,\s*\"\[::\]:0\"\)", inspect.getsource(replica))


@needs_ray
def test_the_grpc_shim_binds_the_node_address_and_fails_loudly_once_the_name_is_gone(monkeypatch):
    from ray.serve._private import replica

    calls = []
    monkeypatch.setattr(replica, "add_port_to_grpc_server", lambda server, address: calls.append(address) or 4321)
    monkeypatch.setattr("ray.util.get_node_ip_address", lambda: "127.0.0.1")
    ray_runtime.bind_replica_grpc_to_node_ip()
    ray_runtime.bind_replica_grpc_to_node_ip()  # once per process: not wrapped twice
    assert replica.add_port_to_grpc_server(None, "[::]:0") == 4321
    assert replica.add_port_to_grpc_server(None, "10.0.0.1:5") == 4321
    assert calls == ["127.0.0.1:0", "10.0.0.1:5"]

    monkeypatch.delattr(replica, "add_port_to_grpc_server")
    with pytest.raises(RayPrivateApiGone, match=rf"ray {re.escape(metadata.version('ray'))} has no .*add_port_to_grpc_server"):
        ray_runtime.bind_replica_grpc_to_node_ip()


@needs_ray
def test_init_local_fails_loudly_when_ray_init_refuses_the_private_keywords(monkeypatch):
    def init(**kwargs):
        raise RuntimeError("Unknown keyword argument(s): _node_ip_address")

    for key, value in ray_runtime.LOCAL_RAY_ENV.items():  # init_local sets them: restored afterwards
        monkeypatch.setenv(key, os.environ.get(key, value))
    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(
        RayPrivateApiGone, match=rf"ray \S+ has no ray\.init\(_node_ip_address=\).*ray=={re.escape(pinned('ray'))}"
    ):
        ray_runtime.init_local(None)
