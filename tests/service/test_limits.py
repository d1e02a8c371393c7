"""Limits that hold under abuse (issue 26 item 4): every per-request cost option is bounded
(iterations by --max-iterations, the task's length, the seed), a stalled upload or stalled
headers get 408 and the connection closed within --upload-timeout, oversized headers 431,
/metrics follows the API key with --metrics-auth, and a flood of absurd requests is answered
with documented 4xx while the server stays ready. In-process (TestClient, scripted models)
where that is enough; through a real socket (``int-engine serve``, the tiny zoo) for each limit."""

from __future__ import annotations

import base64
import select
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from service_helpers import scene, scripted_engine  # noqa: E402

from int_engine.bench.serve_load import ServerProcess, png_bytes  # noqa: E402
from int_engine.cli import main as cli_main  # noqa: E402
from int_engine.config import PRESETS, EngineConfig, largest_preset_iterations  # noqa: E402
from int_engine.models.cache import ensure_tiny_zoo  # noqa: E402
from int_engine.service import Limits, RequestError, ServiceSettings, create_app  # noqa: E402
from int_engine.service.schemas import STATUSES  # noqa: E402
from int_engine.service.upload import SEED_MAGNITUDE, check_request_limits  # noqa: E402

KEY = "s3cret"
OVER = "iterations 100000 is over this server's limit of 6 (--max-iterations)"


@pytest.fixture(scope="module")
def engine():
    eng = scripted_engine()
    yield eng
    eng.close()


def client_for(engine, **settings) -> TestClient:
    return TestClient(create_app(engine, ServiceSettings(**settings)), raise_server_exceptions=False)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---- the options' bounds, in-process ----------------------------------------------------------


def test_the_default_limit_is_the_largest_preset_iterations_computed_not_written():
    assert largest_preset_iterations() == max(
        [EngineConfig().iterations] + [p.fields.get("iterations", 0) for p in PRESETS.values()]
    )
    assert largest_preset_iterations() == PRESETS["polyp"].fields["iterations"] == 6
    assert Limits().max_iterations == 6


@pytest.mark.parametrize("how", ["multipart", "json", "multipart stream", "json stream"])
def test_iterations_over_the_limit_get_422_naming_it_on_every_form_of_segment(engine, how):
    client, data = client_for(engine), png_bytes(scene(0))
    url = "/v1/segment" + ("?stream=true" if "stream" in how else "")
    if how.startswith("multipart"):
        r = client.post(url, files={"image": ("x.png", data, "image/png")}, data={"iterations": "100000"})
    else:
        r = client.post(url, json={"image": b64(data), "iterations": 100000})
    assert r.status_code == 422 and r.json()["error"]["message"] == OVER, r.text
    assert engine.core.stats.cancelled == 0 and engine.core.in_flight == 0  # refused before the engine saw it


def test_iterations_at_the_limit_are_served_and_a_lower_limit_holds(engine):
    data = png_bytes(scene(1))
    ok = client_for(engine).post("/v1/segment", json={"image": b64(data), "iterations": 6})
    assert ok.status_code == 200 and len(ok.json()["picks"]) == 6
    low = client_for(engine, limits=Limits(max_iterations=3))
    r = low.post("/v1/segment", json={"image": b64(data), "iterations": 4})
    assert r.status_code == 422
    assert r.json()["error"]["message"] == "iterations 4 is over this server's limit of 3 (--max-iterations)"
    r = low.post("/v1/segment", json={"image": b64(data), "preset": "polyp"})  # polyp runs 6
    assert r.status_code == 422 and "preset 'polyp' runs 6 iterations" in r.json()["error"]["message"]
    assert low.post("/v1/segment", json={"image": b64(data), "preset": "polyp", "iterations": 2}).status_code == 200


