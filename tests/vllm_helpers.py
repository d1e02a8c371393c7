"""What the vLLM VLM backends' tests share (tests/backends/test_vlm_vllm.py, test_vlm_qwen_vllm.py,
test_vlm_openai.py): the skip without vLLM, vLLM's environment, a spy on the engine's calls, and
the checks each backend must pass against its reference backend (transformers, or the in-process
engine): the same answers and scores in one engine call, seeded sampling per request, a prefix-cache
hit into an answer scored again, the protocol's request errors, the process state kept at load.
"""

from __future__ import annotations

import importlib.util
import os
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pytest
import torch

from int_engine.protocols import VLM

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed (pip install 'int-engine[vllm]')")

PROMPT_A = "Output the name of the camouflaged animal and its environment in one word."
# Long enough to hit the prefix cache past the prompt when sent again (cached blocks of 32 tokens).
LONG_ANSWER = "the chameleon on a branch of the tree, green leaves and brown bark around it, " * 2


@contextmanager
def vllm_environment(rpc_dir: Path) -> Iterator[None]:
    """Keep vLLM's files out of $HOME, its usage stats off the network. Its caches go under the
    engine's cache root so that they outlive the session: a cold model-info cache costs ~30-50 s
    (vLLM inspects the model class in a fresh subprocess), a cold inductor cache ~10 s (the C++
    log-prob kernel). Its RPC files go in ``rpc_dir``."""
    from int_engine.models.cache import cache_root

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CACHE_ROOT", os.environ.get("VLLM_CACHE_ROOT") or str(cache_root() / "vllm"))
        mp.setenv("TORCHINDUCTOR_CACHE_DIR", os.environ.get("TORCHINDUCTOR_CACHE_DIR") or str(cache_root() / "inductor"))
        mp.setenv("VLLM_RPC_BASE_PATH", str(rpc_dir))
        mp.setenv("VLLM_NO_USAGE_STATS", "1")
        mp.setenv("VLLM_DO_NOT_TRACK", "1")
        yield


def engine_runs(vlm: Any, monkeypatch: pytest.MonkeyPatch) -> list[list]:
    """The outputs of each call that reaches ``vlm.llm.generate`` (vLLM's ``LLM.generate``), one
    list per call, from now until the test ends."""
    calls: list[list] = []
    real = vlm.llm.generate

    def spy(requests, params, **kwargs):
        calls.append(real(requests, params, **kwargs))
        return calls[-1]

    monkeypatch.setattr(vlm.llm, "generate", spy)
    return calls


def check_process_state_kept(vlm: Any, threads_before: int) -> None:
    """A ``VLM`` in float32, and vLLM's in-process CPU worker's changes undone: it replaces
    ``torch.set_num_threads`` with a no-op and drops the thread count to 1; load puts both back."""
    assert isinstance(vlm, VLM)
    assert vlm.llm.model_config.dtype == torch.float32
    assert isinstance(torch.set_num_threads, types.BuiltinFunctionType)
    assert torch.get_num_threads() == threads_before


def check_generate_matches(
    vlm: Any, reference: Any, images: list[np.ndarray], prompts: list[str], runs: list[list], max_new_tokens: int
) -> list[str]:
    """``vlm`` answers as ``reference`` does, all rows in one engine call, nothing sent for an
    empty request; its answers."""
    want = reference.generate(images, prompts, max_new_tokens)
    got = vlm.generate(images, prompts, max_new_tokens)
    assert got == want
    assert any(got) and len(set(got)) > 1  # the random model's answers depend on the request
    assert [len(r) for r in runs] == [len(prompts)]
    assert vlm.generate([], [], 4) == [] and len(runs) == 1
    return got


def check_seeded_sampling(vlm: Any, images: list[np.ndarray], prompts: list[str], seeds: list[int]) -> list[str]:
    """temperature > 0: each request's own seed, so an answer depends on its seed, not its batch;
    sampling without one seed per prompt is refused. The sampled answers."""
    got = vlm.generate(images, prompts, 8, temperature=1.0, seeds=seeds)
    assert got == vlm.generate(images, prompts, 8, temperature=1.0, seeds=seeds)
    assert got[2:] == vlm.generate(images[2:], prompts[2:], 8, temperature=1.0, seeds=seeds[2:])
    assert any(vlm.generate(images, prompts, 8, temperature=1.0, seeds=[s + 50 * k for s in seeds]) != got for k in (1, 2))
    with pytest.raises(ValueError, match="one seed per prompt"):
        vlm.generate(images, prompts, 8, temperature=1.0)
    return got


def check_scores_match(vlm: Any, reference: Any, rows: tuple[list, list, list], runs: list[list], atol: float) -> np.ndarray:
    """``vlm`` scores ``rows`` (images, prompts, answers) as ``reference`` does within ``atol``,
    all rows in one engine call, nothing sent for an empty request; its scores."""
    want = reference.score(*rows)
    got = vlm.score(*rows)
    assert got.dtype == np.float32 and got.shape == (len(rows[2]),)
    assert np.all(np.isfinite(got)) and np.all(got <= 0)
    np.testing.assert_allclose(got, want, atol=atol, rtol=0)
    assert np.ptp(got) > 0.1  # scores that differ, so the comparison means something
    assert [len(r) for r in runs] == [len(rows[2])]
    assert vlm.score([], [], []).shape == (0,) and len(runs) == 1
    return got


def check_cache_hit_rescored(vlm: Any, reference: Any, image: np.ndarray, prompt: str, runs: list[list], atol: float) -> None:
    """A request seen before hits the prefix cache past its prompt, where vLLM computes no
    log-probs: the backend notices and scores that request again without the cache."""
    args = ([image], [prompt], [LONG_ANSWER])
    first = vlm.score(*args)
    again = vlm.score(*args)
    np.testing.assert_allclose(first, reference.score(*args), atol=atol, rtol=0)
    np.testing.assert_allclose(again, first, atol=1e-6, rtol=0)
    assert [len(r) for r in runs] == [1, 1, 1]  # once, then the cache-hit call and its re-score
    assert runs[1][0].num_cached_tokens > 0


def check_bad_requests(vlm: Any, images: Sequence[np.ndarray]) -> None:
    """The protocol's request errors, as ValueError: an empty answer, a prompt count that is not
    the image count, an image that is not uint8 [H, W, 3], ``max_new_tokens`` < 1."""
    with pytest.raises(ValueError, match="answer 1 is empty"):
        vlm.score(images[:2], [PROMPT_A] * 2, ["frog", "  "])
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        vlm.generate(images[:2], [PROMPT_A], 4)
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
        vlm.score([np.zeros((8, 8), np.uint8)], [PROMPT_A], ["frog"])
    with pytest.raises(ValueError, match="max_new_tokens"):
        vlm.generate(images[:1], [PROMPT_A], 0)
