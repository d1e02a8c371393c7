"""Many images in flight; at every tick, one batch per model.

Each image is a step generator (``pipeline.image_steps``) paused at its next model call.
A tick takes the earliest call (in an iteration's order) that any in-flight image is
waiting at, concatenates that call of every image waiting at it (all views x {before, after} x candidates of every image in one VLM scoring call, all
views' SAM requests in one segment call, all inpainting jobs in one diffusion batch, one
mining launch for the whole padded [B, V, C] tick), runs each batch once and hands every
image its share. The scheduler owns batching, never the algorithm: it runs the same steps
as the eager pipeline, so it gives the same masks.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch

from .calls import ModelCall, concat, run_model, split
from .config import EngineConfig
from .memory import trim_heap
from .mining import mine
from .pipeline import Reply, Result
from .protocols import Models
from .trace import call_range, cuda_sync

# An iteration's calls in the order it makes them: a tick runs the earliest of these that any
# image is waiting at, so images that skipped a stage wait for the others at the next one and
# every call stays one batch for all images in flight.
CALL_ORDER = (("vlm", "generate"), ("inpaint", "inpaint"), ("vlm", "score"), ("mine", "mine"), ("detector", "detect"),
              ("clip", "similarity_maps"), ("segmenter", "segment"), ("clip", "image_text_similarity"))
RANK = {rm: i for i, rm in enumerate(CALL_ORDER)}
Steps = Any  # Generator[ModelCall, Reply, Result]


@dataclass
class _Job:
    key: Any
    steps: Steps
    call: ModelCall | None = None


@dataclass
class TickStats:
    """What the loop did: model calls per (role, method) and requests per call."""

    ticks: int = 0
    calls: dict[str, int] | None = None
    request_counts: dict[str, int] | None = None

    def __post_init__(self) -> None:
        self.calls, self.request_counts = {}, {}

    def count(self, call: ModelCall, requests: int | None = None) -> None:
        """One call of ``call``'s kind carrying ``requests`` requests (default: its own size)."""
        name = f"{call.role}.{call.method}"
        self.calls[name] = self.calls.get(name, 0) + 1
        self.request_counts[name] = self.request_counts.get(name, 0) + (call.size if requests is None else requests)


def mining_device(config: EngineConfig) -> torch.device:
    """Where a tick's negative mining runs: the VLM's device (the scores come from the VLM)."""
    return torch.device(config.models.device_of("vlm"))


def mining_dtypes(device: torch.device) -> tuple[torch.dtype, torch.dtype]:
    """(scores dtype, history dtype) that ``mine_fused`` is given on ``device``.

    CPU: float64 for both, the pipeline's dtype, so CPU results are those of ``mining.mine``.
    CUDA: float32 scores, the dtype the kernel is written for (the softmax difference agrees with
    float64 to 1e-6 on D = scores / W, see ``kernels.mine_fused``), and float64 history, so that
    eq 5-7 and the running weights W stay in the pipeline's float64 (the kernel computes them in
    promote(scores, history) and returns float64). Elsewhere (MPS has no float64): float32.
    """
    if device.type == "cpu":
        return torch.float64, torch.float64
    if device.type == "cuda":
        return torch.float32, torch.float64
    return torch.float32, torch.float32


def _pad_tick(calls: list[ModelCall]) -> tuple[torch.Tensor, torch.Tensor]:
    """The tick's padded inputs on the host, in the calls' dtypes.

    Each call holds [1, V_b, C_b] scores and [1, C_b] history (CPU tensors from the pipeline).
    Returns scores [2, B, V_max, C_max] (s_before, s_after) padded with -inf (padded views and
    candidates count as nothing) and history [B, C_max] padded with 1. Padding where the data
    already is, then moving the tick at once, costs two host->device copies per tick instead
    of three per image.
    """
    befores = [c.items[0][0] for c in calls]
    v = max(t.shape[1] for t in befores)
    c = max(t.shape[2] for t in befores)
    scores = torch.full((2, len(calls), v, c), float("-inf"), dtype=befores[0].dtype)
    history = torch.ones((len(calls), c), dtype=calls[0].items[2][0].dtype)
    for b, call in enumerate(calls):
        sb, sa, h = call.items[0][0], call.items[1][0], call.items[2][0]
        scores[0, b, : sb.shape[1], : sb.shape[2]] = sb[0]
        scores[1, b, : sa.shape[1], : sa.shape[2]] = sa[0]
        history[b, : h.shape[1]] = h[0]
    return scores, history