@pytest.mark.parametrize(
    "options, status, words",
    [
        ({"seed": 10**30}, 422, "seed must be between"),
        ({"seed": -(10**30)}, 422, "seed must be between"),
        ({"seed": "9" * 5000}, 422, "seed must be an integer"),
        ({"task": "frog " * 1000}, 422, "task of 5,000 characters is over this server's limit of 200"),
        ({"iterations": 0}, 422, "iterations must be >= 1"),
        ({"iterations": -(10**40)}, 422, "iterations must be >= 1"),
    ],
)
def test_absurd_options_get_a_4xx_never_a_500(engine, options, status, words):
    client, data = client_for(engine), png_bytes(scene(2))
    for r in (
        client.post("/v1/segment", json={"image": b64(data), **options}),
        client.post("/v1/segment", files={"image": ("x.png", data, "image/png")}, data={k: str(v) for k, v in options.items()}),
    ):
        assert r.status_code == status and words in r.json()["error"]["message"], r.text
        assert len(r.json()["error"]["message"]) < 300  # a huge value is never echoed whole


def test_seeds_at_the_bound_are_served(engine):
    client, data = client_for(engine), png_bytes(scene(3))
    for seed in (SEED_MAGNITUDE, -SEED_MAGNITUDE, 0):
        assert client.post("/v1/segment", json={"image": b64(data), "seed": seed, "iterations": 1}).status_code == 200


@pytest.mark.parametrize(
    "body",
    [b'{"image": "aGk=", "seed": ' + b"1" * 5000 + b"}", b"[" * 100_000, b'{"image": ' * 50_000],
    ids=["5000-digit number", "100000-deep list", "50000-deep object"],
)
def test_json_that_python_cannot_parse_is_a_400_not_a_500(engine, body):
    r = client_for(engine).post("/v1/segment", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"], r.text


def test_a_declared_length_too_long_to_be_a_number_is_413(engine):
    client = client_for(engine)
    r = client.post("/v1/segment", content=b"{}", headers={"content-type": "application/json", "content-length": "9" * 5000})
    assert r.status_code == 413 and r.headers["connection"] == "close", r.text


def test_check_request_limits_is_the_one_check_other_routes_call():
    limits = Limits(max_iterations=3, max_task_chars=10)
    check_request_limits({"iterations": 3, "task": "frog", "seed": 7, "preset": "cod", "ablation": {"pnm": False}}, limits)
    for options in ({"iterations": 4}, {"preset": "cod"}, {"task": "x" * 11}, {"seed": SEED_MAGNITUDE + 1}):
        with pytest.raises(RequestError) as err:
            check_request_limits(options, limits)
        assert err.value.status == 422
    check_request_limits({"preset": "no such preset"}, limits)  # request_config names it (422)


def test_the_openapi_bounds_follow_the_servers_limits(engine):
    schema = client_for(engine, limits=Limits(max_iterations=3, max_task_chars=50)).get("/openapi.json").json()
    post = schema["paths"]["/v1/segment"]["post"]
    for media in ("multipart/form-data", "application/json"):
        props = post["requestBody"]["content"][media]["schema"]["properties"]
        assert props["iterations"]["maximum"] == 3 and props["task"]["maxLength"] == 50
        assert props["seed"] == {"type": "integer", "minimum": -SEED_MAGNITUDE, "maximum": SEED_MAGNITUDE}
    assert "408" in post["responses"] and 408 in STATUSES
    assert "401" in schema["paths"]["/metrics"]["get"]["responses"]


def test_metrics_follow_the_api_key_only_with_metrics_auth(engine):
    assert client_for(engine, api_key=KEY).get("/metrics").status_code == 200  # default: open
    guarded = client_for(engine, api_key=KEY, metrics_auth=True)
    assert guarded.get("/metrics").status_code == 401
    assert guarded.get("/metrics", headers={"X-API-Key": "wrong"}).status_code == 401
    assert guarded.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert guarded.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--metrics-auth"], "--metrics-auth needs --api-key-file"),
        (["--max-iterations", "0"], "--max-iterations must be >= 1"),
        (["--upload-timeout", "0"], "--upload-timeout must be > 0"),
        (["--max-task-chars", "0"], "--max-task-chars must be >= 1"),
    ],
)
def test_serve_refuses_bad_limit_flags_before_loading_anything(flags, words, capsys):
    assert cli_main(["serve", "--port", "1", *flags]) != 0
    assert words in capsys.readouterr().err


