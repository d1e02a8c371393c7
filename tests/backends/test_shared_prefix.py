"""Scoring on a shared prefix (engine/backends/llava_prefix.py) in the transformers backend: the
rows of one (image, prompt) run the prefix once and their answers on its KV cache, with the
scores of the full teacher-forced sequences, on the tiny LLaVA (tests/backends/test_vlm_hf.py's model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from llava_reference import head_means

from int_engine.backends.llava_prefix import SharedPrefixCache, prefix_groups, prefix_passes
from int_engine.backends.vlm_hf import HFLlavaVLM
from int_engine.config import ModelsConfig, RoleConfig
from int_engine.errors import ConfigError
from int_engine.models.load import check_options

PROMPT_A = "Output the name of the camouflaged animal and its environment in one word."
PROMPT_B = "This image pertains to the camouflaged animal detection task, output the bounding box of the camouflaged animal."
# Candidates of 1 to ~20 tokens (the tiny tokenizer's pieces), a lone letter among them.
CANDIDATES = ["frog", "a green lizard", "seahorse, coral reef", "owl on a branch of a tree", "x", "[0.12, 0.30, 0.55, 0.91]"]


@pytest.fixture(scope="module")
def tiny_dir(tiny_model) -> Path:
    return tiny_model("vlm")


@pytest.fixture(scope="module")
def shared(tiny_dir) -> HFLlavaVLM:
    return HFLlavaVLM.load(tiny_dir)


@pytest.fixture(scope="module")
def full(tiny_dir) -> HFLlavaVLM:
    return HFLlavaVLM.load(tiny_dir, shared_prefix=False)


@pytest.fixture(scope="module")
def views() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(56, 56), (80, 120), (200, 90), (33, 47)]]


def call(views, prompts=(PROMPT_A, PROMPT_B), candidates=CANDIDATES, seed=0):
    """Every view x prompt x candidate, shuffled: rows of a prefix are not adjacent."""
    rows = [(v, p, c) for v in views for p in prompts for c in candidates]
    order = np.random.default_rng(seed).permutation(len(rows))
    return tuple(list(x) for x in zip(*(rows[j] for j in order)))


def test_scores_equal_the_full_sequences_in_float32(shared, full, views):
    images, prompts, answers = call(views)
    lengths = full._answer_lengths(
        [full.chat_text(p) for p in prompts], [full.score_text(p, a) for p, a in zip(prompts, answers)]
    )
    assert min(lengths) == 1 and len(set(lengths)) >= 5  # answers of different token lengths
    want, got = full.score(images, prompts, answers), shared.score(images, prompts, answers)
    assert got.dtype == np.float32 and np.ptp(want) > 0.5
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    print(f"\nshared vs full, {len(answers)} rows: max |diff| {np.abs(got - want).max():.2e}")
    # one pass of 8 prefixes (4 views x 2 prompts) of two lengths, left padded
    assert shared.last_stats["prefix_tokens"] < full.last_stats["prefix_tokens"] / 5


@pytest.mark.parametrize("options", [{"max_batch_size": 2}, {"max_batch_tokens": 100}, {"max_batch_tokens": 1}])
def test_equal_in_passes_that_split_prefixes(tiny_dir, full, views, options):
    """Small budgets: prefixes cut between passes (and computed in each), one row per pass."""
    images, prompts, answers = call(views[:2], seed=1)
    small = HFLlavaVLM.load(tiny_dir, **options)
    np.testing.assert_allclose(small.score(images, prompts, answers), full.score(images, prompts, answers), rtol=0, atol=1e-5)


def test_prefix_tokens_fall_by_the_candidates_per_prefix(shared, full, views):
    """The engine's call: views x {before, after} x C candidates, one prompt; prefix tokens
    computed per call fall by the mean candidates per (image, prompt)."""
    rng = np.random.default_rng(2)
    pairs = [v for v in views[:3] for v in (v, rng.permutation(v))]  # before / after inpainting
    images, prompts, answers = call(pairs, prompts=(PROMPT_A,), candidates=CANDIDATES[:4])
    want, got = full.score(images, prompts, answers), shared.score(images, prompts, answers)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    before, after = full.last_stats, shared.last_stats
    per_prefix = len(answers) / len(pairs)  # 4 candidates per (image, prompt)
    assert before["prefix_tokens"] / after["prefix_tokens"] >= per_prefix
    assert before["prefix_tokens"] == per_prefix * after["prefix_tokens"]  # one pass: each prefix once
    assert after["answer_tokens"] == before["answer_tokens"] - len(answers)  # the last token is never fed
    assert after["rows"] == before["rows"] == len(answers) and after["calls"] == 1
    calls = shared.stats["calls"]
    shared.score(images[:2], prompts[:2], answers[:2])
    assert shared.stats["calls"] == calls + 1 and shared.last_stats["rows"] == 2


def test_same_pixels_in_another_array_are_another_prefix(shared, full, views):
    images = [views[0], views[0].copy(), views[0]]
    prompts, answers = [PROMPT_A] * 3, ["frog", "a green lizard", "owl"]
    np.testing.assert_allclose(shared.score(images, prompts, answers), full.score(images, prompts, answers), atol=1e-5)
    texts = [shared.score_text(p, a) for p, a in zip(prompts, answers)]
    ids, lengths = shared.token_ids(texts), shared._answer_lengths([shared.chat_text(p) for p in prompts], texts)
    assert prefix_groups(images, ids, lengths) == [[0, 2], [1]]  # by identity, as distinct_rows


def test_bfloat16_close_to_the_full_sequences(tiny_dir, views):
    images, prompts, answers = call(views[:2])
    low_full = HFLlavaVLM.load(tiny_dir, dtype="bfloat16", shared_prefix=False)
    low = HFLlavaVLM.load(tiny_dir, dtype="bfloat16")
    np.testing.assert_allclose(low.score(images, prompts, answers), low_full.score(images, prompts, answers), atol=0.05)


def test_bfloat16_scores_take_a_float32_head_on_the_bfloat16_hidden_states(tiny_dir, views):
    """The shared-prefix path: the prefix pass's last hidden state gives the answer's first token,
    the answer pass's the others; both through the head in float32 on the bfloat16 states
    (measured: within 1e-6 of the float32 head, 1.0e-3 to 1.5e-3 from the bfloat16 head)."""
    low = HFLlavaVLM.load(tiny_dir, dtype="bfloat16")
    head = low.model.lm_head.weight
    hidden = []
    hook = low.model.model.language_model.register_forward_hook(lambda m, i, out: hidden.append(out.last_hidden_state))
    try:
        for answer in ("owl on a branch", "a green lizard", "seahorse, coral reef"):  # more than one token each
            hidden.clear()
            got = low.score([views[0]], [PROMPT_A], [answer])[0]
            prefix, answers = hidden  # [1, P, H], then [1, n - 1, H]
            text = low.score_text(PROMPT_A, answer)
            (n,) = low._answer_lengths([low.chat_text(PROMPT_A)], [text])
            assert answers.shape[1] == n - 1 and prefix.dtype == answers.dtype == head.dtype == torch.bfloat16
            states = torch.cat([prefix[0, -1:], answers[0]])  # [n, H]: the positions that predict the answer
            targets = torch.tensor(low.token_ids([text])[0][-n:])
            f32, bf16 = head_means(states, head, targets)
            assert abs(got - f32) < 1e-5, (answer, got, f32)
            assert abs(got - bf16) > 5e-4, (answer, got, bf16)
    finally:
        hook.remove()


def test_prefix_passes_keep_groups_whole_within_the_budget():
    groups, plen = [[0, 1, 2], [3, 4], [5, 6, 7, 8]], [10, 12, 10]
    lengths = [2] * 9
    # everything fits: one pass
    assert prefix_passes(groups, plen, lengths) == [[[0, 1, 2], [3, 4]] + [[5, 6, 7, 8]]]
    # 5 rows of 14 tokens: the third group goes whole into a fresh pass, not split
    assert prefix_passes(groups, plen, lengths, max_tokens=70) == [[[0, 1, 2], [3, 4]], [[5, 6, 7, 8]]]
    # a group over the budget is split, its rows in order; a split group's tail shares a pass
    assert prefix_passes(groups, plen, lengths, max_tokens=24) == [[[0, 1]], [[2]], [[3]], [[4]], [[5, 6]], [[7, 8]]]
    assert prefix_passes(groups, plen, lengths, max_tokens=40) == [[[0, 1, 2]], [[3, 4]], [[5, 6, 7]], [[8]]]
    assert prefix_passes([[0, 1, 2], [3]], [10, 10], [2] * 4, max_tokens=24) == [[[0, 1]], [[2], [3]]]
    assert prefix_passes(groups, plen, lengths, max_rows=2) == [[[0, 1]], [[2]], [[3, 4]], [[5, 6]], [[7, 8]]]
    # the longest answer of the pass counts: rows x (longest prefix + longest answer)
    assert prefix_passes([[0, 1]], [10], [2, 10], max_tokens=39) == [[[0]], [[1]]]
    assert prefix_passes([], [], []) == []


def test_shared_prefix_cache_reads_each_rows_prefix_and_stores_nothing():
    from transformers import DynamicCache

    prefix = DynamicCache()
    keys = [torch.randn(2, 3, 5, 4) for _ in range(2)]  # 2 layers, 2 prefixes, 3 heads, 5 positions
    for layer, k in enumerate(keys):
        prefix.update(k, -k, layer)
    cache = SharedPrefixCache(prefix, [(0, slice(0, 3)), (1, slice(3, 4))])
    new = torch.randn(4, 3, 2, 4)  # rows 0-2 continue prefix 0, row 3 prefix 1
    got_k, got_v = cache.update(new, -new, 1)
    assert got_k.shape == (4, 3, 7, 4)
    assert torch.equal(got_k[:3, :, :5], keys[1][0].expand(3, 3, 5, 4)) and torch.equal(got_k[3, :, :5], keys[1][1])
    assert torch.equal(got_k[:, :, 5:], new) and torch.equal(got_v, -got_k)
    assert cache.get_seq_length(1) == 5 and cache.get_mask_sizes(2, 1) == (7, 0)
    assert cache.layers[1].keys is prefix.layers[1].keys  # the prefixes' own tensors, not copies


def test_shared_prefix_is_a_checked_option(tiny_dir):
    assert HFLlavaVLM.option_types()["shared_prefix"] is bool
    cfg = ModelsConfig()
    cfg.vlm = RoleConfig("hf", options={"shared_prefix": False})
    check_options(cfg)
    cfg.vlm = RoleConfig("hf", options={"shared_prefix": "no"})
    with pytest.raises(ConfigError, match="shared_prefix"):
        check_options(cfg)
    assert HFLlavaVLM.load(tiny_dir, shared_prefix=False).shared_prefix is False