def _to_host(pick: torch.Tensor, scores: torch.Tensor, new_history: torch.Tensor, dtype: torch.dtype
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The tick's outputs on the CPU in one device->host copy: pick int64 [B], scores and
    new_history [B, C] in ``dtype`` (what ``mining.mine`` returns on the pipeline's tensors)."""
    if scores.device.type != "cpu":
        # One copy, not three: pick (a column index < C) is exact in float32 and float64.
        packed = torch.cat([pick.to(scores.dtype)[:, None], scores, new_history], dim=1).cpu()
        c = scores.shape[1]
        pick, scores, new_history = packed[:, 0].to(torch.int64), packed[:, 1 : 1 + c], packed[:, 1 + c :]
    return pick, scores.to(dtype), new_history.to(dtype)


def mine_batch(calls: list[ModelCall], device: torch.device | str = "cpu") -> list[list]:
    """One fused negative-mining launch for the calls of many images (SPEC step 6).

    Pads every image's [1, V, C] scores to the tick's [B, V_max, C_max] (``_pad_tick``), moves
    them to ``device`` in ``mining_dtypes(device)``, runs ``mine_fused`` once (the Triton kernel
    on CUDA, or on CPU under TRITON_INTERPRET=1; ``mining.mine`` otherwise), and gives each image
    its pick int64 [1], scores and new_history [1, C_b] back on the CPU, in the dtype ``mining.mine``
    gives on the pipeline's tensors (float64).
    """
    from .kernels import MAX_CANDIDATES, MAX_VIEWS, mine_fused

    device = torch.device(device)
    s_dtype, h_dtype = mining_dtypes(device)
    out_dtype = torch.promote_types(calls[0].items[0][0].dtype, calls[0].items[2][0].dtype)
    scores, history = _pad_tick(calls)
    # Both score tensors in one transfer; no copy at all on the CPU in float64 (the pipeline's).
    scores, history = scores.to(device=device, dtype=s_dtype), history.to(device=device, dtype=h_dtype)
    s_before, s_after = scores[0], scores[1]
    _, v, c = s_before.shape
    # The kernel holds an image in registers (V <= 16, C <= 64); beyond that the torch reference.
    fn = mine_fused if v <= MAX_VIEWS and c <= MAX_CANDIDATES else mine
    pick, scores, new_history = _to_host(*fn(s_before, s_after, history, calls[0].params[0]), out_dtype)
    out = []
    for b, call in enumerate(calls):
        n = call.items[0][0].shape[2]
        out.append([(pick[b : b + 1], scores[b : b + 1, :n], new_history[b : b + 1, :n])])
    return out


class Scheduler:
    """Runs step generators for many images with batched model calls.

    Args:
        models: the loaded roles.
        config: ``max_in_flight`` bounds the images whose state is held at once (memory stays
            flat however large the dataset); ``max_batch_items`` bounds the requests of one call.
        execute: how one (batched) call runs; ``calls.run_model`` by default.
    """

    def __init__(self, models: Models, config: EngineConfig, execute: Callable[[Models, ModelCall], Any] = run_model) -> None:
        self.models = models
        self.config = config
        self.execute = execute
        self.stats = TickStats()
        self.inflight: list[_Job] = []
        # called after every model batch with ("role.method", images carried, seconds): a
        # service's metrics hang here without the loop knowing about them
        self.on_batch: Callable[[str, int, float], None] | None = None

    def run(self, jobs: Iterable[tuple[Any, Callable[[], Steps]]]) -> Iterator[tuple[Any, Result | Exception]]:
        """Yield ``(key, Result)`` as images finish (not in input order), or ``(key, error)`` for an
        image whose preparation or steps raised. ``jobs`` yields ``(key, make_steps)``; ``make_steps``
        is called only when the image is admitted, so images are read lazily."""
        pending = iter(jobs)
        exhausted = False
        while self.inflight or not exhausted:
            while not exhausted and self.has_room():
                try:
                    key, make = next(pending)
                except StopIteration:
                    exhausted = True
                    break
                done = self.admit(key, make)
                if done is not None:
                    yield done
            if self.inflight:
                yield from self.step()

    def has_room(self) -> bool:
        """Whether another image may be admitted (``max_in_flight``)."""
        return len(self.inflight) < self.config.max_in_flight

    def admit(self, key: Any, make: Callable[[], Steps]) -> tuple[Any, Result | Exception] | None:
        """Start an image: its steps run up to their first model call, which joins the next tick.
        Returns ``(key, outcome)`` if it finished or failed before any call, else None."""
        job = _Job(key, None)
        try:
            job.steps = make()
            job.call = next(job.steps)
        except StopIteration as done:
            return key, done.value
        except Exception as err:  # one image's failure is that image's result
            return key, err
        self.inflight.append(job)
        return None

    def drop(self, key: Any) -> bool:
        """Take an image out of flight (its caller gave up): its state is freed, and it joins no
        further call. Returns whether it was in flight."""
        for job in self.inflight:
            if job.key == key:
                self.inflight.remove(job)
                job.steps.close()
                return True
        return False

    def step(self) -> list[tuple[Any, Result | Exception]]:
        """One tick: decide which calls run (``_decide``), execute each as one batch, advance every
        image it carried. Returns the images that finished, as ``(key, outcome)``."""
        self.stats.ticks += 1
        finished = []
        for chunk in self._decide(self.inflight):
            for job, reply in self._run_group(chunk):
                outcome = self._advance(job, reply)
                if outcome is not None:
                    finished.append((job, outcome))
        if self.config.trim_heap:
            trim_heap()
        for job, _ in finished:
            self.inflight.remove(job)
        return [(job.key, outcome) for job, outcome in finished]

    def _decide(self, inflight: list[_Job]) -> list[list[_Job]]:
        """The tick's batches: the images waiting at the earliest call in ``CALL_ORDER``, grouped
        by call key (role, method, params) and chunked to ``max_batch_items`` requests."""
        first = min(RANK[(j.call.role, j.call.method)] for j in inflight)
        groups: OrderedDict[tuple, list[_Job]] = OrderedDict()
        for job in inflight:
            if RANK[(job.call.role, job.call.method)] == first:
                groups.setdefault(job.call.key, []).append(job)
        return [chunk for jobs in groups.values() for chunk in self._chunks(jobs)]

    def _chunks(self, jobs: list[_Job]) -> list[list[_Job]]:
        """Split a group so that no call carries more than ``max_batch_items`` requests."""
        out, cur, n = [], [], 0
        for job in jobs:
            if cur and n + job.call.size > self.config.max_batch_items:
                out.append(cur)
                cur, n = [], 0
            cur.append(job)
            n += job.call.size
        return out + [cur] if cur else out

    def _run_group(self, jobs: list[_Job]) -> list[tuple[_Job, Reply | Exception]]:
        first = jobs[0].call
        device = self.config.models.sync_device
        cuda_sync(device)
        t0 = time.perf_counter()
        try:
            if first.role == "mine":
                results = mine_batch([j.call for j in jobs], mining_device(self.config))
                self.stats.count(first, requests=len(jobs))  # one launch, one request per image
            else:
                merged = ModelCall(first.stage, first.role, first.method,
                                   tuple(concat([j.call.items[i] for j in jobs]) for i in range(len(first.items))), first.params)
                with call_range(merged):
                    results = split(self.execute(self.models, merged), [j.call.size for j in jobs])
                self.stats.count(merged)
            cuda_sync(device)
        except Exception:
            if len(jobs) == 1:
                raise
            return [(job, reply) for sub in ([j] for j in jobs) for job, reply in self._run_isolated(sub[0])]
        elapsed = time.perf_counter() - t0
        if self.on_batch is not None:
            self.on_batch(f"{first.role}.{first.method}", len(jobs), elapsed)
        total = sum(j.call.size for j in jobs) or 1
        return [(j, Reply(r, elapsed * j.call.size / total)) for j, r in zip(jobs, results)]

    def _run_isolated(self, job: _Job) -> list[tuple[_Job, Reply | Exception]]:
        """After a batch failed: this image alone, so that only a failing image fails."""
        try:
            return self._run_group([job])
        except Exception as err:
            return [(job, err)]

    @staticmethod
    def _advance(job: _Job, reply: Reply | Exception) -> Result | Exception | None:
        try:
            job.call = job.steps.throw(reply) if isinstance(reply, Exception) else job.steps.send(reply)
            return None
        except StopIteration as done:
            return done.value
        except Exception as err:
            return err
