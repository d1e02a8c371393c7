"""The tiny LLaVA-1.5 (engine/models/tiny_vlm.py) and its transformers backend (vlm_hf.py)."""

from __future__ import annotations

import gc
import json
import os
import shutil
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from llava_reference import authors_ids, head_means
from safetensors import safe_open

from int_engine.backends.llava_tokens import ExpandedIds
from int_engine.backends.vlm_hf import HFLlavaVLM
from int_engine.errors import ConfigError, ModelLoadError
from int_engine.models import tiny_vlm
from int_engine.models.zoo import read_manifest
from int_engine.protocols import VLM

PROMPT_A = "Output the name of the camouflaged animal and its environment in one word."
PROMPT_B = "This image pertains to the camouflaged animal detection task, output the bounding box of the camouflaged animal."


@pytest.fixture(scope="module")
def tiny_dir(tiny_zoo, tiny_model) -> Path:
    info = read_manifest(tiny_zoo)["models"]["vlm"]
    assert info["format"] == "llava-hf"
    assert 10_000 < info["params"] < 2_000_000
    return tiny_model("vlm")


@pytest.fixture(scope="module")
def vlm(tiny_dir) -> HFLlavaVLM:
    return HFLlavaVLM.load(tiny_dir)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    # Square, wide and tall, so that resizing and centre-cropping are exercised.
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(56, 56), (80, 120), (200, 90)]]


# ---- the builder: the published on-disk layout ----------------------------------------------


