"""The HTTP service in-process (FastAPI's TestClient) on scripted models: answers, every bad
input's status and JSON error (and the next good request succeeding), 401 / 429 / 504,
metrics and the OpenAPI schema, memory over many requests."""

from __future__ import annotations

import base64
import io
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from service_helpers import scene, scripted_engine  # noqa: E402

from int_engine.bench.serve_load import png_bytes  # noqa: E402
from int_engine.service import Limits, ServiceSettings, create_app  # noqa: E402


@pytest.fixture
def engine():
    eng = scripted_engine()
    yield eng
    eng.close()


def client_for(engine, **settings) -> TestClient:
    return TestClient(create_app(engine, ServiceSettings(**settings)), raise_server_exceptions=False)


def post_image(client: TestClient, data: bytes, **fields):
    return client.post("/v1/segment", files={"image": ("x.png", data, "image/png")}, data=fields)


def test_multipart_and_json_give_the_librarys_masks(engine):
    client = client_for(engine)
    image = scene(3)
    want = engine.segment(image, iterations=2)
    for response in (
        post_image(client, png_bytes(image), iterations="2"),
        client.post("/v1/segment", json={"image": base64.b64encode(png_bytes(image)).decode(), "iterations": 2}),
    ):
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["width"], body["height"]) == (image.shape[1], image.shape[0])
        rle = body["binary_rle"]
        decoded = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), want.binary)
        soft = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["soft_png"]))))
        assert soft.shape == want.soft.shape and np.abs(soft.astype(int) - np.round(want.soft * 255)).max() <= 1
        assert body["picks"] == [it.pick for it in want.trace.iterations] and len(body["picks"]) >= 1
        assert set(body["seconds"]) >= {"segment", "detect"} and all(v >= 0 for v in body["seconds"].values())


def test_accept_png_returns_the_binary_mask(engine):
    image = scene(4)
    want = engine.segment(image)
    response = client_for(engine).post(
        "/v1/segment", files={"image": ("x.png", png_bytes(image), "image/png")}, headers={"Accept": "image/png"}
    )
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(response.content))) > 0, want.binary)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a few bytes of pixel data: a decoder
    that trusts the header before checking the size would allocate the whole image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


