"""``int-engine bench --ray``: the benchmark run, its images segmented by a pool of Ray actors.

Ray Data reads the dataset's rows (image path, GT path, name; with ``--resume`` only the images
not yet recorded) and ``map_batches`` hands them to an actor pool. Each actor holds one
``IntEngine`` with its models loaded once (the run's config and models folder) and runs a
batch's rows through ``segment_many``, so its own scheduler batches them; per image it returns
exactly what the single-process run computes (``run.segment_pairs``): the prediction PNG (8-bit
soft mask at GT size) and the results line, or the image's error. The driver streams the rows
back and writes them into the run folder with the single-process run's own writer
(``run.RunWriter``) and final step (``run.finish_run``), so the folder, ``--resume`` and the
tables are the same as without Ray.

Failures: an actor process that dies (OOM, SIGKILL, a lost node) is restarted by Ray and the
batches it held run again (Ray Data's actors: ``max_restarts`` and ``max_task_retries`` -1). A
batch that ran twice is written once: the PNG write is atomic and idempotent and the driver
keeps one results line per image name. Rows come back in completion order; nothing depends on it.

The images and GT files are read by the actors, by path: on a multi-node cluster the dataset
(and the models folder) must be at the same path on every node.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np

from ..config import EngineConfig
from ..errors import IntEngineError
from ..service.ray_runtime import connect, init_local
from ..service.ray_serve import REPLICA_CPU_SHARE, cuda_devices, replica_config
from ..work import work_delta, work_of
from .datasets import Dataset, Pair
from .run import RunWriter, finish_run, prepare_run, segment_pairs

OBJECT_STORE_BYTES = 1 << 30  # PNGs and JSON lines only pass through it: 1 GiB is plenty


@dataclass
class RayBenchSettings:
    """How the run is laid out on Ray.

    address: an existing cluster (None: start a local one on loopback); workers: actors in the
    pool; gpus_per_worker: GPUs each actor reserves (1: one actor per GPU; None: one per CUDA
    device the config names, as ``serve --ray`` does); cpus_per_worker:
    CPUs each reserves (None: 1 beside a GPU, else a share of a CPU-only cluster that leaves
    Ray Data's own tasks room); batch_rows: images per batch handed to an actor (None: enough
    batches to keep every actor busy, at most the config's ``max_in_flight``); temp_dir: the
    local cluster's session folder; actor_start_timeout_s: how long the pool may take to start
    (every actor's models loaded) before the run fails, e.g. on a cluster short of GPUs."""

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float | None = None
    cpus_per_worker: float | None = None
    batch_rows: int | None = None
    temp_dir: str | None = None
    actor_start_timeout_s: float = 900.0


class BenchActor:
    """One actor of the pool: its own ``IntEngine``, loaded once, segmenting the batches it gets."""

    def __init__(self, config: dict[str, Any], models_dir: str | None, torch_threads: int, score: str = "binary") -> None:
        import torch

        from ..api import IntEngine

        # the actor's CPU reservation, not every core: actors share the machine
        torch.set_num_threads(torch_threads)
        self.engine = IntEngine(replica_config(EngineConfig.from_dict(config)), models_dir=models_dir)
        self.worker = {"host": socket.gethostname(), "pid": os.getpid()}
        self.score = score

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Segment a batch of rows (name, image, gt); per image: PNG bytes (empty on error), the
        results line as JSON, and (on the batch's first row only) the models' work it cost."""
        pairs = [Pair(str(n), Path(str(i)), Path(str(g))) for n, i, g in zip(batch["name"], batch["image"], batch["gt"])]
        before, started = work_of(self.engine.models), time.time()
        names, pngs, rows = [], [], []
        for pair, png, row in segment_pairs(self.engine, pairs, self.score):
            names.append(pair.name)
            pngs.append(png or b"")
            rows.append(json.dumps({**row, "worker": self.worker}))
        work = json.dumps(work_delta(before, work_of(self.engine.models)))
        return {
            "name": np.array(names, dtype=object),
            "png": np.array(pngs, dtype=object),
            "row": np.array(rows, dtype=object),
            "work": np.array([work] + ["{}"] * (len(names) - 1), dtype=object),
            "batch_started": np.full(len(names), started),
            "batch_ended": np.full(len(names), time.time()),
        }

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)  # getattr: also after a constructor that failed
        if engine is not None:
            engine.close()


def ray_failure(err: BaseException) -> str:
    """What failed, in one line: the engine's own error when a task or an actor's constructor
    raised one (Ray's message ends with the remote traceback's last line), else Ray's first line."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, IntEngineError):
        return str(cause)
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return lines[-1] if len(lines) > 1 and lines[-1].startswith(("int_engine.", "ray.")) else lines[0]


def _gpus_per_worker(config: EngineConfig, settings: RayBenchSettings) -> float:
    if settings.gpus_per_worker is not None:
        return settings.gpus_per_worker
    return float(len(cuda_devices(config)))  # Ray then shows an actor its GPUs as cuda:0.. (replica_config)


def _cpus_per_worker(ray: ModuleType, config: EngineConfig, settings: RayBenchSettings) -> float:
    if settings.cpus_per_worker is not None:
        return settings.cpus_per_worker
    if _gpus_per_worker(config, settings) > 0:
        return 1.0
    # actors holding every CPU starve Ray Data's own tasks and the run hangs without a word
    cluster = float(ray.cluster_resources().get("CPU", 1.0))
    return max(0.25, round(REPLICA_CPU_SHARE * cluster / settings.workers, 2))


def segment_on_ray(
    ray: ModuleType,
    config: EngineConfig,
    models_dir: str | Path | None,
    todo: list[Pair],
    settings: RayBenchSettings,
    score: str = "binary",
) -> Any:
    """The Ray Data pipeline over ``todo``: an iterator of output rows (``BenchActor.__call__``'s
    columns), in completion order. Ray must be initialised."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the CLI's own bar counts images
    # Start only once every actor is up: else the first actor loaded takes all the queued
    # batches of a short run, and a pool that cannot be placed fails instead of waiting forever.
    ctx.wait_for_min_actors_s = settings.actor_start_timeout_s
    cpus, gpus = _cpus_per_worker(ray, config, settings), _gpus_per_worker(config, settings)
    rows = settings.batch_rows or max(1, min(config.max_in_flight, math.ceil(len(todo) / (2 * settings.workers))))
    ds = ray.data.from_items([{"name": p.name, "image": str(p.image), "gt": str(p.gt)} for p in todo])
    ds = ds.map_batches(
        BenchActor,
        fn_constructor_kwargs={
            "config": config.to_dict(),
            "models_dir": str(models_dir) if models_dir else None,
            "torch_threads": max(1, int(cpus)),
            "score": score,
        },
        compute=ray.data.ActorPoolStrategy(size=settings.workers, max_tasks_in_flight_per_actor=2),
        num_cpus=cpus,
        num_gpus=gpus or None,
        batch_size=rows,
        batch_format="numpy",
    )
    return ds.iter_rows()


def run_ray_bench(
    config: EngineConfig,
    dataset: Dataset,
    out: str | Path,
    models_dir: str | Path | None,
    settings: RayBenchSettings,
    limit: int | None = None,
    resume: bool = False,
    models_label: str | None = None,
    on_image: Callable[[dict], None] | None = None,
    score: str = "binary",
) -> dict[str, Any]:
    """``run.run_bench`` with the images segmented on Ray (see the module's doc); returns the
    summary. Starts a local loopback cluster unless ``settings.address`` names one, and
    disconnects at the end. ``on_image`` gets each new results line (it has a ``worker``: host, pid)."""
    out = Path(out)
    pairs, done, todo = prepare_run(config, dataset, out, limit, resume, models_label, models_dir, score)
    writer = RunWriter(out, done, on_image)
    work: dict[str, float] = {}
    start = time.perf_counter()
    if todo:
        local = settings.address is None
        ray = init_local(settings.temp_dir, OBJECT_STORE_BYTES) if local else connect(settings.address)
        try:
            by_name = {p.name: p for p in todo}
            for item in segment_on_ray(ray, config, models_dir, todo, settings, score):
                row = json.loads(item["row"])
                png = bytes(item["png"]) if row["ok"] else None
                if writer.write(by_name[row["name"]], png, row):
                    for key, value in json.loads(item["work"]).items():
                        work[key] = work.get(key, 0.0) + value
        except ray.exceptions.RayError as err:  # e.g. the models cannot load in an actor
            raise IntEngineError(f"the Ray run failed: {ray_failure(err)}") from err
        finally:
            ray.shutdown()
    wall = time.perf_counter() - start
    return finish_run(out, dataset, pairs, writer, wall, work)


def ray_throughput(
    config: EngineConfig,
    models_dir: str | Path,
    n_images: int,
    size: tuple[int, int],
    worker_counts: tuple[int, ...] = (1, 2),
    json_path: str | None = None,
) -> int:
    """``python -m int_engine.bench.throughput --ray``: images/s of the Ray Data actor pool with
    1, then 2 workers on the same synthetic images, in one local loopback cluster. Prints, per
    pool size, the steady rate (images over first batch start to last batch end: the pool
    starts every actor before any batch, so model loading is left out) and the end-to-end
    rate (pipeline start to last row, actor start-up included); ``json_path`` gets the figures."""
    import shutil
    import tempfile

    from .datasets import find_dataset
    from .synthetic import write_synthetic_dataset

    # a short /tmp folder: Ray's socket paths under it must stay within 107 bytes
    tmp = Path(tempfile.mkdtemp(prefix="int-ray-"))
    try:
        pairs = find_dataset("cod10k", write_synthetic_dataset(tmp / "data", n_images, height=size[0], width=size[1])).pairs
        ray = init_local(str(tmp / "ray"), OBJECT_STORE_BYTES)
        figures: dict[str, Any] = {
            "images": n_images,
            "image_size": list(size),
            "iterations": config.iterations,
            "cluster_cpus": ray.cluster_resources().get("CPU"),
            "pools": [],
        }
        try:
            for workers in worker_counts:
                settings = RayBenchSettings(workers=workers)
                t0 = time.time()
                rows = list(segment_on_ray(ray, config, models_dir, pairs, settings))
                end_to_end = time.time() - t0
                failed = [json.loads(r["row"])["error"] for r in rows if not json.loads(r["row"])["ok"]]
                if failed or len(rows) != n_images:
                    raise IntEngineError(f"{workers} worker(s): {len(rows)} rows, errors: {failed[:3]}")
                window = max(r["batch_ended"] for r in rows) - min(r["batch_started"] for r in rows)
                figures["pools"].append(
                    {
                        "workers": workers,
                        "cpus_per_worker": _cpus_per_worker(ray, config, settings),
                        "images_per_s": n_images / window,
                        "end_to_end_images_per_s": n_images / end_to_end,
                        "seconds": window,
                        "end_to_end_seconds": end_to_end,
                    }
                )
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # Ray's session files included: nothing to keep
    print(
        f"Ray Data actor pool: {n_images} images {size[0]}x{size[1]}, {config.iterations} iterations, "
        f"{figures['cluster_cpus']:.0f} CPUs, models {models_dir}"
    )
    base = figures["pools"][0]["images_per_s"]
    for pool in figures["pools"]:
        print(
            f"  {pool['workers']} worker(s) ({pool['cpus_per_worker']} CPU each): {pool['images_per_s']:8.3f} images/s "
            f"steady ({pool['images_per_s'] / base:.2f}x), {pool['end_to_end_images_per_s']:8.3f} images/s end to end "
            f"({pool['end_to_end_seconds']:.1f} s with actor start-up)"
        )
    if json_path:
        Path(json_path).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0
