"""The typed client (``int_engine.client``) against the service on a real loopback socket
(uvicorn in a thread of this process, scripted models): its results equal the library's over /v1
and /v2, sync and async; the streamed iterations; 429's Retry-After honoured with bounded
retries (a gated, queue-full engine); the API key; errors as ``ServiceError``; and importing it
pulls in no server library and no model."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
from service_helpers import scene, scripted_engine  # noqa: E402

from int_engine.bench.serve_load import free_port, png_bytes  # noqa: E402
from int_engine.client import AsyncClient, Client, ClientIteration, ClientResult, ServiceError, retry_after  # noqa: E402
from int_engine.service import ServiceSettings, create_app  # noqa: E402


@contextlib.contextmanager
def serving(engine, **settings):
    """``create_app(engine)`` under uvicorn on a free loopback port, in a thread: (url, app)."""
    app = create_app(engine, ServiceSettings(**settings))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and thread.is_alive() and time.time() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{server.config.port}", app
    finally:
        server.should_exit = True
        thread.join(30)


def answered(app, status: int) -> float:
    """How many requests the app answered with ``status`` (its Prometheus counter)."""
    value = app.state.metrics.registry.get_sample_value("int_engine_requests_total", {"status": str(status)})
    return value or 0.0


def same_as_library(got: ClientResult, want) -> None:
    np.testing.assert_array_equal(got.binary, want.binary)
    assert got.binary.dtype == bool and got.soft.dtype == np.float32 and got.soft.shape == want.soft.shape
    assert np.abs(got.soft - want.soft).max() <= 1 / 255
    assert got.picks == [it.pick for it in want.trace.iterations] and got.final_iteration == want.trace.final_iteration
    assert got.to_rle() == want.to_rle() and got.task == want.trace.task
    assert {"segment", "detect"} <= set(got.seconds)


@pytest.fixture(scope="module")
def server():
    engine = scripted_engine(iterations=2)
    with serving(engine) as (url, app):
        yield url, engine
    engine.close()


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_segment_equals_the_library_from_a_path_bytes_or_an_array(server, protocol, tmp_path):
    url, engine = server
    image = scene(3)
    path = tmp_path / "scene.png"
    path.write_bytes(png_bytes(image))
    want = engine.segment(image, iterations=3, seed=1)
    with Client(url, protocol=protocol) as client:
        for given in (image, png_bytes(image), path, str(path)):
            same_as_library(client.segment(given, iterations=3, seed=1), want)


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_the_async_client_gives_the_same(server, protocol):
    url, engine = server
    images = [scene(s) for s in range(3)]
    want = [engine.segment(im) for im in images]

    async def run() -> list[ClientResult]:
        async with AsyncClient(url, protocol=protocol) as client:
            return await asyncio.gather(*(client.segment(im) for im in images))

    for got, w in zip(asyncio.run(run()), want):
        same_as_library(got, w)


def test_iterations_yield_each_iteration_then_the_result_sync_and_async(server):
    url, engine = server
    image = scene(4)
    updates = []
    want = engine.submit(image, iterations=3, on_iteration=updates.append).result(timeout=60)

    def check(items: list) -> None:
        assert [type(i) for i in items] == [ClientIteration] * 3 + [ClientResult]
        for item, update in zip(items, updates):
            assert (item.iteration, item.pick) == (update.iteration, update.pick)
            np.testing.assert_array_equal(item.binary, update.binary)
            assert item.boxes.dtype == np.float32 and item.boxes.shape == update.boxes().shape
        same_as_library(items[-1], want)

    with Client(url) as client:
        check(list(client.iterations(image, iterations=3)))

    async def run() -> list:
        async with AsyncClient(url) as client:
            return [item async for item in client.iterations(image, iterations=3)]

    check(asyncio.run(run()))


def test_leaving_the_iterations_early_cancels_the_image():
    engine = scripted_engine(delay=0.1)
    try:
        with serving(engine) as (url, _), Client(url) as client:
            with contextlib.closing(client.iterations(scene(1), iterations=6)) as items:
                assert isinstance(next(items), ClientIteration)
            deadline = time.time() + 30
            while (engine.core.stats.cancelled < 1 or engine.core.in_flight) and time.time() < deadline:
                time.sleep(0.05)
            assert engine.core.stats.cancelled == 1 and engine.core.in_flight == 0
            assert client.segment(scene(1)).picks  # the server goes on
    finally:
        engine.close()


@contextlib.contextmanager
def queue_full():
    """A server whose one image slot and one queue place are taken (the segmenter held at a
    gate): (url, app, gate); the gate opens on leaving."""
    gate = threading.Event()
    engine = scripted_engine(gate, max_queue=1, max_in_flight=1)
    try:
        with serving(engine, retry_after_s=1) as (url, app):
            held = [engine.submit(scene(0))]
            deadline = time.time() + 30
            while engine.core.in_flight < 1 and time.time() < deadline:
                time.sleep(0.01)
            held.append(engine.submit(scene(1)))
            yield url, app, gate
            gate.set()
            assert all(f.result(timeout=30) for f in held)
    finally:
        gate.set()
        engine.close()


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_a_429_is_retried_after_its_retry_after_until_there_is_room(protocol):
    with queue_full() as (url, app, gate), Client(url, retries=5, protocol=protocol) as client:
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(client.segment, scene(2))
            deadline = time.time() + 30
            while answered(app, 429) < 1 and time.time() < deadline:
                time.sleep(0.02)
            assert answered(app, 429) >= 1 and not future.done()  # refused once, waiting to retry
            gate.set()
            result = future.result(timeout=60)
        assert result.picks and answered(app, 200) == 1


def test_retries_are_bounded_then_the_429_is_raised_sync_and_async():
    with queue_full() as (url, app, _):
        t0 = time.monotonic()
        with Client(url, retries=2) as client, pytest.raises(ServiceError) as err:
            client.segment(scene(2))
        assert err.value.status == 429 and err.value.retry_after == 1 and "queue" in err.value.message
        assert answered(app, 429) == 3 and time.monotonic() - t0 >= 2  # 1 try + 2 retries, 1 s apart

        async def run() -> None:
            async with AsyncClient(url, retries=1) as client:
                await client.segment(scene(2))

        with pytest.raises(ServiceError) as err:
            asyncio.run(run())
        assert err.value.status == 429 and answered(app, 429) == 5


def test_the_api_key_is_sent_as_a_bearer_token():
    engine = scripted_engine()
    try:
        with serving(engine, api_key="s3cret") as (url, _):
            for protocol in ("v1", "v2"):
                with Client(url, api_key="s3cret", protocol=protocol) as client:
                    assert client.segment(scene(1)).picks
                    assert [type(i) for i in client.iterations(scene(1))][-1] is ClientResult
                with Client(url, protocol=protocol) as client, pytest.raises(ServiceError) as err:
                    client.segment(scene(1))
                assert err.value.status == 401 and "API key" in err.value.message
    finally:
        engine.close()


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_an_error_answer_raises_service_error_with_the_servers_message(server, protocol):
    url, _ = server
    with Client(url, protocol=protocol) as client:
        with pytest.raises(ServiceError) as err:
            client.segment(b"not an image")
        assert err.value.status == 400 and "not an image" in err.value.message
        with pytest.raises(ServiceError) as err:
            client.segment(scene(1), iterations=0)
        assert err.value.status == 422 and "iterations" in str(err.value)
        with pytest.raises(ServiceError) as err:
            list(client.iterations(scene(1), colour="red"))
        assert err.value.status == 422
        with pytest.raises(TypeError):
            client.segment(np.zeros((4, 4), dtype=np.float32))


def test_retry_after_reads_seconds_or_a_date_and_is_capped():
    def wait(value: str | None) -> float:
        return retry_after(httpx.Response(429, headers={} if value is None else {"Retry-After": value}))

    assert wait("2") == 2 and wait(None) == 1 and wait("soon") == 1 and wait("86400") == 60 and wait("-5") == 0
    assert 3 <= wait(email.utils.formatdate(time.time() + 5, usegmt=True)) <= 5


def test_importing_the_client_loads_no_server_library_and_no_model():
    code = (
        "import sys, int_engine.client; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'cv2', 'transformers', 'fastapi', 'starlette', 'uvicorn', 'ray'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