BAD = {
    "empty file": (lambda c: post_image(c, b""), 400, "empty"),
    "not an image": (lambda c: post_image(c, b"hello, this is text"), 400, "not an image"),
    "truncated": (lambda c: post_image(c, png_bytes(scene(1))[:200]), 400, "cannot decode"),
    "empty body": (lambda c: c.post("/v1/segment", content=b"", headers={"content-type": "application/json"}), 400, "empty body"),
    "decompression bomb": (lambda c: post_image(c, _png_header_only(100_000, 100_000)), 413, "pixel limit"),
    "over the pixel cap": (lambda c: post_image(c, png_bytes(np.zeros((200, 200, 3), np.uint8))), 413, "pixel limit"),
    "unknown option": (lambda c: post_image(c, png_bytes(scene(1)), tsk="frog"), 422, "unknown field 'tsk'"),
    "empty task": (lambda c: post_image(c, png_bytes(scene(1)), task="  "), 422, "task must be a non-empty string"),
    "bad iterations": (lambda c: post_image(c, png_bytes(scene(1)), iterations="four"), 422, "iterations must be an integer"),
    "unknown preset": (lambda c: post_image(c, png_bytes(scene(1)), preset="polip"), 422, "did you mean 'polyp'"),
    "bad ablation": (lambda c: post_image(c, png_bytes(scene(1)), ablation="pnm=maybe"), 422, "ablation"),
    "wrong content type": (
        lambda c: c.post("/v1/segment", content=png_bytes(scene(1)), headers={"content-type": "image/png"}),
        415,
        "content type",
    ),
    "no image field": (
        lambda c: c.post("/v1/segment", data={"task": "frog"}, files={"other": ("a", b"x")}),
        422,
        "field 'image'",
    ),
    "bad base64": (lambda c: c.post("/v1/segment", json={"image": "not base64!"}), 400, "base64"),
    "JSON without image": (lambda c: c.post("/v1/segment", json={"task": "frog"}), 422, "image"),
    "body too large": (lambda c: post_image(c, b"\x00" * 200_000), 413, "byte limit"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_its_status_and_a_json_error_then_a_good_request_succeeds(engine, case):
    client = client_for(engine, limits=Limits(max_body_bytes=65_536 if case == "body too large" else 1 << 20, max_pixels=10_000))
    send, status, words = BAD[case]
    response = send(client)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and words in error["message"]
    assert post_image(client, png_bytes(scene(2))).status_code == 200


def test_api_key_is_required_when_set(engine):
    client = client_for(engine, api_key="s3cret")
    data = png_bytes(scene(1))
    assert post_image(client, data).status_code == 401
    wrong = client.post("/v1/segment", files={"image": ("x.png", data)}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "API key" in wrong.json()["error"]["message"]
    assert (
        client.post("/v1/segment", files={"image": ("x.png", data)}, headers={"Authorization": "Bearer s3cret"}).status_code
        == 200
    )
    assert client.post("/v1/segment", files={"image": ("x.png", data)}, headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.get("/healthz").status_code == 200  # probes need no key


def test_a_full_queue_answers_429_with_retry_after_and_readyz_503():
    gate = threading.Event()
    engine = scripted_engine(gate, max_queue=1, max_in_flight=1)
    try:
        client = client_for(engine)
        held = [engine.submit(scene(0))]
        deadline = time.time() + 30
        while engine.core.in_flight < 1 and time.time() < deadline:
            time.sleep(0.01)
        held.append(engine.submit(scene(1)))  # fills the queue
        response = post_image(client, png_bytes(scene(2)))
        assert response.status_code == 429 and response.headers["retry-after"] == "1"
        assert client.get("/readyz").status_code == 503
        gate.set()
        assert all(f.result(timeout=30) for f in held)
        assert client.get("/readyz").status_code == 200
        assert post_image(client, png_bytes(scene(2))).status_code == 200
    finally:
        gate.set()
        engine.close()


def test_a_timed_out_request_gets_504_and_leaves_the_scheduler():
    gate = threading.Event()
    engine = scripted_engine(gate)
    try:
        response = post_image(client_for(engine, timeout_s=0.3), png_bytes(scene(1)))
        assert response.status_code == 504 and "cancelled" in response.json()["error"]["message"]
        deadline = time.time() + 10
        while engine.core.stats.cancelled < 1 and time.time() < deadline:
            gate.set()  # let the tick end, so that the core sees the cancellation
            time.sleep(0.01)
        assert engine.core.stats.cancelled == 1 and engine.core.in_flight == 0
    finally:
        gate.set()
        engine.close()


def test_metrics_count_requests_batches_and_stages(engine):
    client = client_for(engine)
    assert post_image(client, png_bytes(scene(1))).status_code == 200
    assert post_image(client, b"junk").status_code == 400
    text = client.get("/metrics").text
    assert 'int_engine_requests_total{status="200"} 1.0' in text and 'int_engine_requests_total{status="400"} 1.0' in text
    assert "int_engine_request_seconds_count 2.0" in text
    assert 'int_engine_batch_images_count{call="segmenter.segment"} 1.0' in text
    assert 'int_engine_stage_seconds_total{stage="segment"}' in text and "int_engine_queue_depth 0.0" in text


def test_openapi_declares_every_status_the_endpoint_answers(engine):
    schema = client_for(engine).get("/openapi.json").json()
    post = schema["paths"]["/v1/segment"]["post"]
    assert {str(s) for s in (200, 400, 401, 413, 415, 422, 429, 500, 503, 504)} <= set(post["responses"])
    assert set(post["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert {"/healthz", "/readyz", "/metrics"} <= set(schema["paths"])


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_rss_after_500_requests_within_10_percent_of_after_50(engine):
    client = client_for(engine)
    data = [png_bytes(scene(s)) for s in range(10)]
    rss = {}
    for n in range(1, 501):
        assert post_image(client, data[n % 10]).status_code == 200
        if n in (50, 500):
            rss[n] = _rss_mb()
    print(f"RSS after 50 requests {rss[50]:.1f} MB, after 500 {rss[500]:.1f} MB ({rss[500] / rss[50]:.3f}x)")
    assert rss[500] <= rss[50] * 1.10
