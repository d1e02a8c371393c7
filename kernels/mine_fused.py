"""Steps 4-6 (eq 3, 5, 6, 7) as one Triton kernel over a whole tick's padded [B, V, C] scores.

``mine_fused`` has the signature and outputs of ``int_engine.mining.mine`` (the contract of
SPEC.md step 6) and agrees with it to 1e-6, with the same pick: elementwise in float64; in
float32 on D = scores / W, since softmax(s_before) - softmax(s_after) cancels and the exp of
the GPU (ex2.approx) or of numpy (interpreter) differs from torch's by ulps. One launch does,
per image:
both masked softmaxes, their difference, the per-view max/argmax, the per-name max over the
views that picked that name, the product with the history W, the normalised update of W and
the per-image argmax. One program handles BLOCK_B images (one when V x C is 16 x 64, more
when the tick is small); its [BLOCK_B, BLOCK_V, BLOCK_C] tile lives in registers, so V and C
are capped (``MAX_VIEWS``, ``MAX_CANDIDATES``).

Dispatch:
    CUDA tensors                      -> the compiled Triton kernel;
    CPU tensors, TRITON_INTERPRET=1   -> the same kernel through Triton's interpreter (CI);
    anything else                     -> ``int_engine.mining.mine``, the torch reference.
TRITON_INTERPRET is read at each call (it may be set after triton was imported); with it set,
CUDA tensors go through the interpreter too (Triton's rule).
"""

from __future__ import annotations

from typing import Any

import torch

from int_engine.mining import mine

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton wheel (macOS, Windows): only the torch reference path is usable
    triton = None
    tl = None
else:
    # The kernel reduces with tl.reduce (a builtin) and these combine functions, not with tl.max /
    # tl.min / tl.sum: those are @triton.jit functions wrapped for the compiler or the interpreter
    # once, when triton is first imported, and called from an interpreted kernel after a
    # compiler-mode import they raise "Cannot call @triton.jit'd outside of the scope of a kernel".
    # tl.reduce calls its combine function's Python body in the interpreter whichever way it was
    # wrapped, and compiles it as a device function: the same code as tl.max / tl.min / tl.sum.

    @triton.jit
    def _max_combine(a, b):
        return tl.maximum(a, b)

    @triton.jit
    def _min_combine(a, b):
        return tl.minimum(a, b)

    @triton.jit
    def _add_combine(a, b):
        return a + b

    _MAX, _MIN, _SUM = _max_combine, _min_combine, _add_combine

MAX_VIEWS = 16
MAX_CANDIDATES = 64
_KERNEL_DTYPES = (torch.float32, torch.float64)
_TILE = MAX_VIEWS * MAX_CANDIDATES  # scores held by one program: B_block * V_block * C_block


