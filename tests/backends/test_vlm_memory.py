"""Memory of a VLM scoring call on the small real-shaped LLaVA (engine/models/tiny_vlm.py,
scale "small": a 4-layer Llama 1024 wide, 196 image tokens, ~310 tokens a row): bounded by the
``max_batch_tokens`` budget of a forward pass, not by the number of rows in the call; on both
paths, every row in full (``shared_prefix: false``) and the shared-prefix one (``llava_prefix``:
a pass's prefixes once, with their KV cache, then the candidates' answers on it), which holds no
more than the full path at the same budget.

Each setting's peak is measured in one fresh child process (so nothing of pytest's own heap
counts): the kernel's resident high-water mark (VmHWM) is reset before each call
(``/proc/self/clear_refs`` 5) after the freed heap is handed back (``malloc_trim``), and the peak
is VmHWM minus the resident size just before the call. Where the kernel refuses the reset, the
resident size is sampled every millisecond instead (psutil).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from int_engine.models import tiny_vlm

# Rows of the small zoo's LLaVA are 305 and 314 tokens ("llava_v1": 304 of system prompt, image and
# question, then " frog" or " green lizard on a leaf"): B holds 8 of them (8 x 314 = 2512,
# 9 x 314 = 2826), 4B 32.
BUDGET = 2600
ROWS, MORE_ROWS = 16, 64

CHILD = r"""
import gc, json, sys, threading, time
import numpy as np, torch
from int_engine.backends.vlm_hf import HFLlavaVLM
from int_engine.memory import trim_heap

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

def hwm_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmHWM"))

def reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

def peak_during(call):
    gc.collect(); trim_heap()
    base = rss_mb()
    if reset_hwm():
        call()
        return hwm_mb() - base, "VmHWM"
    import psutil
    proc, peak, done = psutil.Process(), [0.0], threading.Event()
    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss / 2**20); time.sleep(0.001)
    t = threading.Thread(target=sample); t.start()
    try:
        call()
    finally:
        done.set(); t.join()
    return peak[0] - base, "sampled"

model_dir, settings, shared = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "shared"
vlm = HFLlavaVLM.load(model_dir, max_batch_size=None, shared_prefix=shared)
rng = np.random.default_rng(0)
views = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(4)]
prompt, answers = "Output the name of the camouflaged animal.", ["frog", "green lizard on a leaf"]

def score(rows):
    # 4 views, each with rows / 4 candidates (adjacent, as the scheduler sends them)
    images = [views[j * 4 // rows] for j in range(rows)]
    vlm.score(images, [prompt] * rows, [answers[j % 2] for j in range(rows)])

vlm.max_batch_tokens = None
score(2)  # warm-up: the first call's one-off allocations are no pass's
for rows, budget in settings:
    vlm.max_batch_tokens = budget
    if shared:
        from int_engine.backends.llava_prefix import plan
        images = [views[j * 4 // rows] for j in range(rows)]
        texts = [vlm.score_text(prompt, answers[j % 2]) for j in range(rows)]
        passes = len(plan(vlm, images, texts, vlm._answer_lengths([vlm.chat_text(prompt)] * rows, texts)))
    else:
        passes = len(vlm._passes(vlm._row_lengths([vlm.score_text(prompt, a) for a in answers] * (rows // 2))))
    start = time.perf_counter()
    peak, how = peak_during(lambda: score(rows))
    print(json.dumps({"rows": rows, "budget": budget, "passes": passes, "peak_mb": round(peak, 1),
                      "how": how, "seconds": round(time.perf_counter() - start, 1), "stats": vlm.last_stats}), flush=True)
"""


@pytest.fixture(scope="module")
def small_vlm(tmp_path_factory):
    out = tmp_path_factory.mktemp("small-vlm")
    tiny_vlm.build(out, seed=0, scale="small")  # not tiny_model("vlm"): the small scale on purpose
    return out


def measure(model_dir, settings: list[tuple[int, int | None]], shared: bool) -> list[dict]:
    """Run the settings (rows, max_batch_tokens) in order in one fresh process; their peaks."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(model_dir), json.dumps(settings), "shared" if shared else "full"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


SETTINGS = [(ROWS, BUDGET), (MORE_ROWS, BUDGET), (ROWS * 2, 4 * BUDGET)]


@pytest.fixture(scope="module")
def peaks(small_vlm) -> dict[str, list[dict]]:
    """Each path's (few, many, big) measurements."""
    out = {}
    for path in ("full", "shared"):
        start = time.perf_counter()
        out[path] = measure(small_vlm, SETTINGS, shared=path == "shared")
        for m in out[path]:
            print(
                f"\n{path:6s} score {m['rows']:3d} rows, max_batch_tokens {m['budget']}: {m['passes']} passes, "
                f"peak +{m['peak_mb']:.0f} MB ({m['how']}), {m['seconds']} s, {m['stats']}",
                end="",
            )
        print(f"\n({time.perf_counter() - start:.0f} s in all)")
    return out


def test_scoring_peak_memory_follows_the_token_budget_not_the_rows(peaks):
    few, many, big = peaks["full"]
    assert (few["passes"], many["passes"], big["passes"]) == (2, 8, 1)
    # 4x the rows at one budget: about the same peak (a pass's activations; not 4x)
    assert many["peak_mb"] < few["peak_mb"] * 1.25 + 25, (few, many)
    # 4x the budget: a higher peak, by ~40 KB a token of the small LLaVA in float32 (~200 MB)
    assert big["peak_mb"] > few["peak_mb"] + 100, (few, big)


def test_shared_prefix_scoring_holds_no_more_than_the_full_path(peaks):
    few, many, big = peaks["shared"]
    # the same passes (a view's 4 or 16 candidates: 2 views a pass, or a view split in two)
    assert (few["passes"], many["passes"], big["passes"]) == (2, 8, 1)
    # each view's prefix run once per pass: 4 views, the 16-candidate views split over 2 passes each
    prefix = peaks["full"][0]["stats"]["prefix_tokens"] // ROWS  # one row's image + prompt tokens
    assert [m["stats"]["prefix_tokens"] for m in (few, many, big)] == [4 * prefix, 8 * prefix, 4 * prefix]
    # 4x the rows at one budget: about the same peak, the prefixes' cache included
    assert many["peak_mb"] < few["peak_mb"] * 1.25 + 25, (few, many)
    # at each budget no more than every row in full (the cache is not copied per candidate)
    for full, shared in zip(peaks["full"], peaks["shared"]):
        assert shared["peak_mb"] < full["peak_mb"] * 1.1 + 10, (full, shared)