def test_saved_keys_use_published_prefixes(tiny_dir):
    with safe_open(str(tiny_dir / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert f.metadata() == {"format": "pt"}
    assert keys and all(k.startswith(tiny_vlm.PUBLISHED_PREFIXES) for k in keys)
    assert "language_model.lm_head.weight" in keys
    assert "language_model.model.embed_tokens.weight" in keys
    assert "vision_tower.vision_model.encoder.layers.1.self_attn.q_proj.weight" in keys
    assert "multi_modal_projector.linear_2.weight" in keys
    size = sum(p.stat().st_size for p in tiny_dir.iterdir())
    assert size < 5_000_000


def test_config_is_llava15_shaped(tiny_dir):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    assert cfg["model_type"] == "llava" and cfg["architectures"] == ["LlavaForConditionalGeneration"]
    assert cfg["vision_feature_layer"] == -2 and cfg["vision_feature_select_strategy"] == "default"
    assert cfg["projector_hidden_act"] == "gelu"
    text, vision = cfg["text_config"], cfg["vision_config"]
    assert text["model_type"] == "llama" and vision["model_type"] == "clip_vision_model"
    # vLLM's CPU attention needs head size 32 or 64 in both towers.
    assert text["hidden_size"] // text["num_attention_heads"] in (32, 64)
    assert text["head_dim"] in (32, 64)
    assert vision["hidden_size"] // vision["num_attention_heads"] in (32, 64)
    assert (vision["image_size"], vision["patch_size"]) == (56, 14)


def test_transformers_reloads_rewritten_file_exactly(tiny_dir, images):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    loaded, info = LlavaForConditionalGeneration.from_pretrained(tiny_dir, local_files_only=True, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    fresh, _ = tiny_vlm.tiny_model(seed=0)
    processor = AutoProcessor.from_pretrained(tiny_dir, local_files_only=True)
    batch = processor(images=images[1], text=f"USER: <image>\n{PROMPT_A} ASSISTANT:", return_tensors="pt")
    with torch.inference_mode():
        assert torch.equal(loaded.eval()(**batch).logits, fresh(**batch).logits)


def test_build_is_deterministic_in_seed(tmp_path):
    def tensors(d):
        with safe_open(str(d / "model.safetensors"), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}

    a, b, c = (tiny_vlm.build(tmp_path / n, seed=s) for n, s in [("a", 0), ("b", 0), ("c", 1)])
    ta, tb, tc = tensors(tmp_path / "a"), tensors(tmp_path / "b"), tensors(tmp_path / "c")
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert not torch.equal(ta["language_model.lm_head.weight"], tc["language_model.lm_head.weight"])
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_processor_template_and_positions(tiny_dir, images):
    from transformers import AutoProcessor, LlavaProcessor

    processor = AutoProcessor.from_pretrained(tiny_dir, local_files_only=True)
    assert isinstance(processor, LlavaProcessor)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT_B}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert text == f"USER: <image>\n{PROMPT_B} ASSISTANT:"

    cfg = json.loads((tiny_dir / "config.json").read_text())
    ids = processor(images=images[2], text=text, return_tensors="pt")["input_ids"][0]
    assert int((ids == cfg["image_token_index"]).sum()) == cfg["image_seq_length"] == 16
    # vLLM later needs max_model_len <= max_position_embeddings: room for a long answer.
    assert len(ids) + 256 <= cfg["text_config"]["max_position_embeddings"]
    # The engine's prompts tokenise into words, not bytes.
    assert len(ids) < 60


def test_answer_after_assistant_starts_a_word(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)
    prompt = f"USER: <image>\n{PROMPT_A} ASSISTANT:"
    pre, full = tok(prompt)["input_ids"], tok(prompt + " frog")["input_ids"]
    assert pre[0] == tok.bos_token_id and full[: len(pre)] == pre
    assert tok.convert_ids_to_tokens(full[len(pre) :]) == ["▁frog"]
    assert tok.decode(full[len(pre) :]) == "frog"


# ---- the backend ---------------------------------------------------------------------------


def test_load_gives_a_vlm(vlm):
    assert isinstance(vlm, VLM)
    assert vlm.dtype == torch.float32


def test_generate_one_string_per_request_and_batch_equals_single(vlm, images):
    prompts = [PROMPT_A, PROMPT_B, PROMPT_A]
    batch = vlm.generate(images, prompts, max_new_tokens=8)
    assert len(batch) == 3 and all(isinstance(s, str) for s in batch)
    assert any(batch)  # a random model still says something
    assert batch == vlm.generate(images, prompts, max_new_tokens=8)
    assert batch == [vlm.generate([im], [p], 8)[0] for im, p in zip(images, prompts)]
    assert vlm.generate([], [], 4) == []


def test_sampling_draws_each_row_from_its_own_seed(vlm, images):
    """temperature > 0: each request samples from its own seeded stream, so its answer depends on
    its seed and not on the batch; temperature 0 is greedy whatever the seeds."""
    prompts = [PROMPT_A, PROMPT_B, PROMPT_A]
    seeds = [11, 12, 13]
    batch = vlm.generate(images, prompts, 8, temperature=1.0, seeds=seeds)
    assert batch == vlm.generate(images, prompts, 8, temperature=1.0, seeds=seeds)
    assert batch == [vlm.generate([im], [p], 8, temperature=1.0, seeds=[s])[0] for im, p, s in zip(images, prompts, seeds)]
    others = [vlm.generate(images, prompts, 8, temperature=1.0, seeds=[s + 100 * k for s in seeds]) for k in (1, 2)]
    assert any(o != batch for o in others)  # another seed, another draw
    greedy = vlm.generate(images, prompts, 8)
    assert greedy != batch and vlm.generate(images, prompts, 8, temperature=0.0, seeds=[1, 2, 3]) == greedy
    with pytest.raises(ValueError, match="one seed per prompt"):
        vlm.generate(images, prompts, 8, temperature=0.5)


def test_score_finite_negative_and_answer_dependent(vlm, images):
    s = vlm.score(images[:2] * 2, [PROMPT_A] * 4, ["frog", "frog", "seahorse, coral reef", "tree"])
    assert s.dtype == np.float32 and s.shape == (4,)
    assert np.all(np.isfinite(s)) and np.all(s <= 0)
    assert abs(s[0] - s[3]) > 1e-3  # same image and prompt, different answers
    assert abs(s[0] - s[1]) > 1e-6  # same answer, different images
    assert vlm.score([], [], []).shape == (0,)


def test_score_batch_equals_one_by_one(vlm, images):
    prompts = [PROMPT_A, PROMPT_B, PROMPT_A, PROMPT_B]
    answers = ["frog", "[0.12, 0.30, 0.55, 0.91]", "the chameleon on a branch of the tree", "leaf"]
    imgs = images + images[:1]
    batch = vlm.score(imgs, prompts, answers)
    single = np.array([vlm.score([i], [p], [a])[0] for i, p, a in zip(imgs, prompts, answers)])
    np.testing.assert_allclose(batch, single, atol=1e-4)
    np.testing.assert_array_equal(batch, vlm.score(imgs, prompts, answers))


def test_score_matches_a_full_forward_by_hand(vlm, images):
    """The authors' ids (``tokenizer_image_token``, the image token expanded to the processor's
    count) of the "llava_v1" text with the answer, through the whole model at once."""
    from int_engine.backends.llava_image import pad_to_square, processor_fill

    processor, model = vlm.processor, vlm.model
    square = pad_to_square(images[1], processor_fill(processor.image_processor))  # as the backend sends it
    pixels = processor.image_processor(square, return_tensors="pt")["pixel_values"]
    image_id, count = model.config.image_token_id, model.config.image_seq_length
    pre = authors_ids(vlm.tokenizer, vlm.chat_text(PROMPT_A), image_id, count)
    full = authors_ids(vlm.tokenizer, vlm.chat_text(PROMPT_A) + " frog, grass", image_id, count)
    n = len(pre)
    assert full[:n] == pre and len(full) > n + 1 and vlm.tokenizer.eos_token_id not in full[n:]
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=torch.tensor([full]), pixel_values=pixels).logits[0].float(), -1)
    targets = torch.tensor(full[n:])
    expected = logp[n - 1 : -1].gather(-1, targets[:, None]).mean().item()
    assert vlm.score([images[1]], [PROMPT_A], ["frog, grass"])[0] == pytest.approx(expected, abs=1e-5)


