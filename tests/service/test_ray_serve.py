"""``int-engine serve --ray``: the service on Ray Serve (a local cluster on loopback, the tiny
zoo, two replicas). 32 concurrent requests answered with the library's masks by both replicas;
a replica killed under load: every request answered in time (retried on the live replica),
the replica replaced; nothing listens beyond loopback; SIGTERM finishes the requests in flight,
answers new ones 503, exits 0 and leaves no Ray process. Without Ray: the [ray] extra named, bad flags refused, the proxy middleware's retry."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from int_engine.api import IntEngine  # noqa: E402
from int_engine.bench.serve_load import ServerProcess, free_port, png_bytes  # noqa: E402
from int_engine.bench.synthetic import make_scene  # noqa: E402
from int_engine.cli import main  # noqa: E402
from int_engine.config import EngineConfig  # noqa: E402
from int_engine.models.cache import ensure_tiny_zoo  # noqa: E402
from int_engine.service.ray_runtime import LOCAL_RAY_ENV  # noqa: E402
from int_engine.service.ray_serve import (  # noqa: E402
    REPLICA_HEADER,
    RESENT_HEADER,
    ReplicaLossMiddleware,
    cuda_devices,
    replica_config,
)

try:
    import ray  # noqa: F401

    RAY_MISSING = None
except ImportError as err:
    RAY_MISSING = f"ray is not installed (pip install -c constraints.txt '.[ray]'): {err}"
needs_ray = pytest.mark.skipif(RAY_MISSING is not None, reason=RAY_MISSING or "")

REQUEST_TIMEOUT = 120.0  # per request, client side: past it a request counts as hung
OK_OR_ERROR = {200, 429, 503}


def ray_processes(root: psutil.Process) -> list[psutil.Process]:
    """The processes the server started (Ray's GCS, raylet, workers, replicas)."""
    try:
        return root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def replica_pids(root: psutil.Process) -> set[int]:
    pids = set()
    for proc in ray_processes(root):
        try:
            title = (proc.cmdline() or [""])[0]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "ServeReplica:int-engine:IntEngine" in title:
            pids.add(proc.pid)
    return pids


class RayServer(ServerProcess):
    """``int-engine serve --ray`` in a subprocess on a free loopback port (bench/serve_load's
    ``ServerProcess``), ready once every replica runs; its Ray session folder in ``temp``."""

    def __init__(self, temp: Path, *args: str) -> None:
        super().__init__(
            ["--ray", "--ray-temp-dir", str(temp / "ray"), *args], env=LOCAL_RAY_ENV, ready_text="serving on Ray Serve"
        )
        self.temp = temp
        self.root = psutil.Process(self.proc.pid)
        try:
            self.wait_ready()
        except RuntimeError:
            self.stop()
            self.close()
            raise

    def replica_pid(self, replica: str) -> int:
        """The pid of a replica (by the id in its answers), from the line each replica logs
        into its worker's log in the Ray session folder."""
        for log in (self.temp / "ray" / "session_latest" / "logs").glob("worker-*.err"):
            found = re.search(rf"replica {re.escape(replica)} \(pid (\d+)\)", log.read_text(errors="replace"))
            if found:
                return int(found.group(1))
        raise AssertionError(f"no log names replica {replica}")

    def stop(self, timeout_s: float = 90.0) -> int:
        return super().stop(timeout_s)

    def kill(self) -> None:
        """The server and every Ray process it started (a stop that hung leaves no cluster)."""
        for proc in ray_processes(self.root):
            proc.kill()
        super().kill()


@pytest.fixture(scope="module")
def zoo() -> Path:
    return ensure_tiny_zoo()


@pytest.fixture(scope="module")
def server(tmp_path_factory, zoo):
    # a short folder: Ray's socket paths inside it must stay under the 107-byte limit
    srv = RayServer(tmp_path_factory.mktemp("r"), "--replicas", "2", "--iterations", "1", "--timeout", "90")
    yield srv
    srv.stop()
    srv.close()


PICS = [make_scene(s, 48, 64)[0] for s in range(8)]
DATA = [png_bytes(p) for p in PICS]


@pytest.fixture(scope="module")
def want(zoo):
    with IntEngine(EngineConfig(iterations=1), models_dir=zoo) as engine:
        return [engine.segment(p).to_rle() for p in PICS]


def post(url: str, k: int) -> tuple[int, httpx.Response]:
    return k, httpx.post(url + "/v1/segment", files={"image": ("x.png", DATA[k % 8], "image/png")}, timeout=REQUEST_TIMEOUT)


def check_answers(futures, want) -> list[httpx.Response]:
    """Every request answered within its timeout: 200 with the library's mask, or a JSON error."""
    done, not_done = wait(futures, timeout=REQUEST_TIMEOUT + 30)
    assert not not_done, f"{len(not_done)} requests never answered"
    responses = []
    for f in futures:
        k, r = f.result()  # an httpx timeout raises here: a hung request fails the test
        assert r.status_code in OK_OR_ERROR, (r.status_code, r.text[:300])
        if r.status_code == 200:
            assert r.json()["binary_rle"] == want[k % 8]
        else:
            assert r.json()["error"]["status"] == r.status_code
        responses.append(r)
    return responses


@needs_ray
def test_32_concurrent_requests_answered_by_both_replicas_with_the_librarys_masks(server, want):
    with ThreadPoolExecutor(32) as pool:  # bounded: 32 requests, then the pool stops
        responses = check_answers([pool.submit(post, server.url, k) for k in range(32)], want)
    codes = [r.status_code for r in responses]
    assert codes.count(200) >= 24, codes
    replicas = {r.headers[REPLICA_HEADER] for r in responses if r.status_code == 200}
    assert len(replicas) == 2, f"Ray Serve routed every request to {replicas}"
    metrics = httpx.get(server.url + "/metrics", timeout=30)
    assert metrics.status_code == 200 and "int_engine_batch_images_count" in metrics.text
    assert httpx.get(server.url + "/healthz", timeout=30).json() == {"status": "ok"}
    bad = httpx.post(server.url + "/v1/segment", content=b"x", headers={"content-type": "text/plain"}, timeout=30)
    assert bad.status_code == 415 and bad.json()["error"]["status"] == 415  # the app's own errors, unchanged
    print(f"32 requests: {codes.count(200)} x 200 from replicas {sorted(replicas)}")


def loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped 127.x (Ray's gRPC servers bind [::ffff:127.0.0.1])."""
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


@needs_ray
def test_only_loopback_sockets_listen(server):
    listening = []
    for proc in [server.root, *ray_processes(server.root)]:
        try:
            listening += [(proc.pid, c.laddr.ip) for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    assert listening, "no listening socket found: the check would prove nothing"
    outward = [(pid, ip) for pid, ip in listening if not loopback(ip)]
    assert not outward, f"listening beyond loopback: {outward}"


def busy_replica(url: str, deadline_s: float = 60.0) -> str:
    """The id of a replica whose engine holds at least 2 requests (its /readyz says so)."""
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        ready = httpx.get(url + "/readyz", timeout=10)
        if ready.status_code == 200 and ready.json()["in_flight"] + ready.json()["queue_depth"] >= 2:
            return ready.headers[REPLICA_HEADER]
        time.sleep(0.05)
    raise AssertionError(f"no replica held 2 requests within {deadline_s:g} s")


@needs_ray
def test_a_replica_killed_under_load_every_request_answered_and_the_replica_replaced(server, want):
    before = replica_pids(server.root)
    assert len(before) == 2
    with ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(post, server.url, k) for k in range(32)]
        victim = server.replica_pid(busy_replica(server.url))
        assert victim in before
        os.kill(victim, signal.SIGKILL)
        t_kill = time.time()
        responses = check_answers(futures, want)
    seen = {r.headers.get(REPLICA_HEADER) for r in responses}  # the survivor (and the victim, if it answered)
    codes = [r.status_code for r in responses]
    resent = [r for r in responses if r.headers.get(RESENT_HEADER)]
    assert resent, "no request was held by the killed replica: the kill proved nothing"
    assert victim not in replica_pids(server.root)
    # deadline: a replacement replica loads the zoo and joins; new requests reach it
    deadline, replaced = time.time() + 150, None
    while time.time() < deadline and replaced is None:
        with ThreadPoolExecutor(4) as pool:
            batch = check_answers([pool.submit(post, server.url, k) for k in range(4)], want)
        fresh = {r.headers.get(REPLICA_HEADER) for r in batch if r.status_code == 200} - seen
        after = replica_pids(server.root)
        if fresh and victim not in after and len(after) == 2:
            replaced = fresh
        time.sleep(0.5)
    assert replaced, f"no replacement replica answered within 150 s of the kill (replicas {replica_pids(server.root)})"
    print(
        f"kill under load: {codes.count(200)} x 200 ({len(resent)} sent again), {len(codes) - codes.count(200)} errors; "
        f"replacement {sorted(replaced)} answering {time.time() - t_kill:.0f} s after the kill"
    )


@needs_ray
def test_sigterm_finishes_requests_in_flight_refuses_new_ones_stops_ray_and_exits_0(server, want):
    processes = ray_processes(server.root)
    assert processes
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(post, server.url, k) for k in range(8)]
        time.sleep(1.0)  # the requests reach the replicas
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        try:
            late = post(server.url, 0)[1]
        except httpx.TransportError:  # the proxy already stopped: refused, not hung
            late = None
        responses = check_answers(futures, want)
    assert [r.status_code for r in responses] == [200] * 8
    assert late is None or (late.status_code == 503 and "shutting down" in late.json()["error"]["message"])
    assert server.proc.wait(90) == 0, server.output()[-3000:]
    _, alive = psutil.wait_procs(processes, timeout=30)
    assert not alive, f"Ray processes left running: {[p.pid for p in alive]}"
    print(f"SIGTERM: 8 x 200 in flight; a request 0.5 s later: {late.status_code if late else 'refused'}")


@needs_ray
def test_a_zoo_that_cannot_load_fails_the_deploy_with_its_reason_and_exit_101(tmp_path_factory):
    temp = tmp_path_factory.mktemp("r")
    env = {**os.environ, **LOCAL_RAY_ENV}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "int_engine.cli",
            "serve",
            "--ray",
            "--models",
            str(temp / "missing"),
            "--port",
            str(free_port()),
            "--ray-temp-dir",
            str(temp / "ray"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 101, run.stderr[-3000:]
    error = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "ModelLoadError" in error[0] and "missing/vlm" in error[0], run.stderr[-3000:]


# ---- without a cluster ---------------------------------------------------------------------


def test_without_ray_the_extra_is_named_and_exit_is_101(monkeypatch, capsys):
    for key in LOCAL_RAY_ENV:  # the CLI sets them before importing Ray: restored afterwards
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert main(["serve", "--ray", "--iterations", "1"]) == 101
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "[ray]" in err, err


@pytest.mark.parametrize(
    "flags",
    [
        ["--replicas", "0"],
        ["--min-replicas", "1"],
        ["--max-replicas", "0"],
        ["--min-replicas", "3", "--max-replicas", "2"],
        ["--replica-cpus", "0"],
    ],
)
def test_bad_replica_flags_exit_101(flags, capsys):
    assert main(["serve", "--ray", *flags]) == 101
    assert capsys.readouterr().err.startswith("error: --")


def test_replicas_see_their_gpus_renumbered_from_0():
    cfg = EngineConfig()
    assert cuda_devices(cfg) == [] and replica_config(cfg) is cfg
    two = replace(cfg, models=replace(cfg.models, device="cuda:1", vlm=replace(cfg.models.vlm, device="cuda:3")))
    assert cuda_devices(two) == ["cuda:1", "cuda:3"]
    seen = replica_config(two).models
    assert seen.device == "cuda:0" and seen.device_of("vlm") == "cuda:1" and seen.device_of("clip") == "cuda:0"


def run_asgi(middleware, body: list[bytes]) -> tuple[list[dict], list[dict]]:
    """Run ``middleware`` on one POST whose body arrives in ``body`` chunks; (sent, received by app)."""
    chunks = [{"type": "http.request", "body": b, "more_body": i < len(body) - 1} for i, b in enumerate(body)]
    sent: list[dict] = []

    async def receive() -> dict:
        if chunks:
            return chunks.pop(0)
        await asyncio.sleep(3600)  # a client that stays: the disconnect never comes
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(middleware({"type": "http", "method": "POST", "path": "/v1/segment"}, receive, send))
    return sent


def test_proxy_middleware_resends_a_request_whose_replica_died():
    calls: list[bytes] = []

    async def proxy(scope, receive, send):  # Ray's proxy: the first replica dies without answering
        body = b""
        while True:
            message = await receive()
            body += message["body"]
            if not message["more_body"]:
                break
        calls.append(body)
        if len(calls) == 1:
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(REPLICA_HEADER.encode(), b"b")]})
        await send({"type": "http.response.body", "body": b"mask"})

    sent = run_asgi(ReplicaLossMiddleware(proxy), [b"ima", b"ge"])
    assert calls == [b"image", b"image"]  # the same body, twice
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"mask"
    assert (RESENT_HEADER.encode(), b"1") in sent[0]["headers"]


def test_proxy_middleware_answers_503_json_when_the_retry_also_dies_and_jsonifies_proxy_errors():
    async def dead(scope, receive, send):
        await receive()

    sent = run_asgi(ReplicaLossMiddleware(dead), [b"image"])
    assert sent[0]["status"] == 503 and json.loads(sent[1]["body"])["error"]["status"] == 503

    async def timed_out(scope, receive, send):  # the proxy's own 408, plain text
        await receive()
        await send({"type": "http.response.start", "status": 408, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"Request 1 timed out after 90s."})

    sent = run_asgi(ReplicaLossMiddleware(timed_out), [b"image"])
    assert sent[0]["status"] == 408
    assert json.loads(sent[1]["body"]) == {"error": {"status": 408, "message": "Request 1 timed out after 90s."}}

    async def undeployed(scope, receive, send):  # the proxy while the application is being deleted
        await receive()
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"Path '/v1/segment' not found."})

    sent = run_asgi(ReplicaLossMiddleware(undeployed), [b"image"])
    assert sent[0]["status"] == 503 and "shutting down" in json.loads(sent[1]["body"])["error"]["message"]