# ---- through a real socket -------------------------------------------------------------------

UPLOAD_TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ensure_tiny_zoo()
    key_file = tmp_path_factory.mktemp("key") / "key"
    key_file.write_text(KEY + "\n")
    proc = ServerProcess(
        [
            "--iterations", "1", "--max-queue", "2", "--upload-timeout", str(UPLOAD_TIMEOUT_S),
            "--api-key-file", str(key_file), "--metrics-auth",
        ]
    )  # fmt: skip
    try:
        proc.wait_ready()
        yield proc
    finally:
        assert proc.stop() == 0, proc.output()
        proc.close()


AUTH = {"X-API-Key": KEY}


def trickle(
    port: int, head: bytes, drip: bytes = b"x", every_s: float = 0.5, budget_s: float = 30.0
) -> tuple[bytes, float, bool]:
    """Send ``head``, then ``drip`` every ``every_s`` seconds (nothing when empty) while reading:
    (what the server said, seconds until it closed or the budget ran out, whether it closed)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head)
        t0, said = time.monotonic(), b""
        while time.monotonic() - t0 < budget_s:
            if select.select([s], [], [], every_s)[0]:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    return said, time.monotonic() - t0, True
                if not chunk:
                    return said, time.monotonic() - t0, True
                said += chunk
            elif drip:
                try:
                    s.sendall(drip)
                except OSError:  # closed under us
                    return said, time.monotonic() - t0, True
        return said, time.monotonic() - t0, False


def good(url: str, timeout: float = 120.0) -> httpx.Response:
    data = png_bytes(scene(4))
    return httpx.post(url + "/v1/segment", files={"image": ("x.png", data, "image/png")}, headers=AUTH, timeout=timeout)


def test_a_stalled_upload_gets_408_and_the_connection_closed_within_the_timeout(server):
    head = (
        f"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {KEY}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 2000000\r\n\r\n"
    ).encode()
    said, seconds, closed = trickle(server.port, head)  # 1 byte every 0.5 s of a declared 2 MB
    assert said.startswith(b"HTTP/1.1 408"), said[:300]
    assert b"connection: close" in said.lower() and b"--upload-timeout" in said
    assert closed and seconds < UPLOAD_TIMEOUT_S + 4, seconds
    assert good(server.url).status_code == 200  # and the server goes on


@pytest.mark.parametrize("drip", [b"x", b""], ids=["headers at 2 bytes a second", "nothing after connecting"])
def test_stalled_headers_get_408_and_the_connection_closed_within_the_timeout(server, drip):
    head = b"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " if drip else b""
    said, seconds, closed = trickle(server.port, head, drip)
    assert said.startswith(b"HTTP/1.1 408") and b"connection: close" in said.lower(), said[:300]
    assert closed and seconds < UPLOAD_TIMEOUT_S + 4, seconds
    assert good(server.url).status_code == 200


def test_oversized_headers_get_431_and_the_connection_closed(server):
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (256 * 1024)
    said, seconds, closed = trickle(server.port, head, b"")
    assert said.startswith(b"HTTP/1.1 431") and closed and seconds < UPLOAD_TIMEOUT_S, (said[:200], seconds)
    # a keep-alive client's next request gets its own deadline: two requests on one connection
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert [client.get("/healthz").status_code for _ in range(2)] == [200, 200]


def test_iterations_over_the_limit_get_422_through_the_socket(server):
    data = png_bytes(scene(5))
    for url in ("/v1/segment", "/v1/segment?stream=true"):
        r = httpx.post(
            server.url + url, files={"image": ("x.png", data, "image/png")}, data={"iterations": "100000"}, headers=AUTH
        )
        assert r.status_code == 422 and r.json()["error"]["message"] == OVER, r.text
        r = httpx.post(server.url + url, json={"image": b64(data), "iterations": 100000}, headers=AUTH)
        assert r.status_code == 422 and r.json()["error"]["message"] == OVER, r.text


def test_metrics_ask_for_the_key_through_the_socket(server):
    assert httpx.get(server.url + "/metrics").status_code == 401
    r = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and "int_engine_requests_total" in r.text
    assert httpx.get(server.url + "/readyz").status_code == 200  # health stays open


def _raw(port: int, request: bytes) -> int:
    """One request on a fresh socket, as sent; the answer's status (0 when none came)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(request)
        said = b""
        while b"\r\n" not in said:
            chunk = s.recv(4096)
            if not chunk:
                break
            said += chunk
    return int(said.split()[1]) if said.startswith(b"HTTP/1.1 ") else 0


