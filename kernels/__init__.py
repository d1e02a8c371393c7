"""int_engine.kernels: fused GPU kernels and their torch fallbacks.

``mine_fused`` is negative mining (SPEC.md step 6) as one Triton kernel over a tick's padded
[B, V, C] scores; it matches ``int_engine.mining.mine`` to 1e-6 and falls back to it on CPU
(unless TRITON_INTERPRET=1, which runs the kernel through Triton's interpreter). ``TickMiner``
is the engine's ``Miner`` role: a scheduler tick's images padded into one such launch.
"""

from .mine_fused import MAX_CANDIDATES, MAX_VIEWS, mine_fused, uses_triton
from .miner import TickMiner

__all__ = ["MAX_CANDIDATES", "MAX_VIEWS", "TickMiner", "mine_fused", "uses_triton"]
