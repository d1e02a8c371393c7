"""The Open Inference Protocol v2 through a real socket (``int-engine serve``, uvicorn on loopback,
the tiny zoo), with the typed client: ``/v1/segment`` and ``/v2/models/int-engine/infer`` give
the same masks for the same images, equal to the library's; a bad input gets the protocol's
error shape."""

from __future__ import annotations

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
    proc = ServerProcess(["--models", str(zoo), "--iterations", "2"])
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
