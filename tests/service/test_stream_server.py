"""Streaming through a real socket (``int-engine serve``, uvicorn on loopback, the tiny zoo): the
iterations' events arrive one by one before the final one, and a client that leaves mid-stream
has its image cancelled at the next tick."""

from __future__ import annotations

import json
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from int_engine.bench.serve_load import ServerProcess, png_bytes  # noqa: E402
from int_engine.bench.synthetic import make_scene  # noqa: E402
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
    arrivals: list[tuple[str, float, dict]] = []
    with httpx.stream(
        "POST", server.url + "/v1/segment?stream=true", files={"image": ("x.png", data, "image/png")}, timeout=300
    ) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                arrivals.append((event, time.monotonic(), json.loads(line[6:])))
    assert [e for e, _, _ in arrivals] == ["iteration", "iteration", "iteration", "result"]
    assert [d["iteration"] for _, _, d in arrivals[:3]] == [0, 1, 2]
    times = [t for _, t, _ in arrivals]
    assert times == sorted(times) and times[-1] > times[0]  # not one burst at the end
    plain = httpx.post(server.url + "/v1/segment", files={"image": ("x.png", data, "image/png")}, timeout=300).json()
    assert arrivals[-1][2]["binary_rle"] == plain["binary_rle"]


def test_a_client_that_leaves_mid_stream_frees_its_image(server):
    data = png_bytes(make_scene(1, 48, 64)[0])
    before = metric(server.url, "int_engine_requests_cancelled")
    with httpx.stream(
        "POST",
        server.url + "/v1/segment?stream=true",
        files={"image": ("x.png", data, "image/png")},
        data={"iterations": "12"},
        timeout=300,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("event: iteration"):
                break  # the first iteration landed; leave with eleven to go
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
    again = httpx.post(server.url + "/v1/segment", files={"image": ("x.png", data, "image/png")}, timeout=300)
    assert again.status_code == 200  # the server goes on