FLOOD_ANSWERS = {0: 422, 1: 422, 2: 400, 3: 413, 4: 422, 5: 422, 6: 401, 7: 400, 8: 415}  # each documented


def _absurd(url: str, port: int, k: int) -> int:
    """The ``k``-th of the flood's requests, each bad or absurd in its own way; its status."""
    data = png_bytes(scene(6))
    files = {"image": ("x.png", data, "image/png")}
    kind = k % 10
    if kind == 0:
        return httpx.post(url + "/v1/segment", files=files, data={"iterations": "100000"}, headers=AUTH, timeout=120).status_code
    if kind == 1:
        return httpx.post(
            url + "/v1/segment?stream=true", json={"image": b64(data), "iterations": 100000}, headers=AUTH, timeout=120
        ).status_code
    if kind == 2:  # a truncated PNG
        return httpx.post(
            url + "/v1/segment", files={"image": ("x.png", data[: len(data) // 2], "image/png")}, headers=AUTH, timeout=120
        ).status_code
    if kind == 3:  # a huge declared length, a few bytes sent
        head = f"POST /v1/segment HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: application/json\r\nContent-Length: {10**12}\r\n\r\n{{"
        return _raw(port, head.encode())
    if kind == 4:
        return httpx.post(url + "/v1/segment", json={"image": b64(data), "seed": 10**30}, headers=AUTH, timeout=120).status_code
    if kind == 5:
        return httpx.post(
            url + "/v1/segment", json={"image": b64(data), "task": "x" * 100_000}, headers=AUTH, timeout=120
        ).status_code
    if kind == 6:  # no key
        return httpx.post(url + "/v1/segment", files=files, timeout=120).status_code
    if kind == 7:
        return httpx.post(
            url + "/v1/segment", content=b"[" * 100_000, headers={**AUTH, "content-type": "application/json"}, timeout=120
        ).status_code
    if kind == 8:
        return httpx.post(
            url + "/v1/segment", content=data, headers={**AUTH, "content-type": "image/png"}, timeout=120
        ).status_code
    return httpx.post(
        url + "/v1/segment", files=files, data={"iterations": "1", "preset": "skin"}, headers=AUTH, timeout=120
    ).status_code


def test_a_flood_of_absurd_requests_gets_documented_4xx_and_the_server_stays_ready(server):
    with ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(lambda k: _absurd(server.url, server.port, k), range(50)))
    good_ones = codes[9::10]  # the tenth kind is a good request: served, or 429 when the queue is full
    assert set(good_ones) <= {200, 429}, codes
    assert all(c == FLOOD_ANSWERS[k % 10] for k, c in enumerate(codes) if k % 10 != 9), codes
    assert httpx.get(server.url + "/readyz").status_code == 200
    assert good(server.url).status_code == 200
    assert "Traceback" not in server.output(tail=None)
    print(f"flood of 50: {sorted(codes)}")