def test_chunked_score_equals_one_pass(tiny_dir, vlm, images):
    chunked = HFLlavaVLM.load(tiny_dir, max_batch_size=2)
    args = (images, [PROMPT_A, PROMPT_B, PROMPT_A], ["frog", "[0.1, 0.2, 0.3, 0.4]", "moth"])
    np.testing.assert_allclose(chunked.score(*args), vlm.score(*args), atol=1e-4)


def test_bfloat16_close_to_float32(tiny_dir, vlm, images):
    low = HFLlavaVLM.load(tiny_dir, dtype="bfloat16")
    assert low.dtype == torch.bfloat16
    args = (images, [PROMPT_A] * 3, ["frog", "lizard", "owl"])
    np.testing.assert_allclose(low.score(*args), vlm.score(*args), atol=0.2)
    assert len(low.generate(images[:1], [PROMPT_A], 4)) == 1


def test_bfloat16_scores_take_a_float32_head_on_the_bfloat16_hidden_states(tiny_dir, images, monkeypatch):
    """The full-sequence path: the model runs in bfloat16, the answer positions' logits and
    log-softmax in float32 (the head's weight read in float32, the model's left bfloat16). Measured:
    within 1e-6 of the float32 head, 1.0e-3 to 1.5e-3 from the bfloat16 head on these answers."""
    low = HFLlavaVLM.load(tiny_dir, dtype="bfloat16", shared_prefix=False)
    low._image_token_count()  # its one-off probe goes through _inputs: before recording
    head = low.model.lm_head.weight
    hidden, batches = [], []
    hook = low.model.model.language_model.register_forward_hook(lambda m, i, out: hidden.append(out.last_hidden_state))
    original = low._inputs
    monkeypatch.setattr(low, "_inputs", lambda *a, **k: batches.append(original(*a, **k)) or batches[-1])
    try:
        for answer in ("frog", "a green lizard", "seahorse, coral reef"):
            got = low.score([images[0]], [PROMPT_A], [answer])[0]
            (n,) = low._answer_lengths([low.chat_text(PROMPT_A)], [low.score_text(PROMPT_A, answer)])
            states, targets = hidden[-1][0, -n - 1 : -1], batches[-1]["input_ids"][0, -n:]  # one row: no padding
            f32, bf16 = head_means(states, head, targets)
            assert abs(got - f32) < 1e-5, (answer, got, f32)
            assert abs(got - bf16) > 5e-4, (answer, got, bf16)  # the bfloat16 head's logits round by more
    finally:
        hook.remove()
    assert head.dtype == torch.bfloat16 and hidden[0].dtype == torch.bfloat16  # nothing of the model cast


