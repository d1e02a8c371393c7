"""``int-engine bench --ray``: the same run folder and table as the single-process run, on a
local loopback Ray cluster, also when an actor is SIGKILLed mid-run and when resuming."""

import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest

from int_engine.cli import main

try:
    import ray  # noqa: F401

    RAY_MISSING = None
except ImportError as err:
    RAY_MISSING = f"ray is not installed (pip install -c constraints.txt '.[ray]'): {err}"
pytestmark = pytest.mark.skipif(RAY_MISSING is not None, reason=RAY_MISSING or "")

N = 12
FAST = ["--iterations", "1", "--set", "max_new_tokens=8", "--set", "models.inpaint.options.steps=2", "--quiet"]
# throughput and timings differ between runs by nature; every figure of the table must not
VARIES = {"throughput"}


def _bench_args(data: Path, out: Path, zoo: Path, *extra: str) -> list[str]:
    return [
        "bench",
        "--dataset",
        "synthetic",
        "--data-root",
        str(data),
        "--limit",
        str(N),
        "--out",
        str(out),
        "--models",
        str(zoo),
        *FAST,
        *extra,
    ]


def _table(run: Path, skip: set[str]) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    return {k: v for k, v in summary.items() if k not in VARIES | skip}


def assert_same_table(run: Path, reference: Path, skip: set[str] = frozenset()) -> None:
    """The run's summary equals the reference's: every field but throughput (and ``skip``), the
    figures to 1e-4. A model batch of other images (Ray's batches differ from the single-process
    run's) rounds ~1e-6 differently, which can move a rare pixel by one 8-bit level; nothing more."""
    got, want = _table(run, skip), _table(reference, skip)
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, abs=1e-4), key
        else:
            assert got[key] == value, key


def assert_same_predictions(run: Path, reference: Path) -> None:
    """The same pred/ files, each within one 8-bit level of the reference's pixel by pixel."""
    assert sorted(p.name for p in (run / "pred").glob("*.png")) == sorted(p.name for p in (reference / "pred").glob("*.png"))
    for png in (reference / "pred").glob("*.png"):
        want = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
        got = cv2.imread(str(run / "pred" / png.name), cv2.IMREAD_UNCHANGED)
        assert got.shape == want.shape and got.dtype == np.uint8, png.name
        assert np.abs(got.astype(int) - want).max() <= 1, png.name


def _lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


@pytest.fixture
def ray_temp(tmp_path):
    """The local cluster's session folder, inside the test's tmp dir, named by a short link in
    /tmp: Ray's socket paths under a deep pytest folder pass the 107 bytes AF_UNIX allows."""
    target = tmp_path / "ray"
    target.mkdir()
    short = Path(tempfile.mkdtemp(prefix="rb"))
    (short / "r").symlink_to(target)
    yield str(short / "r")
    (short / "r").unlink()
    short.rmdir()


@pytest.fixture(scope="module")
def reference(tiny_zoo, tmp_path_factory) -> tuple[Path, Path]:
    """The dataset and the single-process run of it: (data root, run folder)."""
    root = tmp_path_factory.mktemp("ray_bench")
    data, run = root / "data", root / "single"
    assert main(_bench_args(data, run, tiny_zoo)) == 0
    return data, run


