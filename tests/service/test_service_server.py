"""The real server (``int-engine serve``, uvicorn on loopback, the tiny zoo): 64 concurrent
requests all answered with the library's masks and batched; SIGTERM drains; schemathesis."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from int_engine.api import IntEngine  # noqa: E402
from int_engine.bench.serve_load import ServerProcess, png_bytes  # noqa: E402
from int_engine.bench.synthetic import make_scene  # noqa: E402
from int_engine.client import Client, ClientResult, ServiceError  # noqa: E402
from int_engine.config import EngineConfig  # noqa: E402
from int_engine.models.cache import ensure_tiny_zoo  # noqa: E402


class Server(ServerProcess):
    """``int-engine serve`` in a subprocess on a free loopback port (bench/serve_load's), ready."""

    def __init__(self, *args: str) -> None:
        super().__init__(list(args))
        try:
            self.wait_ready()
        except RuntimeError:
            self.stop()
            raise

    def stop(self, timeout_s: float = 60.0) -> int:
        code = super().stop(timeout_s)
        self.close()
        return code


@pytest.fixture(scope="module")
def zoo() -> Path:
    return ensure_tiny_zoo()


def images(n: int) -> list[np.ndarray]:
    return [make_scene(s, 48, 64)[0] for s in range(n)]


def post(url: str, data: bytes, timeout: float = 300.0) -> ClientResult | ServiceError:
    """``POST /v1/segment`` once (no retry): the result, or the error answer."""
    with Client(url, timeout=timeout, retries=0) as client:
        try:
            return client.segment(data)
        except ServiceError as err:
            return err


def status(answer: ClientResult | ServiceError) -> int:
    return answer.status if isinstance(answer, ServiceError) else 200


def test_64_concurrent_requests_all_answered_with_the_librarys_masks_in_shared_batches(zoo):
    pics = images(16)
    data = [png_bytes(p) for p in pics]
    server = Server("--iterations", "1", "--max-queue", "48")
    try:
        with ThreadPoolExecutor(64) as pool:  # bounded: 64 requests, one each, then the pool stops
            futures = [pool.submit(post, server.url, data[k % 16]) for k in range(64)]
            done, not_done = wait(futures, timeout=600)
        assert not not_done, f"{len(not_done)} requests never answered"
        responses = [f.result() for f in futures]
        codes = [status(r) for r in responses]
        assert set(codes) <= {200, 429} and codes.count(200) >= 48, codes
        metrics = httpx.get(server.url + "/metrics").text
    finally:
        assert server.stop() == 0
    with IntEngine(EngineConfig(iterations=1), models_dir=zoo) as engine:
        want = [engine.segment(p) for p in pics]
    for k, r in enumerate(responses):
        if isinstance(r, ServiceError):
            assert r.retry_after == 1  # the 429's Retry-After
            continue
        w = want[k % 16]
        assert r.to_rle() == w.to_rle()
        assert np.abs(r.soft - w.soft).max() <= 1 / 255
    line = next(
        l for l in metrics.splitlines() if l.startswith('int_engine_batch_images_bucket{call="segmenter.segment",le="1.0"}')
    )
    count = next(l for l in metrics.splitlines() if l.startswith('int_engine_batch_images_count{call="segmenter.segment"}'))
    single, batches = float(line.split()[-1]), float(count.split()[-1])
    assert batches > single, "no segmenter batch carried more than one image"
    print(
        f"64 requests: {codes.count(200)} x 200, {codes.count(429)} x 429; segmenter batches {batches:.0f}, "
        f"{batches - single:.0f} with more than one image"
    )


def test_sigterm_finishes_requests_in_flight_refuses_new_ones_and_exits_0(zoo):
    data = [png_bytes(p) for p in images(4)]
    server = Server("--iterations", "3", "--grace", "120")
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(post, server.url, d) for d in data]
        deadline = time.time() + 60

        def accepted() -> int:  # requests the engine holds: waiting for admission or in flight
            ready = httpx.get(server.url + "/readyz").json()
            return ready.get("in_flight", 0) + ready.get("queue_depth", 0)

        while time.time() < deadline and accepted() < len(data):  # all four in before the signal
            time.sleep(0.02)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        late = post(server.url, data[0], timeout=30)
        codes = [status(f.result(timeout=300)) for f in futures]
    assert status(late) == 503 and "shutting down" in late.message
    assert codes == [200] * 4
    assert server.proc.wait(120) == 0
    server.close()


@pytest.mark.skipif(
    shutil.which("schemathesis") is None and not Path(sys.executable).with_name("schemathesis").exists(),
    reason="schemathesis is not installed (the [dev] extra installs it)",
)
def test_schemathesis_finds_no_server_error_and_no_undocumented_status(zoo, tmp_path):
    server = Server("--iterations", "1", "--max-pixels", "200000")
    try:
        exe = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
        run = subprocess.run(
            [
                exe,
                "run",
                server.url + "/openapi.json",
                "--max-examples",
                "15",
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance",
                "--request-timeout",
                "120",
                "--generation-deterministic",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
    finally:
        assert server.stop() == 0
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert cases and int(cases.group(1)) > 20 and cases.group(1) == cases.group(2), run.stdout[-1500:]
    print(f"schemathesis: {cases.group(0)}")


def test_a_client_that_disconnects_has_its_image_cancelled(zoo):
    """A client that gives up (here: its own 1 s timeout) closes the connection: the server
    cancels the image, which leaves the scheduler, and the next request is answered."""
    data = png_bytes(images(1)[0])
    server = Server("--iterations", "4")
    try:
        with pytest.raises(httpx.TimeoutException):
            post(server.url, data, timeout=1.0)
        deadline, cancelled = time.time() + 60, 0.0
        while time.time() < deadline:
            metrics = httpx.get(server.url + "/metrics").text
            cancelled = float(next(l for l in metrics.splitlines() if l.startswith("int_engine_requests_cancelled ")).split()[-1])
            flight = float(next(l for l in metrics.splitlines() if l.startswith("int_engine_images_in_flight ")).split()[-1])
            if cancelled >= 1 and flight == 0:
                break
            time.sleep(0.2)
        assert cancelled == 1 and flight == 0
        assert status(post(server.url, data)) == 200
    finally:
        assert server.stop() == 0