def test_head_logits_in_float32_blocks_equal_one_float32_matmul(monkeypatch):
    import int_engine.backends.vlm_hf_head as vlm_hf_head

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True).to(torch.bfloat16)
    states = torch.randn(7, 16).to(torch.bfloat16)
    monkeypatch.setattr(vlm_hf_head, "HEAD_BLOCK", 8)  # 7 blocks, the last of 2 words
    got = vlm_hf_head.head_logits_float32(head, states)
    want = states.float() @ head.weight.float().T + head.bias.float()
    assert got.dtype == torch.float32 and got.shape == (7, 50)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_bad_requests_raise_value_error(vlm, images):
    with pytest.raises(ValueError, match="answer 1 is empty"):
        vlm.score(images[:2], [PROMPT_A] * 2, ["frog", "  "])
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        vlm.generate(images[:2], [PROMPT_A], 4)
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
        vlm.score([np.zeros((8, 8), np.uint8)], [PROMPT_A], ["frog"])


# ---- load errors ---------------------------------------------------------------------------


def test_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelLoadError, match=str(missing)):
        HFLlavaVLM.load(missing)


def test_directory_without_weights(tiny_dir, tmp_path):
    broken = tmp_path / "no_weights"
    shutil.copytree(tiny_dir, broken)
    os.remove(broken / "model.safetensors")
    with pytest.raises(ModelLoadError, match=f"{broken}.*model.safetensors"):
        HFLlavaVLM.load(broken)


def test_corrupt_config(tiny_dir, tmp_path):
    broken = tmp_path / "bad_config"
    shutil.copytree(tiny_dir, broken)
    (broken / "config.json").write_text("{ not json")
    with pytest.raises(ModelLoadError, match=f"vlm: cannot load .* from {broken}"):
        HFLlavaVLM.load(broken)


def test_truncated_weights(tiny_dir, tmp_path):
    broken = tmp_path / "bad_weights"
    shutil.copytree(tiny_dir, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=str(broken)):
        HFLlavaVLM.load(broken)


def test_bad_options(tiny_dir):
    with pytest.raises(ConfigError, match="dtype"):
        HFLlavaVLM.load(tiny_dir, dtype="int3")
    with pytest.raises(ConfigError, match="beam_width"):
        HFLlavaVLM.load(tiny_dir, beam_width=4)
    with pytest.raises(ConfigError, match="chat_format 'llava'.*llava_v1, checkpoint"):
        HFLlavaVLM.load(tiny_dir, chat_format="llava")


