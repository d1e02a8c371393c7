"""The vLLM Qwen-VL backend (engine/backends/vlm_qwen_vllm.py) against the transformers one
(vlm_qwen.py) on the tiny random Qwen2.5-VL and Qwen3-VL checkpoints (engine/models/tiny_qwen.py):
the same ids run, the same greedy answers (boxes in the engine's frame), the same scores, one
engine call per batch, batch == one-by-one.

vLLM is an optional extra; the tests that start an engine are skipped without it. One engine per
family serves the module (the family fixture is module-scoped and parametrised, so the first
family's engine is closed before the second's starts: one in-process engine at a time).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import vllm_helpers
from vllm_helpers import PROMPT_A, engine_runs, needs_vllm, vllm_environment

from int_engine.backends.qwen_boxes import engine_box_text
from int_engine.backends.vlm_qwen import HFQwenVLM
from int_engine.backends.vlm_qwen_vllm import VLLMQwenVLM
from int_engine.errors import ConfigError, ModelLoadError
from int_engine.models import tiny_qwen

FAMILIES = ["qwen2_5_vl", "qwen3_vl"]
PROMPT_B = "Output the bounding box of the camouflaged animal."
RNG = np.random.RandomState(0)
# different sizes and aspects: different token grids and rotary positions
IMAGES = [RNG.randint(0, 256, shape, dtype=np.uint8) for shape in [(90, 130, 3), (120, 60, 3), (64, 64, 3)]]
# Small engine: no torch.compile (start-up seconds, not a minute), a 64 MiB KV cache, blocks of
# 32 tokens (the CPU attention's unit) so that rows about one view (~40-60 tokens) share a block.
TINY_ENGINE = {"enforce_eager": True, "kv_cache_memory_bytes": 64 << 20, "block_size": 32, "max_model_len": 512}
SCORE_ATOL = 1e-4  # measured in float32 over 40 rows: 1.7e-5 (Qwen2.5-VL), 7.6e-6 (Qwen3-VL)


@pytest.fixture(scope="module")
def vllm_env(tmp_path_factory):
    """vLLM's caches under the engine's cache root, its RPC files in a temporary directory, usage
    stats off (``vllm_helpers.vllm_environment``)."""
    with vllm_environment(tmp_path_factory.mktemp("vllm_rpc")):
        yield


@pytest.fixture(scope="module", params=FAMILIES)
def checkpoint(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    tiny_qwen.build(out, family=request.param)
    return out


@pytest.fixture(scope="module")
def hf(checkpoint) -> HFQwenVLM:
    return HFQwenVLM.load(checkpoint, max_batch_tokens=None)


@pytest.fixture(scope="module")
def engine(checkpoint, vllm_env):
    """(backend, torch threads before it started)."""
    threads = torch.get_num_threads()
    vlm = VLLMQwenVLM.load(checkpoint, **TINY_ENGINE)
    yield vlm, threads
    vlm.close()


@pytest.fixture(scope="module")
def vlm(engine) -> VLLMQwenVLM:
    return engine[0]


@pytest.fixture
def runs(vlm, monkeypatch):
    """The outputs of each call that reaches vLLM's ``LLM.generate``, one list per call."""
    return engine_runs(vlm, monkeypatch)


# ---- equal to the transformers backend -------------------------------------------------------


@needs_vllm
def test_load_gives_a_vlm_and_leaves_process_state(engine, hf):
    vlm, threads_before = engine
    vllm_helpers.check_process_state_kept(vlm, threads_before)
    assert vlm.family == hf.family == hf.model.config.model_type
    config = vlm.llm.llm_engine.vllm_config
    assert config.model_config.hf_config.model_type == vlm.family
    mm = config.model_config.multimodal_config
    assert mm.get_limit_per_prompt("image") == 1 and mm.get_limit_per_prompt("video") == 0
    assert config.cache_config.enable_prefix_caching and vlm.prefix_caching


@needs_vllm
def test_generate_equals_transformers_in_one_call(vlm, hf, runs):
    images = IMAGES + IMAGES[:1]
    prompts = [PROMPT_A, PROMPT_B, PROMPT_A, PROMPT_B]
    got = vllm_helpers.check_generate_matches(vlm, hf, images, prompts, runs, 10)
    # batch == one by one
    assert [vlm.generate([im], [p], 10)[0] for im, p in zip(images, prompts)] == got


@needs_vllm
def test_sampling_uses_one_seed_per_request(vlm):
    vllm_helpers.check_seeded_sampling(vlm, IMAGES + IMAGES[:1], [PROMPT_A, PROMPT_B, PROMPT_A, PROMPT_B], [3, 4, 5, 6])


