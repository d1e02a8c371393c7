"""The Open Inference Protocol v2 routes in-process (FastAPI's TestClient, scripted models): every
answer checked against JSON Schemas written here from the protocol's published spec
(kserve/open-inference-protocol: specification/protocol/inference_rest.md and
open_inference_rest.yaml), the outputs equal to the library's and to /v1/segment's, each bad
input's status in the protocol's error shape (and the next good request answered), 401 / 429 /
503, and the OpenAPI document."""

from __future__ import annotations

import base64
import json
import threading
import time

import numpy as np
import pytest
from pycocotools import mask as coco_mask

pytest.importorskip("fastapi")
jsonschema = pytest.importorskip("jsonschema")
from fastapi.testclient import TestClient  # noqa: E402
from service_helpers import scene, scripted_engine  # noqa: E402

from int_engine.bench.serve_load import png_bytes  # noqa: E402
from int_engine.io import mask_to_uint8  # noqa: E402
from int_engine.service import Limits, ServiceSettings, create_app  # noqa: E402

INFER = "/v2/models/int-engine/infer"

# The spec's objects, as JSON Schema: "$string", "$number", "$bool", "$object" are JSON's types,
# "#optional" fields are not required; tensor data is a flat or nested array of numbers, strings
# or booleans; a parameter's value is a string, a number or a boolean; errors are {"error": $string}.
SPEC = {
    "$defs": {
        "parameters": {
            "type": "object",
            "additionalProperties": {"type": ["string", "number", "boolean"]},
        },
        "tensor_data": {
            "type": "array",
            "items": {"anyOf": [{"$ref": "#/$defs/tensor_data"}, {"type": ["number", "string", "boolean"]}]},
        },
        "metadata_tensor": {
            "type": "object",
            "required": ["name", "datatype", "shape"],
            "properties": {
                "name": {"type": "string"},
                "datatype": {"$ref": "#/$defs/datatype"},
                "shape": {"type": "array", "items": {"type": "integer"}},
            },
        },
        "datatype": {
            "enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"]
            + ["FP16", "FP32", "FP64", "BYTES"]
        },
        "response_output": {
            "type": "object",
            "required": ["name", "shape", "datatype", "data"],
            "properties": {
                "name": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "datatype": {"$ref": "#/$defs/datatype"},
                "parameters": {"$ref": "#/$defs/parameters"},
                "data": {"$ref": "#/$defs/tensor_data"},
            },
        },
    },
    "server_metadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "model_metadata": {
        "type": "object",
        "required": ["name", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": {"$ref": "#/$defs/metadata_tensor"}},
            "outputs": {"type": "array", "items": {"$ref": "#/$defs/metadata_tensor"}},
        },
    },
    "inference_response": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {"$ref": "#/$defs/parameters"},
            "outputs": {"type": "array", "items": {"$ref": "#/$defs/response_output"}},
        },
    },
    "error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string", "minLength": 1}}},
    "model_ready": {"type": "object", "required": ["name", "ready"], "properties": {"ready": {"type": "boolean"}}},
}


def check(body: dict, shape: str) -> dict:
    """``body``, validated against the spec's ``shape``."""
    jsonschema.Draft202012Validator({**SPEC[shape], "$defs": SPEC["$defs"]}).validate(body)
    return body


@pytest.fixture
def engine():
    eng = scripted_engine()
    yield eng
    eng.close()


def client_for(engine, **settings) -> TestClient:
    return TestClient(create_app(engine, ServiceSettings(**settings)), raise_server_exceptions=False)


def encoded(data: bytes, **request) -> dict:
    return {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(data).decode()]}],
        **request,
    }


def pixels(image: np.ndarray, nested: bool = False, **request) -> dict:
    data = image.tolist() if nested else image.ravel().tolist()
    return {"inputs": [{"name": "image", "datatype": "UINT8", "shape": list(image.shape), "data": data}], **request}


GOOD = encoded(png_bytes(scene(1)))  # a good request, to make bad by one field


def outputs(body: dict) -> dict[str, dict]:
    return {o["name"]: o for o in check(body, "inference_response")["outputs"]}


def test_server_and_model_metadata_and_health_follow_the_spec(engine):
    client = client_for(engine)
    meta = check(client.get("/v2").json(), "server_metadata")
    assert meta["name"] == "int-engine" and meta["extensions"] == []
    assert client.get("/v2/health/live").status_code == 200 and client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    model = check(client.get("/v2/models/int-engine").json(), "model_metadata")
    assert [(t["name"], t["datatype"]) for t in model["inputs"]] == [("image", "BYTES")]
    assert {t["name"]: t["datatype"] for t in model["outputs"]} == {
        "binary_rle": "BYTES",
        "soft_mask": "UINT8",
        "picks": "BYTES",
        "final_iteration": "INT32",
    }
    ready = client.get("/v2/models/int-engine/ready")
    assert ready.status_code == 200 and check(ready.json(), "model_ready") == {"name": "int-engine", "ready": True}
    for path in ("/v2/models/other", "/v2/models/other/ready"):
        response = client.get(path)
        assert response.status_code == 404 and "int-engine" in check(response.json(), "error")["error"]