def test_score_encodes_each_distinct_image_once(vlm, images):
    seen = []
    embeddings = vlm.model.model.vision_tower.embeddings
    original = embeddings.forward

    def counting(pixel_values, *args, **kwargs):
        seen.append(pixel_values.shape[0])
        return original(pixel_values, *args, **kwargs)

    embeddings.forward = counting
    try:
        rows = [images[0]] * 3 + [images[1]] * 3
        batched = vlm.score(rows, ["Output the name."] * 6, ["frog", "snake", "moth"] * 2)
    finally:
        embeddings.forward = original
    assert seen == [2]  # two distinct images, six rows
    alone = np.array([vlm.score([im.copy()], ["Output the name."], [a])[0] for im, a in zip(rows, ["frog", "snake", "moth"] * 2)])
    np.testing.assert_allclose(batched, alone, atol=1e-4)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_inputs_equal_the_processors_with_each_image_processed_once(tiny_dir, images, monkeypatch, padding_side):
    """With the checkpoint's template its processor's ids (the "llava_v1" ids, split at the image as
    LLaVA's tokenizer_image_token: tests/backends/test_vlm_template.py), each distinct image processed once."""
    vlm = HFLlavaVLM.load(tiny_dir, chat_format="checkpoint")
    rows = [images[0], images[1], images[0], images[2], images[1], images[0]]
    texts = [vlm.chat_text(p) for p in ["Output the name.", "Name it.", "What is this?", "x", "Output the name.", "y"]]
    processed = []
    image_processor = vlm.processor.image_processor

    class Counting:  # the image processor, counting the images it is given
        def __call__(self, pil, **kw):
            processed.append(len(pil))
            return image_processor(pil, **kw)

        def __getattr__(self, name):
            return getattr(image_processor, name)

    monkeypatch.setattr(vlm.processor, "image_processor", Counting())
    got = vlm._inputs(rows, texts, padding_side)
    assert processed == [3]  # three distinct images for six rows
    monkeypatch.undo()
    from PIL import Image

    from int_engine.backends.llava_image import pad_to_square, processor_fill

    fill = processor_fill(image_processor)
    want = vlm.processor(
        images=[Image.fromarray(pad_to_square(im, fill)) for im in rows],
        text=texts,
        padding=True,
        padding_side=padding_side,
        return_tensors="pt",
    )
    assert sorted(got) == sorted(want)
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(got[key], want[key]), key
    # Only the distinct images' pixels, in first-occurrence order: rows 0, 1 and 3.
    assert torch.equal(got["pixel_values"], want["pixel_values"][[0, 1, 3]].to(got["pixel_values"].dtype))


# ---- memory: a KV cache only where it is read (the shared prefixes), passes by a token budget ---