def test_ray_run_writes_the_same_table_as_the_single_process_run(reference, tiny_zoo, tmp_path, ray_temp, capsys):
    data, single = reference
    run = tmp_path / "ray"
    code = main(_bench_args(data, run, tiny_zoo, "--ray", "--workers", "2", "--ray-temp-dir", ray_temp))
    assert code == 0
    assert "| Synthetic |" in capsys.readouterr().out
    assert_same_table(run, single)
    lines = _lines(run)
    assert sorted(r["name"] for r in lines) == sorted(r["name"] for r in _lines(single))
    assert len({r["worker"]["pid"] for r in lines}) == 2, "both actors segmented images"
    assert_same_predictions(run, single)
    for name in ("metrics.csv", "curves.npz", "summary.md", "report.html", "config.yaml", "env.json", "run.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "run.json").read_text()) == json.loads((single / "run.json").read_text())


def test_resumed_ray_run_survives_a_killed_actor_and_scores_each_image_once(reference, tiny_zoo, tmp_path, ray_temp):
    from int_engine.bench.datasets import find_dataset
    from int_engine.bench.ray_bench import RayBenchSettings, run_ray_bench
    from int_engine.config import EngineConfig

    data, single = reference
    run = tmp_path / "resumed"
    shutil.copytree(single, run)
    # a run stopped after 4 images: their lines stay, the rest (and their PNGs) are gone
    kept = _lines(single)[:4]
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    for png in (run / "pred").glob("*.png"):
        if png.stem not in {r["name"] for r in kept}:
            png.unlink()
    # a stopped run records no session (finish_run never ran): its 4 images' work is not known
    (run / "sessions.jsonl").unlink()
    info = json.loads((run / "run.json").read_text())
    dataset = find_dataset("cod10k", data)  # as the CLI names and limits it
    dataset.name, dataset.pairs = "Synthetic", dataset.pairs[:N]
    killed: list[int] = []
    seen: list[dict] = []

    def kill_first_worker(row: dict) -> None:
        seen.append(row)
        if not killed:  # mid-run: its actor very likely holds its next batch already
            killed.append(row["worker"]["pid"])
            os.kill(row["worker"]["pid"], signal.SIGKILL)

    summary = run_ray_bench(
        EngineConfig.from_dict(info["config"]),
        dataset,
        run,
        info["models"],
        RayBenchSettings(workers=2, temp_dir=ray_temp),
        limit=N,
        resume=True,
        models_label=info["models"],
        on_image=kill_first_worker,
    )
    assert killed and len(seen) == N - 4, "the kill came at the first of 8 images, mid-run"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    lines = _lines(run)
    names = [r["name"] for r in lines]
    assert len(names) == N and len(set(names)) == N, "every image exactly once"
    assert lines[:4] == kept, "finished images are not run again"
    assert all(r["ok"] for r in lines) and summary["scored"] == N
    # the work is this session's: its 8 images' iterations, each batch's counters once (a batch
    # counted twice or a killed actor's lost batch would move the per-iteration view counts)
    (session,) = [json.loads(l) for l in (run / "sessions.jsonl").read_text().splitlines()]
    assert session["images"] == N - 4 and session["image_iterations"] == sum(r["iterations"] for r in lines[4:])
    work = summary["work_per_image_iteration"]
    assert (work["detector.images"], work["segmenter.encoder_images"], work["clip.images"]) == (9, 9, 18)
    assert 0 <= work["inpaint.inpaint_jobs"] <= 1  # image scope: at most one job per image-iteration
    assert_same_table(run, single, skip={"work_per_image_iteration"})
    assert_same_predictions(run, single)


def test_a_batch_written_twice_leaves_one_line_and_the_same_png(tmp_path):
    """What the driver does when Ray delivers a re-run batch's rows again."""
    from int_engine.bench.datasets import Pair
    from int_engine.bench.run import RunWriter, load_results

    (tmp_path / "pred").mkdir()
    pair = Pair("a", tmp_path / "a.jpg", tmp_path / "a.png")
    ok, png = cv2.imencode(".png", np.full((4, 5), 7, np.uint8))
    row = {"name": "a", "ok": True, "iterations": 1}
    got: list[dict] = []
    writer = RunWriter(tmp_path, {}, got.append)
    assert writer.write(pair, png.tobytes(), row) and not writer.write(pair, png.tobytes(), row)
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 1 and load_results(tmp_path) == {"a": row}
    assert got == [row] and writer.processed == 1 and writer.image_iterations == 1
    assert (tmp_path / "pred" / "a.png").read_bytes() == png.tobytes() and len(list((tmp_path / "pred").iterdir())) == 1


def test_actor_resources_leave_ray_data_room_and_follow_the_config():
    from int_engine.bench.ray_bench import RayBenchSettings, _cpus_per_worker, _gpus_per_worker
    from int_engine.config import EngineConfig, apply_overrides

    class FakeRay:
        @staticmethod
        def cluster_resources() -> dict:
            return {"CPU": 2.0}

    cpu, cuda = EngineConfig(), apply_overrides(EngineConfig(), ["models.device=cuda"])
    assert _gpus_per_worker(cpu, RayBenchSettings()) == 0 and _gpus_per_worker(cuda, RayBenchSettings()) == 1
    assert _gpus_per_worker(cpu, RayBenchSettings(gpus_per_worker=0.5)) == 0.5
    # two actors on 2 CPUs: 1.5 CPUs reserved in all, half a CPU left for Ray Data's tasks
    assert _cpus_per_worker(FakeRay, cpu, RayBenchSettings(workers=2)) == 0.75
    assert _cpus_per_worker(FakeRay, cuda, RayBenchSettings(workers=2)) == 1.0
    assert _cpus_per_worker(FakeRay, cpu, RayBenchSettings(workers=2, cpus_per_worker=0.5)) == 0.5