def test_infer_gives_the_librarys_masks_as_tensors_and_echoes_the_id(engine):
    client = client_for(engine)
    image = scene(3)
    want = engine.segment(image, iterations=2)
    response = client.post(INFER, json=encoded(png_bytes(image), id="req-7", parameters={"iterations": 2}))
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["model_name"] == "int-engine" and body["id"] == "req-7" and "model_version" not in body
    out = outputs(body)
    assert [o["name"] for o in body["outputs"]] == ["binary_rle", "soft_mask", "picks", "final_iteration"]
    rle = json.loads(out["binary_rle"]["data"][0])
    assert out["binary_rle"]["shape"] == [1] and rle == want.to_rle()
    np.testing.assert_array_equal(
        coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool), want.binary
    )
    soft = out["soft_mask"]
    assert soft["shape"] == list(want.soft.shape)
    np.testing.assert_array_equal(np.asarray(soft["data"], dtype=np.uint8).reshape(soft["shape"]), mask_to_uint8(want.soft))
    assert out["picks"] == {"name": "picks", "datatype": "BYTES", "shape": [2], "data": [it.pick for it in want.trace.iterations]}
    assert out["final_iteration"]["data"] == [want.trace.final_iteration]
    assert body["parameters"]["task"] == "frog" and body["parameters"]["seconds_segment"] >= 0


def test_a_uint8_tensor_flat_or_nested_and_v1_give_the_same_masks(engine):
    client = client_for(engine)
    image = scene(5)
    by_file = outputs(client.post(INFER, json=encoded(png_bytes(image))).json())
    for body in (pixels(image), pixels(image, nested=True), pixels(image[None], parameters={"seed": 0})):
        assert outputs(client.post(INFER, json=body).json()) == by_file
    v1 = client.post("/v1/segment", files={"image": ("x.png", png_bytes(image), "image/png")}).json()
    assert json.loads(by_file["binary_rle"]["data"][0]) == v1["binary_rle"]
    assert by_file["picks"]["data"] == v1["picks"] and by_file["final_iteration"]["data"] == [v1["final_iteration"]]


def test_parameters_are_the_request_options_and_outputs_can_be_chosen(engine):
    client = client_for(engine)
    data = png_bytes(scene(4))
    body = encoded(data, parameters={"iterations": 3, "task": "frog", "ablation": "pnm=off"}, outputs=[{"name": "picks"}])
    out = client.post(INFER, json=body).json()
    assert [o["name"] for o in check(out, "inference_response")["outputs"]] == ["picks"]
    assert out["outputs"][0]["shape"] == [3]


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b"", 400, "empty body"),
        ({"inputs": []}, 400, "one tensor"),
        ({"inputs": [{"name": "image"}] * 2}, 400, "one tensor"),
        ({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 1, 3], "data": [0, 0, 0]}]}, 400, "unknown input"),
        ({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [0.5]}]}, 400, "datatype"),
        ({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [2, 2], "data": [0] * 4}]}, 400, "[H, W, 3]"),
        ({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [2, 2, 3], "data": [0] * 5}]}, 400, "needs 12"),
        ({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 1, 3], "data": [0, 256, 0]}]}, 400, "0..255"),
        ({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 1, 3], "data": [0, 0.5, 0]}]}, 400, "integers"),
        ({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 1, 3], "data": [[0], 1, 2]}]}, 400, "row-major"),
        ({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, 1, 3], "data": []}]}, 400, "non-negative"),
        ({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [5000, 5000, 3], "data": []}]}, 413, "pixel"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}, 400, "base64"),
        ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["aa==", "aa=="]}]}, 400, "one element"),
        (encoded(b"not an image"), 400, "not an image"),
        (encoded(b""), 400, "empty image"),
        ({**GOOD, "id": 7}, 400, '"id"'),
        ({**GOOD, "outputs": [{"name": "mask"}]}, 400, "unknown output"),
        ({**GOOD, "parameters": {"colour": "red"}}, 422, "unknown parameter"),
        ({**GOOD, "parameters": {"iterations": "many"}}, 422, "iterations"),
        ({**GOOD, "parameters": {"ablation": "pnm=maybe"}}, 422, "ablation"),
        ({**GOOD, "parameters": {"iterations": 7}}, 422, "--max-iterations"),  # /v1's limits hold
        ({**GOOD, "parameters": {"seed": 10**30}}, 422, "seed"),
        ({**GOOD, "parameters": {"task": "frog" * 100}}, 422, "task"),
        (b'{"inputs": [' + b"1" * 5000 + b"]}", 400, "not valid JSON"),
        (b"[" * 100_000, 400, "not valid JSON"),
    ],
)
def test_each_bad_request_gets_its_status_in_the_protocols_error_shape(engine, body, status, words):
    client = client_for(engine, limits=Limits(max_pixels=1_000_000))
    response = client.post(INFER, json=body) if isinstance(body, dict) else client.post(INFER, content=body)
    assert response.status_code == status, response.text
    assert words in check(response.json(), "error")["error"]
    assert client.post(INFER, json=GOOD).status_code == 200  # the next one is answered