@needs_vllm
def test_score_equals_transformers_in_one_call(vlm, hf, runs):
    images = IMAGES * 2
    prompts = [PROMPT_A, PROMPT_B, PROMPT_A, PROMPT_B, PROMPT_A, PROMPT_A]
    answers = ["frog", '{"bbox_2d": [12, 30, 55, 91]}', "the chameleon on a branch of the tree", " leaf ", "moth", "sand"]
    got = vllm_helpers.check_scores_match(vlm, hf, (images, prompts, answers), runs, SCORE_ATOL)
    one_by_one = np.concatenate([vlm.score([im], [p], [a]) for im, p, a in zip(images, prompts, answers)])
    np.testing.assert_allclose(one_by_one, got, atol=1e-5, rtol=0)


@needs_vllm
def test_the_engine_runs_the_transformers_ids(vlm, hf, runs):
    """The ids vLLM ran, its processor having expanded the one ``<|image_pad|>``, are the ids the
    transformers backend feeds its model: the prompt's with the image's merged patches, then the
    answer's own tokens."""
    prompts, answers = [PROMPT_A, PROMPT_B, PROMPT_A], ["frog", "a green lizard", "owl"]
    vlm.generate(IMAGES, prompts, 2)
    vlm.score(IMAGES, prompts, answers)
    prefixes = hf.prompt_ids(IMAGES, [hf.chat_text(p) for p in prompts])
    assert [list(o.prompt_token_ids) for o in runs[0]] == prefixes
    assert [list(o.prompt_token_ids) for o in runs[1]] == [p + a for p, a in zip(prefixes, hf.answer_ids(answers))]
    image_id = hf.model.config.image_token_id
    counts = [list(o.prompt_token_ids).count(image_id) for o in runs[0]]
    assert counts == [hf.image_token_count(im) for im in IMAGES] and len(set(counts)) > 1


@needs_vllm
def test_cache_hit_into_the_answer_is_rescored(vlm, hf, runs):
    """A request seen before hits the prefix cache past its prompt, where vLLM computes no
    log-probs: the backend notices and scores it again without the cache."""
    vllm_helpers.check_cache_hit_rescored(vlm, hf, IMAGES[1], PROMPT_B, runs, SCORE_ATOL)


@needs_vllm
def test_bad_requests_raise(vlm, checkpoint):
    vllm_helpers.check_bad_requests(vlm, IMAGES)
    with pytest.raises(ConfigError, match="another in-process vLLM engine"):
        VLLMQwenVLM.load(checkpoint, **TINY_ENGINE)


# ---- without an engine -----------------------------------------------------------------------


class FakeLLM:
    """Answers every request with the ids of ``text`` (what ``_run`` and ``generate`` read)."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    def generate(self, requests, params, use_tqdm=False):
        out = SimpleNamespace(token_ids=self.ids)
        return [SimpleNamespace(outputs=[out], prompt_token_ids=r["prompt_token_ids"], num_cached_tokens=0) for r in requests]


@needs_vllm
def test_generate_writes_boxes_in_the_engine_frame(checkpoint):
    """The model's box (Qwen2.5-VL: pixels of its resized input; Qwen3-VL: 0-1000) comes back in
    the engine's frame, per view, as the transformers backend writes it; "native" leaves it."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(checkpoint, local_files_only=True)
    family = json.loads((checkpoint / "config.json").read_text())["model_type"]
    text = '```json\n[{"bbox_2d": [10, 20, 30, 40], "label": "frog"}]\n```'
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    fake = FakeLLM(ids + [processor.tokenizer.convert_tokens_to_ids("<|im_end|>")])
    vlm = VLLMQwenVLM(fake, processor, family, prefix_caching=False)
    got = vlm.generate(IMAGES, [PROMPT_B] * 3, 32)
    assert got == [engine_box_text(text, family, im.shape[1], im.shape[0], vlm.input_size(im)) for im in IMAGES]
    assert len(set(got)) == 3 and all('"bbox": [0.' in g for g in got)
    native = VLLMQwenVLM(fake, processor, family, prefix_caching=False, box_frame="native")
    assert native.generate(IMAGES, [PROMPT_B] * 3, 32) == [text] * 3


def test_missing_directory_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelLoadError, match=f"vlm: model path {missing} does not exist"):
        VLLMQwenVLM.load(missing)


def test_bad_options_and_other_models_are_refused_before_vllm_starts(tmp_path):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ModelLoadError, match="model_type 'llava'"):
        VLLMQwenVLM.load(tmp_path)
    with pytest.raises(ConfigError, match="beam_width"):
        VLLMQwenVLM.load(tmp_path, beam_width=4)
    with pytest.raises(ConfigError, match="dtype"):
        VLLMQwenVLM.load(tmp_path, dtype="int3")
    with pytest.raises(ConfigError, match="box_frame"):
        VLLMQwenVLM.load(tmp_path, box_frame="pixels")


@needs_vllm
def test_options_are_engine_args_plus_ours():
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs

    kinds = VLLMQwenVLM.option_types()
    names = {f.name for f in dataclasses.fields(EngineArgs) if not f.name.startswith("_")} - {"model", "tokenizer", "dtype"}
    assert set(kinds) == names | {"multiprocessing", "box_frame"}
    assert kinds["box_frame"] is str and kinds["multiprocessing"] is bool