def test_token_passes_bound_rows_times_longest_row():
    from int_engine.backends.vlm_hf_inputs import token_passes

    assert token_passes([10, 10, 10, 10], max_tokens=20) == [slice(0, 2), slice(2, 4)]
    # the longest row so far sets the pass's padded length
    assert token_passes([5, 5, 12, 5], max_tokens=24) == [slice(0, 2), slice(2, 4)]
    # generation counts what every row grows by
    assert token_passes([10, 10, 10], extra=10, max_tokens=40) == [slice(0, 2), slice(2, 3)]
    # the row cap still holds; a row over the budget gets a pass of its own
    assert token_passes([1] * 5, max_tokens=100, max_rows=2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert token_passes([50, 3, 3], max_tokens=10) == [slice(0, 1), slice(1, 3)]
    assert token_passes([7] * 3) == [slice(0, 3)] and token_passes([]) == []


def test_row_lengths_are_the_padded_lengths(vlm, images):
    texts = [vlm.chat_text(p) + a for p, a in [(PROMPT_A, " frog"), (PROMPT_B, " [0.1, 0.2, 0.3, 0.4]"), ("x", "")]]
    mask = vlm._inputs(images, texts, padding_side="left")["attention_mask"]
    assert vlm._row_lengths(texts) == mask.sum(-1).tolist()


def spy_language_model(vlm, monkeypatch) -> list[dict]:
    """Record each language-model forward's kwargs, input shape and returned cache."""
    lm = vlm.model.model.language_model
    calls, original = [], lm.forward

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        shape = tuple(kwargs["inputs_embeds"].shape[:2]) if kwargs.get("inputs_embeds") is not None else None
        calls.append(
            {"kwargs": kwargs, "shape": shape, "past_key_values": out.past_key_values, "hidden_states": out.hidden_states}
        )
        return out

    monkeypatch.setattr(lm, "forward", recording)
    return calls


def count_dynamic_caches(monkeypatch) -> list:
    """Weak references to every ``DynamicCache`` made from now on."""
    from transformers import cache_utils

    created = []
    original_init = cache_utils.DynamicCache.__init__
    monkeypatch.setattr(
        cache_utils.DynamicCache,
        "__init__",
        lambda self, *a, **k: created.append(weakref.ref(self)) or original_init(self, *a, **k),
    )
    return created


def test_full_sequence_score_builds_no_kv_cache(tiny_dir, images, monkeypatch):
    full = HFLlavaVLM.load(tiny_dir, shared_prefix=False)
    created = count_dynamic_caches(monkeypatch)
    calls = spy_language_model(full, monkeypatch)
    full.score(images, [PROMPT_A] * 3, ["frog", "lizard", "owl"])
    assert calls and all(c["kwargs"]["use_cache"] is False for c in calls)
    assert all(c["past_key_values"] is None and c["hidden_states"] is None for c in calls)
    assert created == []  # transformers would make one per pass from the config's use_cache=True


def test_shared_prefix_score_caches_the_prefixes_only_and_keeps_nothing(vlm, images, monkeypatch):
    """The prefix pass builds the one cache of the pass, which the answer pass reads
    (``use_cache=False``) without adding to it; neither outlives the call."""
    created = count_dynamic_caches(monkeypatch)
    lm = vlm.model.model.language_model
    calls, original = [], lm.forward

    def recording(*args, **kwargs):  # no strong reference to any cache kept
        past = kwargs.get("past_key_values")
        out = original(*args, **kwargs)
        calls.append(
            {
                "use_cache": kwargs["use_cache"],
                "shape": tuple(kwargs["inputs_embeds"].shape[:2]),
                "past_in": type(past).__name__ if past is not None else None,
                "out_layers": [tuple(layer.keys.shape) for layer in out.past_key_values.layers]
                if out.past_key_values is not None
                else None,
                "out_is_in": out.past_key_values is past,
                "hidden_states": out.hidden_states,
            }
        )
        return out

    monkeypatch.setattr(lm, "forward", recording)
    answers = ["frog", "a green lizard", "owl on a branch of a tree"] * 2
    vlm.score([images[0]] * 3 + [images[1]] * 3, [PROMPT_A] * 6, answers)
    prefix, answer = calls  # one pass: the two prefixes, then the answers on their cache
    assert prefix["use_cache"] is True and prefix["past_in"] is None and prefix["hidden_states"] is None
    k, p = prefix["shape"]
    assert k == 2 and all(shape[0] == 2 and shape[-2] == p for shape in prefix["out_layers"])
    assert answer["use_cache"] is False and answer["past_in"] == "SharedPrefixCache" and answer["out_is_in"]
    # the answers ("frog" has no token after its first) read the cache and wrote nothing into it
    assert answer["shape"][0] == 4 and answer["out_layers"] == prefix["out_layers"]
    assert len(created) == 1  # the prefix pass's; the answer pass builds none
    gc.collect()
    assert created[0]() is None  # nothing of it survives the call


@pytest.mark.parametrize("shared", [False, True])
def test_score_passes_fit_the_token_budget_and_equal_one_pass(tiny_dir, vlm, images, monkeypatch, shared):
    rows = [images[0]] * 4 + [images[1]] * 3 + [images[2]] * 3
    prompts = [PROMPT_A, PROMPT_B] * 5
    answers = ["frog", "[0.1, 0.2, 0.3, 0.4]", "moth", "a green leaf", "x"] * 2
    one_pass = vlm.score(rows, prompts, answers)
    budget = 3 * max(vlm._row_lengths([vlm.score_text(p, a) for p, a in zip(prompts, answers)]))
    small = HFLlavaVLM.load(tiny_dir, max_batch_tokens=budget, shared_prefix=shared)
    calls = spy_language_model(small, monkeypatch)
    np.testing.assert_allclose(small.score(rows, prompts, answers), one_pass, atol=1e-4)
    if not shared:
        assert len(calls) >= 4 and all(r * s <= budget for r, s in (c["shape"] for c in calls))
        assert sum(c["shape"][0] for c in calls) == len(rows)
        return
    # prefix passes (use_cache) and answer passes on their cache: each attends to at most
    # budget tokens (rows x (cached prefix + own tokens)); every row with more than one answer
    # token in exactly one answer pass
    for c in calls:
        past = c["kwargs"].get("past_key_values")
        r, s = c["shape"]
        assert r * (s + (past.get_seq_length() if past is not None else 0)) <= budget
    prefix_passes = [c for c in calls if c["kwargs"]["use_cache"]]
    assert len(prefix_passes) >= 4 and all(c["kwargs"].get("past_key_values") is None for c in prefix_passes)
    lengths = small._answer_lengths(
        [small.chat_text(p) for p in prompts], [small.score_text(p, a) for p, a in zip(prompts, answers)]
    )
    assert sum(c["shape"][0] for c in calls if not c["kwargs"]["use_cache"]) == sum(n > 1 for n in lengths)


def test_generate_passes_count_the_new_tokens(tiny_dir, vlm, images, monkeypatch):
    prompts = [PROMPT_A, PROMPT_B, PROMPT_A, PROMPT_B]
    rows = images + images[:1]
    want = vlm.generate(rows, prompts, max_new_tokens=6)
    longest = max(vlm._row_lengths([vlm.chat_text(p) for p in prompts]))
    small = HFLlavaVLM.load(tiny_dir, max_batch_tokens=2 * (longest + 6))
    shapes, original = [], small.model.generate

    def recording(**kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        assert "pixel_values" not in kwargs  # each distinct image encoded once, beforehand
        return original(**kwargs)

    monkeypatch.setattr(small.model, "generate", recording)
    assert small.generate(rows, prompts, max_new_tokens=6) == want
    assert len(shapes) == 2 and all(r * (s + 6) <= 2 * (longest + 6) for r, s in shapes)


def test_vision_features_run_only_up_to_the_selected_layer(vlm, images):
    cfg = vlm.model.config
    tower = vlm.model.model.vision_tower
    pixels = vlm._inputs(images, ["<image>"] * 3, padding_side="left")["pixel_values"]
    ran = []
    hooks = [layer.register_forward_hook(lambda m, i, o, k=k: ran.append(k)) for k, layer in enumerate(tower.encoder.layers)]
    try:
        with torch.inference_mode():
            got = vlm._vision_features(pixels)
    finally:
        for h in hooks:
            h.remove()
    n = len(tower.encoder.layers)
    assert cfg.vision_feature_layer == -2 and ran == list(range(n - 1))  # the last layer is never run
    with torch.inference_mode():
        want = vlm.model.model.get_image_features(
            pixel_values=pixels,
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
            return_dict=True,
        ).pooler_output
    assert got.shape == (3, cfg.image_seq_length, cfg.text_config.hidden_size)
    for u in range(3):
        torch.testing.assert_close(got[u], want[u], rtol=0, atol=1e-6)


def test_hidden_state_indices():
    from int_engine.backends.vlm_hf_vision import hidden_state_indices

    assert hidden_state_indices(-2, 24) == [23] and hidden_state_indices(-1, 24) == [24]
    assert hidden_state_indices([-2, -5, 0], 24) == [23, 20, 0]


def test_bad_budget_option(tiny_dir):
    with pytest.raises(ConfigError, match="max_batch_tokens must be >= 1"):
        HFLlavaVLM.load(tiny_dir, max_batch_tokens=0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_spliced_image_tokens_equal_the_tokenizer_on_expanded_text(tiny_dir, side):
    """``ExpandedIds`` tokenises each distinct text once and splices "<image>"'s expansion in:
    the same ids and mask as the tokenizer on every expanded row, padded on either side; an
    expansion that is not image tokens only falls back to the tokenizer."""
    vlm = HFLlavaVLM.load(tiny_dir)
    token = vlm.processor.image_token
    texts = [vlm.chat_text(p) + a for p in (PROMPT_A, PROMPT_B, "frog?") for a in ("", " frog", " tree bark")] * 2
    for expanded in (token * 9, token * 3 + " and more"):
        expand = ExpandedIds(vlm.tokenizer, token, vlm.model.config.image_token_id)
        got = expand(texts, expanded, side)
        want = vlm.tokenizer([t.replace(token, expanded) for t in texts], padding=True, padding_side=side, return_tensors="pt")
        assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["attention_mask"], want["attention_mask"])
        assert (expand.splice[1] is not None) == (expanded == token * 9)


def test_the_tiny_llava_scores_on_spliced_ids(vlm, images):
    """LLaVA-1.5's expansion is image tokens only, so the backend takes the spliced path."""
    vlm.score(images[:1], [PROMPT_A], ["frog"])
    assert vlm._expanded is not None and vlm._expanded.splice[1] == [vlm.model.config.image_token_id] * vlm._image_token_count()