def _mine_kernel(
    sb_ptr,
    sa_ptr,
    hist_ptr,
    pick_ptr,
    scores_ptr,
    new_hist_ptr,
    B,
    V,
    C,
    sb_sb,
    sb_sv,
    sb_sc,
    sa_sb,
    sa_sv,
    sa_sc,
    h_sb,
    h_sc,
    o_sb,
    o_sc,
    EPS: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """BLOCK_B images per program: scores tile [BLOCK_B, BLOCK_V, BLOCK_C] -> pick, scores, W.

    Plain function, made a Triton kernel lazily by ``_kernel``: ``triton.jit`` chooses between the
    compiler and the interpreter from TRITON_INTERPRET when it wraps, not when it runs. EPS is a
    constexpr so that it is materialised in the output dtype (a runtime float arg is fp32).
    """
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_v = tl.arange(0, BLOCK_V)
    offs_c = tl.arange(0, BLOCK_C)
    ob3, ov3, oc3 = offs_b[:, None, None], offs_v[None, :, None], offs_c[None, None, :]
    ob2, oc2 = offs_b[:, None], offs_c[None, :]
    in_b = offs_b < B
    in_bc = in_b[:, None] & (oc2 < C)
    in_tile = (ob3 < B) & (ov3 < V) & (oc3 < C)

    sb = tl.load(sb_ptr + ob3 * sb_sb + ov3 * sb_sv + oc3 * sb_sc, mask=in_tile, other=float("-inf"))
    sa = tl.load(sa_ptr + ob3 * sa_sb + ov3 * sa_sv + oc3 * sa_sc, mask=in_tile, other=float("-inf"))
    # valid = isfinite(s_before): -inf pads, and the tile's overhang loads as -inf too.
    valid = (sb == sb) & (sb != float("inf")) & (sb != float("-inf"))
    zero = tl.full([BLOCK_B, BLOCK_V, BLOCK_C], 0.0, dtype=sb.dtype)

    # Masked softmax of s_before over each view's valid candidates (rows with none valid -> 0).
    mb = tl.where(valid, sb, float("-inf"))
    rb = tl.reduce(mb, 2, _MAX)
    rb = tl.where((rb == rb) & (rb != float("inf")) & (rb != float("-inf")), rb, 0.0)
    eb = tl.where(valid, tl.exp(mb - rb[:, :, None]), zero)
    tb = tl.reduce(eb, 2, _SUM)
    pb = eb / tl.where(tb > 0, tb, 1.0)[:, :, None]

    # The same on s_after, with the valid mask of s_before (the contract's padding rule).
    ma = tl.where(valid, sa, float("-inf"))
    ra = tl.reduce(ma, 2, _MAX)
    ra = tl.where((ra == ra) & (ra != float("inf")) & (ra != float("-inf")), ra, 0.0)
    ea = tl.where(valid, tl.exp(ma - ra[:, :, None]), zero)
    ta = tl.reduce(ea, 2, _SUM)
    pa = ea / tl.where(ta > 0, ta, 1.0)[:, :, None]

    # Eq 3 per view: y^k = argmax_c d_k(c), ties to the lowest index; D(y^k) = max(0, d_k(y^k)).
    d = tl.where(valid, pb - pa, float("-inf"))
    d_max = tl.reduce(d, 2, _MAX)
    view_pick = tl.reduce(tl.where(d == d_max[:, :, None], oc3, BLOCK_C), 2, _MIN)
    any_valid = tl.reduce(valid.to(tl.int32), 2, _MAX) > 0
    view_gain = tl.where(any_valid, tl.maximum(d_max, 0.0), 0.0)

    # D_i(c): the largest gain among views whose pick is c (0 if none); padded views add 0.
    hit = view_pick[:, :, None] == oc3
    per_name = tl.reduce(tl.where(hit, view_gain[:, :, None], zero), 1, _MAX)

    # Eq 5-7 in the output dtype (promote(s dtype, history dtype), as torch does in ``mine``).
    out_ty = scores_ptr.dtype.element_ty
    hist = tl.load(hist_ptr + ob2 * h_sb + oc2 * h_sc, mask=in_bc, other=0.0).to(out_ty)
    scores = per_name.to(out_ty) * hist
    total = tl.reduce(scores, 1, _SUM)
    eps = tl.full([BLOCK_B, BLOCK_C], EPS, dtype=out_ty)
    new_hist = tl.where(total[:, None] > 0, eps + scores / tl.where(total > 0, total, 1.0)[:, None], hist)
    ranked = tl.where(oc2 < C, scores, float("-inf"))
    pick = tl.reduce(tl.where(ranked == tl.reduce(ranked, 1, _MAX)[:, None], oc2, BLOCK_C), 1, _MIN)

    tl.store(scores_ptr + ob2 * o_sb + oc2 * o_sc, scores, mask=in_bc)
    tl.store(new_hist_ptr + ob2 * o_sb + oc2 * o_sc, new_hist, mask=in_bc)
    tl.store(pick_ptr + offs_b, pick.to(tl.int64), mask=in_b)


_KERNELS: dict[bool, Any] = {}


def _interpreting() -> bool:
    """Whether Triton would interpret now (TRITON_INTERPRET, parsed by Triton itself)."""
    return triton is not None and bool(triton.knobs.runtime.interpret)


def _kernel() -> Any:
    """The kernel jitted for the current TRITON_INTERPRET mode, wrapped once per mode."""
    interpret = _interpreting()
    if interpret not in _KERNELS:
        _KERNELS[interpret] = triton.jit(_mine_kernel)
    return _KERNELS[interpret]


def uses_triton(device: torch.device | str) -> bool:
    """True when ``mine_fused`` on tensors of ``device`` runs the Triton kernel (else ``mine``)."""
    device = torch.device(device)
    return triton is not None and (device.type == "cuda" or (device.type == "cpu" and _interpreting()))


def _next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def mine_fused(
    s_before: torch.Tensor, s_after: torch.Tensor, history: torch.Tensor, eps: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused negative mining: same arguments, outputs and rules as ``int_engine.mining.mine``.

    Args:
        s_before: float32/float64 [B, V, C] scores on the views, ``-inf`` padding (V <= 16, C <= 64
            on the kernel path).
        s_after: [B, V, C], the same dtype, scores on the inpainted views.
        history: float32/float64 [B, C] running weights W_i.
        eps: the floor ε of the weight update (a kernel constant: one compile per distinct value).

    Returns:
        pick int64 [B]; scores and new_history [B, C] in promote(s_before.dtype, history.dtype),
        which is the input float dtype when they agree.

    Raises:
        ValueError: bad shapes, mixed devices, a dtype or a V/C the kernel does not support.
        RuntimeError: CUDA tensors without Triton installed.
    """
    if s_before.shape != s_after.shape or s_before.dim() != 3:
        raise ValueError(
            f"mine_fused: s_before and s_after must both be [B, V, C], got {tuple(s_before.shape)} and {tuple(s_after.shape)}"
        )
    b, v, c = s_before.shape
    if history.shape != (b, c):
        raise ValueError(f"mine_fused: history must be [B, C] = [{b}, {c}], got {tuple(history.shape)}")
    if c == 0:
        raise ValueError("mine_fused needs at least one candidate column (C >= 1)")
    if not (s_before.device == s_after.device == history.device):
        raise ValueError(
            f"mine_fused: s_before, s_after and history must share a device, got "
            f"{s_before.device}, {s_after.device} and {history.device}"
        )
    if not uses_triton(s_before.device):
        if s_before.device.type == "cuda":
            raise RuntimeError("mine_fused: CUDA tensors need the Triton kernel, but triton is not installed")
        return mine(s_before, s_after, history, eps)

    if s_before.dtype not in _KERNEL_DTYPES or s_after.dtype != s_before.dtype or history.dtype not in _KERNEL_DTYPES:
        raise ValueError(
            f"mine_fused: the Triton kernel takes float32/float64 s_before == s_after dtype and float32/float64 "
            f"history, got {s_before.dtype}, {s_after.dtype} and {history.dtype}"
        )
    if v > MAX_VIEWS or c > MAX_CANDIDATES:
        raise ValueError(
            f"mine_fused: the Triton kernel supports V <= {MAX_VIEWS} views and C <= {MAX_CANDIDATES} candidates "
            f"per image, got V={v}, C={c} (use int_engine.mining.mine for larger ticks)"
        )
    out_dtype = torch.promote_types(s_before.dtype, history.dtype)
    device = s_before.device
    pick = torch.empty((b,), dtype=torch.int64, device=device)
    scores = torch.empty((b, c), dtype=out_dtype, device=device)
    new_history = torch.empty((b, c), dtype=out_dtype, device=device)
    if b == 0:
        return pick, scores, new_history

    block_v, block_c = _next_pow2(v), _next_pow2(c)
    # Pack small images into one program (up to _TILE scores) so that a program has work
    # for its warps; a full 16 x 64 image is a program of its own.
    block_b = min(_next_pow2(b), max(1, _TILE // (block_v * block_c)))
    tile = block_b * block_v * block_c
    num_warps = 1 if tile <= 128 else 2 if tile <= 512 else 4
    _kernel()[(triton.cdiv(b, block_b),)](
        s_before,
        s_after,
        history,
        pick,
        scores,
        new_history,
        b,
        v,
        c,
        *s_before.stride(),
        *s_after.stride(),
        *history.stride(),
        *scores.stride(),
        EPS=float(eps),
        BLOCK_B=block_b,
        BLOCK_V=block_v,
        BLOCK_C=block_c,
        num_warps=num_warps,
    )
    return pick, scores, new_history
