"""Time negative mining: ``int_engine.mining.mine`` (torch, ~20 launches) vs ``mine_fused`` (one
Triton launch) on CUDA, median of N runs per [B, V, C] tick shape, and the ratio.

    python -m int_engine.bench.mine_kernel [--runs 200] [--shape 256x16x64 ...] [--dtype float32]

Without a CUDA GPU it says so and exits 0 (the Triton kernel's CPU interpreter is a
correctness tool, not something to time).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Callable

import torch

from int_engine.kernels import mine_fused
from int_engine.mining import mine

DEFAULT_SHAPES = ("1x4x8", "16x9x16", "64x9x16", "256x16x64", "4096x9x16")


def make_tick(b: int, v: int, c: int, dtype: torch.dtype, device: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random scores float [B, V, C] with -inf candidate padding and a few padded views; W [B, C]."""
    gen = torch.Generator().manual_seed(seed)
    s_before = torch.randn(b, v, c, generator=gen, dtype=torch.float64) * 3
    s_after = s_before + torch.randn(b, v, c, generator=gen, dtype=torch.float64)
    n_valid = torch.randint(1, c + 1, (b, 1, 1), generator=gen)
    pad = torch.arange(c).view(1, 1, c) >= n_valid
    pad = pad | (torch.rand(b, v, 1, generator=gen) < 0.1)
    s_before = s_before.masked_fill(pad, float("-inf"))
    s_after = s_after.masked_fill(pad, float("-inf"))
    history = torch.rand(b, c, generator=gen, dtype=torch.float64) + 1e-3
    return tuple(t.to(device=device, dtype=dtype) for t in (s_before, s_after, history))


def median_ms(fn: Callable[[], object], runs: int, warmup: int = 5) -> float:
    """Median wall time of ``fn`` in milliseconds, each run bracketed by CUDA events."""
    for _ in range(warmup):  # the first mine_fused call per shape compiles the kernel
        fn()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        b, v, c = (int(x) for x in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--shape expects BxVxC (e.g. 256x16x64), got {text!r}") from err
    return b, v, c


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="timed runs per shape (median reported)")
    parser.add_argument("--shape", type=parse_shape, action="append", help="BxVxC tick shape (repeatable)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/mine_kernel.py: needs a CUDA GPU to time the Triton kernel; none found, nothing timed.")
        return 0

    dtype = getattr(torch, args.dtype)
    shapes = args.shape or [parse_shape(s) for s in DEFAULT_SHAPES]
    print(f"device: {torch.cuda.get_device_name()}  dtype: {args.dtype}  runs: {args.runs}")
    print(f"{'B x V x C':>14} {'mine ms':>10} {'fused ms':>10} {'ratio':>7}  max |diff|  picks equal")
    for b, v, c in shapes:
        sb, sa, hist = make_tick(b, v, c, dtype, "cuda")
        ref = mine(sb, sa, hist)
        got = mine_fused(sb, sa, hist)
        diff = max((g - r).abs().max().item() for g, r in zip(got[1:], ref[1:]))
        t_ref = median_ms(lambda: mine(sb, sa, hist), args.runs)
        t_fused = median_ms(lambda: mine_fused(sb, sa, hist), args.runs)
        print(
            f"{f'{b}x{v}x{c}':>14} {t_ref:10.4f} {t_fused:10.4f} {t_ref / t_fused:6.1f}x  {diff:10.2e}  "
            f"{torch.equal(got[0], ref[0])}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
