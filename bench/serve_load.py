"""Load on the HTTP service against the library: ``int-engine serve`` on loopback, a closed-loop
client sweep over concurrency levels, and ``IntEngine.segment_many`` on the same images.

The server runs in a subprocess (``python -m int_engine.cli serve``) with the zoo and settings
given here. At each level N client threads each keep one request in flight (the next one leaves
when the previous one is answered) until ``--requests`` have been answered; images/s counts the
200s over the level's wall seconds. Right after each level, with the server idle (the two
processes share the machine's cores), the library in this process runs ``segment_many`` on the
same images with the same config, so every level's ratio service / segment_many is measured side
by side. With ``--repeats`` the whole sweep is repeated and medians are reported.

    python -m int_engine.bench.serve_load [--zoo DIR] [--levels 1 4 16] [--requests 48]
        [--size 64 80] [--iterations 1] [--repeats 1] [--json F]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from ..client import Client, ClientResult, ServiceError
from ..config import EngineConfig, apply_overrides
from .synthetic import make_scene

SEGMENTER = "segmenter.segment"  # the model call whose batch sizes are reported


def free_port() -> int:
    """A loopback port nobody listens on (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


class ServerProcess:
    """``int-engine serve`` in a subprocess on a free loopback port; its output goes to a temp
    file (a pipe nobody drains could block the server). ``stop`` sends SIGTERM and returns the
    exit code (0 after a drained stop).

    ``env``: variables added to this process's environment for the server; ``ready_text``: a
    line the server's output must hold besides ``/readyz`` answering 200 before it counts as
    ready (e.g. ``serve --ray``'s "serving on Ray Serve", said once every replica runs)."""

    def __init__(
        self,
        args: list[str],
        ready_timeout_s: float = 240.0,
        env: dict[str, str] | None = None,
        ready_text: str | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="serve_load-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "int_engine.cli", "serve", "--port", str(self.port), *args],
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.ready_timeout_s = ready_timeout_s
        self.ready_text = ready_text

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode} before it was ready:\n{self.output()}")
            try:
                said = self.ready_text is None or self.ready_text in self.output(tail=None)
                if said and httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready within {self.ready_timeout_s:.0f} s:\n{self.output()}")

    def output(self, tail: int | None = 4000) -> str:
        """The server's output so far: its last ``tail`` characters (None: all of it)."""
        self.log.flush()
        text = Path(self.log.name).read_text(encoding="utf-8", errors="replace")
        return text if tail is None else text[-tail:]

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:  # a drain that hangs is a failure: say so, then kill
                self.kill()
                return -9
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the server (after a stop that hung) and reap it."""
        self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


@dataclass
class LevelRun:
    """One level's sweep: statuses and client-side latencies in request order, wall seconds,
    and the results of the 200s (checked against the library after timing)."""

    concurrency: int
    statuses: list[int]
    latencies: list[float]
    wall_s: float
    results: dict[int, ClientResult]

    @property
    def ok(self) -> int:
        return self.statuses.count(200)


def sweep(url: str, data: list[bytes], concurrency: int, requests: int, timeout_s: float) -> LevelRun:
    """``concurrency`` clients (``int_engine.client.Client``, no retry: a 429 is counted as
    answered), each with its own keep-alive connection and one request in flight, send request
    k = 0, 1, ... (image ``k % len(data)``) until ``requests`` are answered."""
    statuses, latencies = [0] * requests, [0.0] * requests
    results: dict[int, ClientResult] = {}
    lock, next_k = threading.Lock(), [0]
    start = threading.Barrier(concurrency + 1)
    errors: list[BaseException] = []

    def client() -> None:
        with Client(url, timeout=timeout_s, retries=0) as client:
            start.wait()
            while True:
                with lock:
                    k = next_k[0]
                    next_k[0] += 1
                if k >= requests:
                    return
                t0 = time.perf_counter()
                try:
                    # the masks are decoded when first used: after timing, when checked
                    results[k], statuses[k] = client.segment(data[k % len(data)]), 200
                except ServiceError as err:  # an error answer: its status
                    statuses[k] = err.status
                except httpx.HTTPError as err:  # no answer at all: recorded as status 0
                    errors.append(err)
                latencies[k] = time.perf_counter() - t0

    threads = [threading.Thread(target=client, name=f"client-{i}", daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        print(f"  {len(errors)} request(s) without an answer, e.g. {type(errors[0]).__name__}: {errors[0]}", file=sys.stderr)
    return LevelRun(concurrency, statuses, latencies, wall, results)


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid``, all its threads (Linux /proc; None elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "(comm)", which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """User + system CPU seconds of this process, all its threads."""
    t = os.times()
    return t.user + t.system


def batch_totals(metrics_text: str, call: str = SEGMENTER) -> tuple[float, float]:
    """(batches, images) of ``call`` so far, from the server's /metrics histogram."""
    count = total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(f'int_engine_batch_images_count{{call="{call}"}}'):
            count = float(line.split()[-1])
        elif line.startswith(f'int_engine_batch_images_sum{{call="{call}"}}'):
            total = float(line.split()[-1])
    return count, total


class Library:
    """``IntEngine`` in this process: loaded once, warmed up once, then ``segment_many`` timed;
    counts the segmenter's batches (the core's ``on_batch`` hook, as the service's metrics do)."""

    def __init__(self, cfg: EngineConfig, zoo: Path) -> None:
        from ..api import IntEngine

        self.engine = IntEngine(cfg, models_dir=zoo)
        self.batches = self.images = 0
        self.engine.core.on_batch = self._on_batch

    def _on_batch(self, call: str, images: int, seconds: float) -> None:
        if call == SEGMENTER:
            self.batches += 1
            self.images += images

    def run(self, images: list[np.ndarray]) -> tuple[float, list[Any], float]:
        """(seconds, results in input order, mean images per segmenter batch) of one pass."""
        b0, i0 = self.batches, self.images
        t0 = time.perf_counter()
        out = dict(self.engine.segment_many(images))
        elapsed = time.perf_counter() - t0
        bad = [v for v in out.values() if isinstance(v, Exception)]
        if bad:
            raise bad[0]
        return elapsed, [out[str(i)] for i in range(len(images))], (self.images - i0) / max(1, self.batches - b0)

    def close(self) -> None:
        self.engine.close()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def level_figures(runs: list[LevelRun], side: dict[str, list[float]], requests: int) -> dict[str, Any]:
    """One level's figures over its repeats: medians of images/s and ratio (each repeat's ratio is
    taken from its own side-by-side pair), latency percentiles over all its answered requests,
    and the medians of the per-repeat figures in ``side`` (segment_many seconds, batch sizes, CPU)."""
    ips = [r.ok / r.wall_s for r in runs]
    lib_ips = [requests / s for s in side["segment_many_s"]]
    ok_lat = [lat for r in runs for lat, st in zip(r.latencies, r.statuses) if st == 200]
    statuses: dict[str, int] = {}
    for r in runs:
        for st in r.statuses:
            statuses[str(st)] = statuses.get(str(st), 0) + 1
    return {
        "concurrency": runs[0].concurrency,
        "requests": requests * len(runs),
        "images_per_s": statistics.median(ips),
        "images_per_s_runs": ips,
        "latency_s": {
            "p50": percentile(ok_lat, 50),
            "p95": percentile(ok_lat, 95),
            "p99": percentile(ok_lat, 99),
            "mean": statistics.fmean(ok_lat) if ok_lat else float("nan"),
        },
        "non_200": sum(len(r.statuses) - r.ok for r in runs),
        "statuses": statuses,
        "segment_many_images_per_s": statistics.median(lib_ips),
        "segment_many_images_per_s_runs": lib_ips,
        "ratio": statistics.median(a / b for a, b in zip(ips, lib_ips)),
        **{name: median_or_none(values) for name, values in side.items() if name != "segment_many_s"},
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(levels: list[dict[str, Any]]) -> None:
    """Throughput and latency per level, then where the CPU goes (ms per image)."""
    print(
        f"{'clients':>7s} {'service img/s':>13s} {'p50 s':>7s} {'p95 s':>7s} {'p99 s':>7s} {'non-200':>7s} "
        f"{'segment_many img/s':>18s} {'ratio':>6s}"
    )
    for f in levels:
        lat = f["latency_s"]
        print(
            f"{f['concurrency']:7d} {f['images_per_s']:13.3f} {lat['p50']:7.3f} {lat['p95']:7.3f} {lat['p99']:7.3f} "
            f"{f['non_200']:7d} {f['segment_many_images_per_s']:18.3f} {f['ratio']:6.2f}"
        )
    print(
        f"{'clients':>7s} {'images/segmenter batch':>22s} {'segment_many':>12s} {'CPU ms/image: server':>20s} "
        f"{'client':>7s} {'segment_many':>12s}"
    )
    for f in levels:
        print(
            f"{f['concurrency']:7d} {_fmt(f['server_images_per_segmenter_batch'], '22.2f')} "
            f"{_fmt(f['segment_many_images_per_segmenter_batch'], '12.2f')} {_fmt(f['server_cpu_ms_per_image'], '20.1f')} "
            f"{_fmt(f['client_cpu_ms_per_request'], '7.1f')} {_fmt(f['segment_many_cpu_ms_per_image'], '12.1f')}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", default="tiny", help="tiny (built on first use) or a models directory")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients, one level each")
    p.add_argument("--requests", type=int, default=48, help="requests answered per level (and segment_many's images)")
    p.add_argument("--images", type=int, default=16, help="distinct scenes; request k sends scene k %% images")
    p.add_argument("--size", type=int, nargs=2, default=(64, 80), metavar=("H", "W"))
    p.add_argument("--iterations", type=int, default=1)
    p.add_argument("--max-queue", type=int, default=64, help="the server's --max-queue (429 beyond it)")
    p.add_argument("--warmup", type=int, default=4, help="requests (and segment_many images) before timing")
    p.add_argument("--repeats", type=int, default=1, help="sweeps of all levels; medians are reported")
    p.add_argument("--timeout", type=float, default=300.0, help="client seconds per request")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, both sides")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    if min(args.levels) < 1 or min(args.requests, args.images, args.repeats, args.warmup) < 1:
        p.error("levels, --requests, --images, --repeats and --warmup must be >= 1")

    from ..models.cache import ensure_tiny_zoo

    zoo = ensure_tiny_zoo() if args.zoo == "tiny" else Path(args.zoo)
    # the server builds its config as the CLI does: EngineConfig() with --set, then --iterations
    cfg = apply_overrides(EngineConfig(), [*args.set, f"iterations={args.iterations}"])
    scenes = [make_scene(s, *args.size)[0] for s in range(args.images)]
    data = [png_bytes(im) for im in scenes]  # encoded once: the clients send bytes, not pixels
    images = [scenes[k % args.images] for k in range(args.requests)]  # what the sweep sends, in order
    server_args = [
        "--models",
        str(zoo),
        "--iterations",
        str(args.iterations),
        "--max-queue",
        str(args.max_queue),
        *[a for kv in args.set for a in ("--set", kv)],
    ]

    server = ServerProcess(server_args)  # starts loading while the library loads here
    library: Library | None = None
    exit_code: int | None = None
    runs: dict[int, list[LevelRun]] = {n: [] for n in args.levels}
    # per level, one value per repeat; CPU seconds say where the time goes, and they move less
    # than wall seconds when other work shares the machine
    side: dict[int, dict[str, list[float]]] = {
        n: {
            k: []
            for k in (
                "segment_many_s",
                "server_images_per_segmenter_batch",
                "segment_many_images_per_segmenter_batch",
                "server_cpu_ms_per_image",
                "client_cpu_ms_per_request",
                "segment_many_cpu_ms_per_image",
            )
        }
        for n in args.levels
    }
    try:
        library = Library(cfg, zoo)
        library.run(images[: args.warmup])
        server.wait_ready()
        warm = sweep(server.url, data, min(args.warmup, max(args.levels)), args.warmup, args.timeout)
        if warm.ok != args.warmup:
            raise RuntimeError(f"warm-up answered {warm.statuses}:\n{server.output()}")
        for _ in range(args.repeats):
            for n in args.levels:
                f = side[n]
                b0 = batch_totals(httpx.get(server.url + "/metrics").text)
                s0, c0 = process_cpu_s(server.proc.pid), own_cpu_s()
                run = sweep(server.url, data, n, args.requests, args.timeout)
                s1, c1 = process_cpu_s(server.proc.pid), own_cpu_s()
                b1 = batch_totals(httpx.get(server.url + "/metrics").text)
                runs[n].append(run)
                if b1[0] > b0[0]:
                    f["server_images_per_segmenter_batch"].append((b1[1] - b0[1]) / (b1[0] - b0[0]))
                if s0 is not None and s1 is not None and run.ok:
                    f["server_cpu_ms_per_image"].append(1e3 * (s1 - s0) / run.ok)
                # this process during the sweep: the client threads (the library's idle core thread
                # polls its queue every 50 ms, a negligible share)
                f["client_cpu_ms_per_request"].append(1e3 * (c1 - c0) / args.requests)
                c0 = own_cpu_s()
                seconds, results, per_batch = library.run(images)  # the server is idle now
                f["segment_many_cpu_ms_per_image"].append(1e3 * (own_cpu_s() - c0) / args.requests)
                f["segment_many_s"].append(seconds)
                f["segment_many_images_per_segmenter_batch"].append(per_batch)
                print(
                    f"  {n:3d} clients: service {run.ok / run.wall_s:7.3f} images/s, segment_many "
                    f"{args.requests / seconds:7.3f} images/s",
                    file=sys.stderr,
                )
    finally:
        exit_code = server.stop()
        if exit_code != 0:
            print(f"server exited {exit_code}:\n{server.output()}", file=sys.stderr)
        server.close()
        if library is not None:
            library.close()

    # the service and the library ran the same images with the same config: same masks
    want = [r.to_rle() for r in results]
    answered = [(k, result) for n in args.levels for run in runs[n] for k, result in run.results.items()]
    same = sum(result.to_rle() == want[k] for k, result in answered)
    levels = [level_figures(runs[n], side[n], args.requests) for n in args.levels]
    figures = {
        "zoo": str(zoo),
        "image_size": list(args.size),
        "iterations": args.iterations,
        "requests_per_level": args.requests,
        "distinct_images": args.images,
        "repeats": args.repeats,
        "max_queue": args.max_queue,
        "max_in_flight": cfg.max_in_flight,
        "overrides": args.set,
        "levels": levels,
        "masks_equal": same,
        "masks_compared": len(answered),
        "server_exit_code": exit_code,
    }
    print(
        f"zoo {zoo}: {args.requests} requests per level, images {args.size[0]}x{args.size[1]}, "
        f"{args.iterations} iteration(s), max_in_flight {cfg.max_in_flight}, max_queue {args.max_queue}, "
        f"medians of {args.repeats} repeat(s)"
    )
    print_table(levels)
    print(f"binary masks equal to the library's: {same} of {len(answered)}; server exit code {exit_code}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    # 429 is the service's answer to more clients than in flight + queue; anything else is a fault
    faults = [st for f in levels for st in f["statuses"] if st not in ("200", "429")]
    return 1 if exit_code != 0 or same != len(answered) or faults else 0


if __name__ == "__main__":
    sys.exit(main())
