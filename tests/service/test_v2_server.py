"""The Open Inference Protocol v2 through a real socket (``int-engine serve``, uvicorn on loopback,
the tiny zoo), with the typed client: ``/v1/segment`` and ``/v2/models/int-engine/infer`` give
the same masks for the same images, equal to the library's; a bad input gets the protocol's
error shape; /v1's limits hold on v2 (iterations over --max-iterations, a stalled upload)."""

from __future__ import annotations

import select
import socket
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from int_engine.api import IntEngine  # noqa: E402
from int_engine.bench.serve_load import ServerProcess, png_bytes  # noqa: E402
from int_engine.bench.synthetic import make_scene  # noqa: E402
from int_engine.client import Client, ServiceError  # noqa: E402
from int_engine.config import EngineConfig  # noqa: E402
from int_engine.models.cache import ensure_tiny_zoo  # noqa: E402


@pytest.fixture(scope="module")
def server():
    zoo = ensure_tiny_zoo()
    proc = ServerProcess(["--models", str(zoo), "--iterations", "2", "--max-iterations", "4", "--upload-timeout", "3"])
    try:
        proc.wait_ready()
        yield proc.url, zoo
    finally:
        assert proc.stop() == 0, proc.output()
        proc.close()


def test_v1_and_v2_give_the_same_masks_as_the_library(server):
    url, zoo = server
    images = [make_scene(s, 48, 64)[0] for s in range(4)]
    with Client(url) as v1, Client(url, protocol="v2") as v2:
        # v2 sends an array as a UINT8 tensor and a file as a BYTES one; v1 posts the file
        answers = [(v1.segment(png_bytes(im)), v2.segment(im), v2.segment(png_bytes(im), task="frog")) for im in images]
    with IntEngine(EngineConfig(iterations=2), models_dir=zoo) as engine:
        want = [engine.segment(im) for im in images]
        want_frog = [engine.segment(im, task="frog") for im in images]
    for (a, b, c), w, wf in zip(answers, want, want_frog):
        np.testing.assert_array_equal(a.binary, b.binary)
        np.testing.assert_array_equal(a.soft, b.soft)
        assert a.to_rle() == b.to_rle() == w.to_rle() and a.picks == b.picks and a.final_iteration == b.final_iteration
        np.testing.assert_array_equal(b.binary, w.binary)
        assert np.abs(b.soft - w.soft).max() <= 1 / 255
        assert c.to_rle() == wf.to_rle() and c.task == "frog"


def test_a_bad_input_gets_the_protocols_error_shape(server):
    url, _ = server
    bad = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["bm90IGFuIGltYWdl"]}]}
    response = httpx.post(url + "/v2/models/int-engine/infer", json=bad, timeout=60)
    assert response.status_code == 400 and response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"error"} and "not an image" in response.json()["error"]
    with Client(url, protocol="v2") as client, pytest.raises(ServiceError) as err:
        client.segment(png_bytes(make_scene(0, 48, 64)[0]), preset="nope")
    assert err.value.status == 422 and "preset" in err.value.message


def test_v1s_limits_hold_on_v2_iterations_and_a_stalled_upload(server):
    url, _ = server
    with Client(url, protocol="v2") as client, pytest.raises(ServiceError) as err:
        client.segment(png_bytes(make_scene(0, 48, 64)[0]), iterations=5)
    assert err.value.status == 422 and "--max-iterations" in err.value.message
    port = int(url.rsplit(":", 1)[1])
    head = b"POST /v2/models/int-engine/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2000000\r\n\r\n{"
    said, t0 = b"", time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head)
        while time.monotonic() - t0 < 30:  # one byte every 0.5 s of a declared 2 MB, until the server closes
            if select.select([s], [], [], 0.5)[0]:
                chunk = s.recv(65536)
                if not chunk:
                    break
                said += chunk
            else:
                s.sendall(b" ")
    seconds = time.monotonic() - t0
    assert said.startswith(b"HTTP/1.1 408") and b"connection: close" in said.lower(), said[:300]
    assert b'{"error":"body not received within 3 s' in said and seconds < 3 + 4, seconds
