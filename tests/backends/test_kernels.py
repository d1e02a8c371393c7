"""mine_fused (the Triton kernel) against mine (the SPEC step 6 reference), and its dispatch.

On this CPU the kernel runs through Triton's interpreter: ``mine_fused`` wraps the kernel with
``triton.jit`` on first use in each mode, so setting TRITON_INTERPRET=1 per test (the
``interpret`` fixture) is enough, whatever imported triton before. The interpreter runs the
kernel's own combine functions element by element (it has a numpy fast path only for Triton's
private ones): a few milliseconds per reduction per program, so big shapes are few and chosen
to pack many images into one program.
"""

import importlib
import random

import pytest
import torch

from int_engine.kernels import MAX_CANDIDATES, MAX_VIEWS, mine_fused, uses_triton
from int_engine.mining import mine

# The module, not the function of the same name that int_engine.kernels re-exports over it.
mf = importlib.import_module("int_engine.kernels.mine_fused")

NEG = float("-inf")


@pytest.fixture
def interpret(monkeypatch):
    """Run mine_fused's CPU path through the Triton interpreter, and fail if it falls back."""
    if mf.triton is None:
        pytest.skip("triton is not installed (no wheel for this platform): only the torch path exists")
    monkeypatch.setenv("TRITON_INTERPRET", "1")

    def no_fallback(*args, **kwargs):
        raise AssertionError("mine_fused fell back to int_engine.mining.mine under TRITON_INTERPRET=1")

    monkeypatch.setattr(mf, "mine", no_fallback)


def assert_matches(s_before, s_after, history, eps=1e-3):
    """mine_fused == mine: pick exactly, same dtypes, scores and new_history to 1e-6.

    float64: elementwise to 1e-6. float32: d = softmax - softmax cancels, so D carries ~1e-7
    absolute error in any implementation (exp and summation order differ between torch, numpy
    and the GPU); the 1e-6 holds for D = scores / W, and for new_history once the division by
    the image's total Σ_c Ď is undone (|Δ new| · Σ Ď <= |Δ Ď| + |Δ Σ Ď| <= 2e-6 · Σ_c W).
    """
    got = mine_fused(s_before, s_after, history, eps)
    want = mine(s_before, s_after, history, eps)
    assert got[0].dtype == torch.int64 and got[0].shape == want[0].shape
    assert torch.equal(got[0], want[0]), f"pick {got[0].tolist()} != {want[0].tolist()}"
    for name, g, w in zip(("scores", "new_history"), got[1:], want[1:]):
        assert g.dtype == w.dtype and g.shape == w.shape, f"{name}: {g.dtype}{tuple(g.shape)} vs {w.dtype}{tuple(w.shape)}"
    if want[1].dtype == torch.float64 and s_before.dtype == torch.float64:
        for name, g, w in zip(("scores", "new_history"), got[1:], want[1:]):
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6, msg=lambda m: f"{name}: {m}")
    else:
        h = history.double().abs()
        d_err = (got[1].double() - want[1].double()).abs()
        assert (d_err <= 1e-6 * h).all(), f"scores / history differ by {(d_err / h.clamp_min(1e-30)).max():.3g}"
        total = want[1].double().sum(-1, keepdim=True)
        n_err = (got[2].double() - want[2].double()).abs() * total.clamp_min(0.0)
        assert (n_err <= 2e-6 * h.sum(-1, keepdim=True) + 1e-12).all(), "new_history differs beyond float32 rounding"
        moved = (total > 0).squeeze(-1)
        assert torch.equal(got[2][~moved], want[2][~moved]), "unmoved images must keep history exactly"
    return got


