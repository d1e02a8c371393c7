"""``POST /v1/segment?stream=true`` in-process (FastAPI's TestClient, scripted models): one
``iteration`` event per iteration, then the plain request's answer as the ``result`` event;
errors before the stream as plain JSON; the page at ``/`` and its RLE decoder (run in Node)."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from pycocotools import mask as coco_mask

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from service_helpers import scene, scripted_engine  # noqa: E402

from int_engine.bench.serve_load import png_bytes  # noqa: E402
from int_engine.service import ServiceSettings, create_app  # noqa: E402
from int_engine.service.app import PAGE  # noqa: E402


def parse_events(text: str) -> list[tuple[str, dict]]:
    """(event, data) for each Server-Sent Event; comment lines (heartbeats) skipped."""
    out = []
    for block in text.split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith(":")]
        fields = dict(line.split(": ", 1) for line in lines if ": " in line)
        if "event" in fields:
            out.append((fields["event"], json.loads(fields["data"])))
    return out


def decode(rle: dict) -> np.ndarray:
    return coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


@pytest.fixture
def engine():
    eng = scripted_engine()
    yield eng
    eng.close()


def test_one_event_per_iteration_then_the_plain_answer(engine):
    client = TestClient(create_app(engine, ServiceSettings()))
    image, files = scene(4), {"image": ("x.png", png_bytes(scene(4)), "image/png")}
    want = engine.segment(image, iterations=3)
    plain = client.post("/v1/segment", files=files, data={"iterations": "3"}).json()
    for how in ({"params": {"stream": "true"}}, {"headers": {"Accept": "text/event-stream"}}):
        response = client.post("/v1/segment", files=files, data={"iterations": "3"}, **how)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = parse_events(response.text)
        assert [e for e, _ in events] == ["iteration"] * 3 + ["result"]
        for k, (_, data) in enumerate(events[:3]):
            assert data["iteration"] == k and data["pick"] == want.trace.iterations[k].pick
            assert np.array_equal(decode(data["binary_rle"]), want.iteration_segmentations[k])  # same size here
            assert (data["width"], data["height"]) == (image.shape[1], image.shape[0])
        final = events[-1][1]
        assert final["binary_rle"] == plain["binary_rle"] and final["picks"] == plain["picks"]
        assert np.array_equal(decode(final["binary_rle"]), want.binary)


def test_errors_before_the_stream_are_plain_json(engine):
    client = TestClient(create_app(engine, ServiceSettings()))
    files = {"image": ("x.png", png_bytes(scene(5)), "image/png")}
    bad = client.post("/v1/segment?stream=true", files=files, data={"iterations": "0"})
    assert bad.status_code == 422 and "iterations" in bad.json()["error"]["message"]
    broken = client.post("/v1/segment?stream=true", files={"image": ("x.png", b"not an image", "image/png")})
    assert broken.status_code == 400 and broken.headers["content-type"] == "application/json"


def test_an_image_that_fails_ends_its_stream_with_an_error_event():
    engine = scripted_engine()

    class Broken:
        def segment(self, requests):
            raise RuntimeError("SAM ran out of memory")

    engine.models.segmenter = Broken()
    try:
        client = TestClient(create_app(engine, ServiceSettings()))
        response = client.post("/v1/segment?stream=true", files={"image": ("x.png", png_bytes(scene(6)), "image/png")})
        events = parse_events(response.text)
        assert events[-1][0] == "error" and events[-1][1]["error"]["status"] == 500
        assert "SAM ran out of memory" in events[-1][1]["error"]["message"]
    finally:
        engine.close()


def test_the_openapi_document_describes_the_stream(engine):
    schema = TestClient(create_app(engine, ServiceSettings())).get("/openapi.json").json()
    post = schema["paths"]["/v1/segment"]["post"]
    assert "text/event-stream" in post["responses"]["200"]["content"]
    assert [p["name"] for p in post["parameters"]] == ["stream"]


def test_the_page_streams_the_iterations(engine):
    response = TestClient(create_app(engine, ServiceSettings())).get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert response.text == PAGE and '"/v1/segment?stream=true"' in PAGE and "text/event-stream" in PAGE


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed: the page's decoder cannot run")
def test_the_pages_rle_decoder_gives_pycocotools_masks():
    script = PAGE.split("<script>", 1)[1].split("// Server-Sent Events", 1)[0].replace('"use strict";', "")
    script = script.replace("const $ = (id) => document.getElementById(id);", "")
    rng = np.random.default_rng(0)
    cases = []
    for h, w in ((5, 7), (33, 20), (64, 80)):
        mask = (rng.random((h, w)) > rng.uniform(0.2, 0.9)).astype(np.uint8)
        mask[: h // 2, : w // 3] = 1  # long runs: multi-digit counts
        rle = coco_mask.encode(np.asfortranarray(mask))
        cases.append(({"size": [h, w], "counts": rle["counts"].decode()}, mask))
    driver = script + "\nconst cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));\n"
    driver += "console.log(JSON.stringify(cases.map((c) => Array.from(maskPixels(c)))));"
    out = subprocess.run(
        ["node", "-e", driver], input=json.dumps([c for c, _ in cases]), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    for got, (_, mask) in zip(json.loads(out.stdout), cases):
        assert np.array_equal(np.array(got, np.uint8).reshape(mask.shape), mask)