def test_a_bad_option_value_and_an_unknown_model_and_too_large_a_body(engine):
    client = client_for(engine, limits=Limits(max_body_bytes=20_000))
    data = png_bytes(scene(1))
    response = client.post(INFER, json=encoded(data, parameters={"iterations": 0}))
    assert response.status_code == 422 and "iterations" in check(response.json(), "error")["error"]
    response = client.post("/v2/models/sam/infer", json=encoded(data))
    assert response.status_code == 404 and "int-engine" in check(response.json(), "error")["error"]
    response = client.post(INFER, json=pixels(scene(1)))
    assert response.status_code == 413 and "20,000-byte" in check(response.json(), "error")["error"]


def test_an_api_key_guards_infer_not_health_or_metadata(engine):
    client = client_for(engine, api_key="s3cret")
    body = encoded(png_bytes(scene(1)))
    for headers in ({}, {"Authorization": "Bearer nope"}):
        response = client.post(INFER, json=body, headers=headers)
        assert response.status_code == 401 and "API key" in check(response.json(), "error")["error"]
    assert client.post(INFER, json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.post(INFER, json=body, headers={"X-API-Key": "s3cret"}).status_code == 200
    assert all(client.get(p).status_code == 200 for p in ("/v2", "/v2/health/ready", "/v2/models/int-engine"))


def test_a_full_queue_answers_429_with_retry_after_and_not_ready():
    gate = threading.Event()
    engine = scripted_engine(gate, max_queue=1, max_in_flight=1)
    try:
        client = client_for(engine, retry_after_s=2)
        held = [engine.submit(scene(0))]
        deadline = time.time() + 30
        while engine.core.in_flight < 1 and time.time() < deadline:
            time.sleep(0.01)
        held.append(engine.submit(scene(1)))  # fills the queue
        response = client.post(INFER, json=encoded(png_bytes(scene(2))))
        assert response.status_code == 429 and response.headers["retry-after"] == "2"
        assert "queue" in check(response.json(), "error")["error"]
        for path in ("/v2/health/ready", "/v2/models/int-engine/ready"):
            assert client.get(path).status_code == 503 and "queue full" in client.get(path).json()["error"]
        gate.set()
        assert all(f.result(timeout=30) for f in held)
        assert client.get("/v2/health/ready").status_code == 200
        assert client.post(INFER, json=encoded(png_bytes(scene(2)))).status_code == 200
    finally:
        gate.set()
        engine.close()


def test_draining_answers_503_and_infer_counts_in_the_metrics(engine):
    app = create_app(engine, ServiceSettings())
    client = TestClient(app)
    assert client.post(INFER, json=encoded(png_bytes(scene(1)))).status_code == 200
    app.state.draining = True
    response = client.post(INFER, json=encoded(png_bytes(scene(1))))
    assert response.status_code == 503 and "shutting down" in check(response.json(), "error")["error"]
    assert client.get("/v2/health/ready").status_code == 503 and client.get("/v2/health/live").status_code == 200
    text = client.get("/metrics").text
    assert 'int_engine_requests_total{status="200"} 1.0' in text and 'int_engine_requests_total{status="503"} 1.0' in text
    assert 'int_engine_stage_seconds_total{stage="segment"}' in text


def test_a_timed_out_inference_gets_504_and_leaves_the_scheduler():
    gate = threading.Event()
    engine = scripted_engine(gate)
    try:
        response = client_for(engine, timeout_s=0.3).post(INFER, json=encoded(png_bytes(scene(1))))
        assert response.status_code == 504 and "cancelled" in check(response.json(), "error")["error"]
        deadline = time.time() + 10
        while engine.core.stats.cancelled < 1 and time.time() < deadline:
            gate.set()
            time.sleep(0.01)
        assert engine.core.stats.cancelled == 1 and engine.core.in_flight == 0
    finally:
        gate.set()
        engine.close()


def test_the_openapi_document_describes_every_v2_route_and_status(engine):
    schema = client_for(engine).get("/openapi.json").json()
    paths = schema["paths"]
    assert {
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{model_name}",
        "/v2/models/{model_name}/ready",
        "/v2/models/{model_name}/infer",
    } <= set(paths)
    infer = paths["/v2/models/{model_name}/infer"]["post"]
    assert {str(s) for s in (200, 400, 401, 404, 413, 422, 429, 500, 503, 504)} <= set(infer["responses"])
    assert set(infer["requestBody"]["content"]) == {"application/json"}
    assert "404" in paths["/v2/models/{model_name}"]["get"]["responses"]
    assert "503" in paths["/v2/health/ready"]["get"]["responses"]
