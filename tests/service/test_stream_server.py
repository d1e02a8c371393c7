"""Streaming through a real socket (``int-engine serve``, uvicorn on loopback, the tiny zoo): the
iterations' events arrive one by one before the final one, and a client that leaves mid-stream
has its image cancelled at the next tick."""

from __future__ import annotations

import contextlib
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from int_engine.bench.serve_load import ServerProcess, png_bytes  # noqa: E402
from int_engine.bench.synthetic import make_scene  # noqa: E402
from int_engine.client import Client, ClientIteration, ClientResult  # noqa: E402
from int_engine.models.cache import ensure_tiny_zoo  # noqa: E402


@pytest.fixture(scope="module")
def server():
    ensure_tiny_zoo()
    proc = ServerProcess(["--iterations", "3", "--max-iterations", "12"])  # the mid-stream leaver asks for 12
    try:
        proc.wait_ready()
        yield proc
    finally:
        assert proc.stop() == 0, proc.output()
        proc.close()


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return float(next(line for line in text.splitlines() if line.startswith(name + " ")).split()[-1])


def test_each_iteration_arrives_before_the_final_event(server):
    data = png_bytes(make_scene(0, 48, 64)[0])
    arrivals: list[tuple[ClientIteration | ClientResult, float]] = []
    with Client(server.url) as client:
        for item in client.iterations(data):  # the client checks the answer is text/event-stream
            arrivals.append((item, time.monotonic()))
        plain = client.segment(data)
    assert [type(item) for item, _ in arrivals] == [ClientIteration] * 3 + [ClientResult]
    assert [item.iteration for item, _ in arrivals[:3]] == [0, 1, 2]
    times = [t for _, t in arrivals]
    assert times == sorted(times) and times[-1] > times[0]  # not one burst at the end
    assert arrivals[-1][0].to_rle() == plain.to_rle()


def test_a_client_that_leaves_mid_stream_frees_its_image(server):
    data = png_bytes(make_scene(1, 48, 64)[0])
    before = metric(server.url, "int_engine_requests_cancelled")
    with Client(server.url) as client:
        with contextlib.closing(client.iterations(data, iterations=12)) as items:
            assert isinstance(next(items), ClientIteration)  # the first iteration landed; leave with eleven to go
        deadline = time.time() + 60
        while time.time() < deadline:
            if (
                metric(server.url, "int_engine_requests_cancelled") > before
                and metric(server.url, "int_engine_images_in_flight") == 0
            ):
                break
            time.sleep(0.2)
        assert metric(server.url, "int_engine_requests_cancelled") == before + 1
        assert metric(server.url, "int_engine_images_in_flight") == 0
        assert client.segment(data).picks  # the server goes on (an error answer would raise)