def random_case(seed, B, V, C, dtype=torch.float32, spread=1.0):
    """Scores with -inf candidate padding (per image), padded views, and a positive history."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    sb = torch.randn(B, V, C, generator=gen, dtype=torch.float64) * 3
    sa = sb + torch.randn(B, V, C, generator=gen, dtype=torch.float64) * spread
    for b in range(B):
        sb[b, :, rng.randint(1, C) :] = NEG
        for v in range(V):
            if V > 1 and rng.random() < 0.2:
                sb[b, v] = NEG
    sa = torch.where(torch.isfinite(sb), sa, torch.full_like(sa, NEG))
    hist = torch.rand(B, C, generator=gen, dtype=torch.float64) + 1e-3
    return sb.to(dtype), sa.to(dtype), hist.to(dtype)


SHAPES = [(1, 1, 1), (3, 1, 5), (1, 6, 1), (5, 4, 7), (7, 9, 13), (2, 16, 3), (4, 3, 33), (9, 2, 8)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_random_ticks_match_mine(interpret, shape, dtype):
    for seed, spread in enumerate((0.3, 2.0)):
        assert_matches(*random_case(seed, *shape, dtype=dtype, spread=spread))


def test_full_tick_b256_c64(interpret):
    # 256 images, the largest C; V=2 packs 8 images per program (keeps the interpreter fast).
    sb, sa, hist = random_case(1, 256, 2, MAX_CANDIDATES)
    hist[::3] = 0.0
    hist[1::5] *= 1e5
    pick, scores, _ = assert_matches(sb, sa, hist)
    assert (scores.sum(-1) > 0).any() and pick.unique().numel() > 10


def test_largest_image_v16_c64_float64(interpret):
    assert_matches(*random_case(2, 3, MAX_VIEWS, MAX_CANDIDATES, dtype=torch.float64))


def test_ties_go_to_the_lowest_index(interpret):
    # Integer scores: many exactly equal differences within a view and across views.
    sb, sa, hist = random_case(3, 16, 5, 6, dtype=torch.float64)
    sb, sa = sb.round(), sa.round()
    hist = torch.ones_like(hist)
    assert_matches(sb, sa, hist)
    # Columns 1 and 3 identical and the largest difference in every view: 1 wins, 3 gets nothing.
    gen = torch.Generator().manual_seed(4)
    sb, sa = torch.randn(6, 4, 5, generator=gen), torch.randn(6, 4, 5, generator=gen)
    sb[:, :, [1, 3]], sa[:, :, [1, 3]] = 5.0, -5.0
    pick, scores, _ = assert_matches(sb, sa, torch.ones(6, 5))
    assert pick.tolist() == [1] * 6 and (scores[:, 1] > 0).all() and (scores[:, 3] == 0).all()


def test_tied_names_across_views_pick_the_lowest_name(interpret):
    # View 0 is [x, y], view 1 is [y, x]: both gain exactly the same, for names 1 and 0.
    sb = torch.tensor([[[0.0, 2.0, NEG, NEG], [2.0, 0.0, NEG, NEG]]], dtype=torch.float64)
    sa = torch.tensor([[[0.0, 0.0, NEG, NEG], [0.0, 0.0, NEG, NEG]]], dtype=torch.float64)
    pick, scores, new_history = assert_matches(sb, sa, torch.ones(1, 4, dtype=torch.float64))
    assert pick.item() == 0 and scores[0, 0] == scores[0, 1] > 0
    assert torch.allclose(new_history[0], torch.tensor([0.501, 0.501, 1e-3, 1e-3], dtype=torch.float64))


def test_all_equal_rows_and_unmoved_views_keep_history(interpret):
    B, V, C = 5, 3, 6
    sb = torch.full((B, V, C), 0.7)
    sb[:, :, 4:] = NEG
    hist = torch.rand(B, C) + 0.5
    for sa in (sb.clone(), torch.where(torch.isfinite(sb), torch.full_like(sb, -2.0), sb)):
        pick, scores, new_history = assert_matches(sb, sa, hist)
        assert pick.tolist() == [0] * B and (scores == 0).all() and torch.equal(new_history, hist)


def test_padded_views_and_candidates(interpret):
    sb, sa, hist = random_case(5, 6, 5, 9)
    sb[0] = NEG  # image 0: every view padded
    sa[0] = NEG
    sb[1, :, 1:] = NEG  # image 1: one candidate
    sa[1, :, 1:] = NEG
    sb[2, 1:] = NEG  # image 2: one view
    sa[2, :, 0] = NEG  # s_after -inf on a valid candidate: softmax over the rest
    sa[3, 0] = torch.where(torch.isfinite(sb[3, 0]), torch.full_like(sa[3, 0], NEG), sa[3, 0])
    pick, scores, new_history = assert_matches(sb, sa, hist)
    assert pick[0] == 0 and (scores[0] == 0).all() and torch.equal(new_history[0], hist[0])
    assert (scores[1] == 0).all()  # one candidate never moves: both softmaxes are 1


def test_zero_and_large_history(interpret):
    sb, sa, _ = random_case(6, 12, 4, 10, spread=2.0)
    hist = torch.rand(12, 10) * 1e6
    hist[:, ::2] = 0.0
    hist[5] = 0.0
    pick, scores, new_history = assert_matches(sb, sa, hist)
    assert torch.equal(new_history[5], hist[5]) and (scores[:, ::2] == 0).all()


@pytest.mark.parametrize("eps", [0.0, 0.25])
def test_eps_and_mixed_dtypes_and_strides(interpret, eps):
    sb, sa, hist = random_case(7, 6, 3, 7)
    assert assert_matches(sb, sa, hist.double(), eps)[1].dtype == torch.float64
    assert assert_matches(sb.double(), sa.double(), hist, eps)[1].dtype == torch.float64
    # Non-contiguous views of the same data: [C, V, B] storage read through transposes.
    sbt, sat = sb.permute(2, 1, 0).contiguous().permute(2, 1, 0), sa.transpose(0, 2).contiguous().transpose(0, 2)
    assert not sbt.is_contiguous()
    assert_matches(sbt, sat, hist.t().contiguous().t(), eps)


def test_empty_batch_and_no_views(interpret):
    assert_matches(torch.zeros(0, 3, 4), torch.zeros(0, 3, 4), torch.zeros(0, 4))
    hist = torch.rand(2, 4)
    pick, scores, new_history = assert_matches(torch.zeros(2, 0, 4), torch.zeros(2, 0, 4), hist)
    assert (scores == 0).all() and torch.equal(new_history, hist)


def test_unsupported_inputs_raise_clearly(interpret):
    ok = torch.zeros(1, 2, 3)
    with pytest.raises(ValueError, match=rf"V <= {MAX_VIEWS}.*got V=17"):
        mine_fused(torch.zeros(1, 17, 3), torch.zeros(1, 17, 3), torch.ones(1, 3))
    with pytest.raises(ValueError, match=rf"C <= {MAX_CANDIDATES}.*C=65"):
        mine_fused(torch.zeros(1, 2, 65), torch.zeros(1, 2, 65), torch.ones(1, 65))
    with pytest.raises(ValueError, match="float32/float64"):
        mine_fused(ok.half(), ok.half(), torch.ones(1, 3))
    with pytest.raises(ValueError, match="float32/float64"):
        mine_fused(ok, ok.double(), torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"history must be \[B, C\]"):
        mine_fused(ok, ok, torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"must both be \[B, V, C\]"):
        mine_fused(ok, ok[0], torch.ones(1, 3))
    with pytest.raises(ValueError, match="C >= 1"):
        mine_fused(torch.zeros(1, 2, 0), torch.zeros(1, 2, 0), torch.ones(1, 0))


def test_cpu_without_interpreter_falls_back_to_mine(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    calls = []

    def spy(*args):
        calls.append(args)
        return mine(*args)

    monkeypatch.setattr(mf, "mine", spy)
    assert not uses_triton("cpu")
    sb, sa, hist = random_case(9, 3, 20, 70)  # beyond the kernel's limits: the reference has none
    got = mine_fused(sb, sa, hist, 0.01)
    assert len(calls) == 1 and calls[0][3] == 0.01
    want = mine(sb, sa, hist, 0.01)
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_negative_weights_still_pick_within_the_candidates(interpret):
    # Not produced by eq 7, but the contract is plain argmax: with every score < 0, the tile's
    # overhang column (C=3 in a 4-wide block) must not win.
    sb = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]]])
    sa = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    pick, scores, new_history = assert_matches(sb, sa, -torch.ones(1, 3))
    assert pick.item() == 2 and (scores < 0).all() and torch.equal(new_history, -torch.ones(1, 3))


def test_interpreter_flag_selects_the_kernel(interpret):
    assert uses_triton("cpu") and uses_triton("cuda")
    assert type(mf._kernel()).__name__ == "InterpretedFunction"


@pytest.mark.parametrize("dtypes, blocks", [(("fp32", "fp32"), (8, 4, 8)), (("fp32", "fp64"), (1, 16, 64))])
def test_kernel_compiles_for_sm90_without_a_gpu(monkeypatch, tmp_path, dtypes, blocks):
    """The interpreter skips Triton's code generator; compile for an H100 (PTX + ptxas) to catch
    what only the compiler rejects. Needs no GPU: the wheel ships ptxas."""
    if mf.triton is None:
        pytest.skip("triton is not installed (no wheel for this platform)")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    if not isinstance(mf._MAX, JITFunction):
        pytest.skip("triton was imported with TRITON_INTERPRET=1: its tl.* helpers are interpreter-only in this process")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    kernel = mf._kernel()
    s_ty, out_ty = dtypes
    pointers = {
        "sb_ptr": s_ty,
        "sa_ptr": s_ty,
        "hist_ptr": out_ty,
        "pick_ptr": "i64",
        "scores_ptr": out_ty,
        "new_hist_ptr": out_ty,
    }
    constexprs = dict(zip(("EPS", "BLOCK_B", "BLOCK_V", "BLOCK_C"), (1e-3, *blocks)))
    signature = {
        name: "*" + pointers[name] if name in pointers else "constexpr" if name in constexprs else "i32"
        for name in kernel.arg_names
    }
    compiled = mf.triton.compile(
        ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}
    )
    assert ".entry _mine_kernel" in compiled.asm["ptx"] and len(compiled.asm["cubin"]) > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the bench times for real; covered by running it")
def test_bench_script_says_it_needs_a_gpu(capsys):
    from int_engine.bench.mine_kernel import main

    assert main(["--runs", "3"]) == 0
    assert "needs a CUDA GPU" in capsys.readouterr().out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled Triton kernel needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_kernel_matches_mine(monkeypatch, dtype):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(mf, "mine", lambda *a: pytest.fail("CUDA tensors must not use the torch fallback"))
    for seed, shape in enumerate([(1, 1, 1), (7, 9, 13), (256, 16, 64), (1000, 4, 8)]):
        sb, sa, hist = (t.cuda() for t in random_case(seed, *shape, dtype=dtype))
        got = mine_fused(sb, sa, hist)
        want = mine(sb.cpu(), sa.cpu(), hist.cpu())
        assert got[0].is_cuda and torch.equal(got[0].cpu(), want[0])
        for g, w in zip(got[1:], want[1:]):
            torch.testing.assert_close(g.cpu(), w, rtol=1e-6, atol=1e-6)
