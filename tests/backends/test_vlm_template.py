"""The LLaVA-1.5 conversation the authors ran (LLaVA's conv_mode "llava_v1", used by their ProMaC code)
in both VLM backends: the exact text, and the token ids the model is fed, against LLaVA's own
``tokenizer_image_token`` written from its definition (tests/llava_reference.py). On the tiny zoo's
LLaVA, whose tokenizer (like LLaVA-1.5's) puts a "▁" before the "\\n" after the image when the text
is split there, and not when it is tokenised in one piece as llava-hf's processor does."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from llava_reference import PROMPTS, authors_ids, authors_text, processor_image_tokens, tokenizer_image_token

from int_engine.backends.llava_common import chat_format_of, default_chat_format
from int_engine.backends.vlm_hf import HFLlavaVLM
from int_engine.backends.vlm_vllm import VLLMLlavaVLM
from int_engine.errors import ConfigError


@pytest.fixture(scope="module")
def vlm(tiny_zoo) -> HFLlavaVLM:
    return HFLlavaVLM.load(tiny_zoo / "vlm")


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(56, 56), (70, 40)]]


def expected(vlm: HFLlavaVLM, text: str) -> list[int]:
    image_id = vlm.model.config.image_token_id
    return authors_ids(vlm.tokenizer, text, image_id, processor_image_tokens(vlm.processor))


def fed_rows(batch: dict) -> list[list[int]]:
    """Each row's ids without its padding."""
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]


def record_inputs(vlm: HFLlavaVLM, monkeypatch) -> list[dict]:
    """Every batch ``_inputs`` hands the model (generate, both scoring paths) from now on."""
    vlm._image_token_count()  # its one-off probe (an empty prompt) goes through _inputs: before recording
    seen, original = [], vlm._inputs

    def recording(*args, **kwargs):
        batch = original(*args, **kwargs)
        seen.append({k: v.clone() for k, v in batch.items()})
        return batch

    monkeypatch.setattr(vlm, "_inputs", recording)
    return seen


# ---- the text ---------------------------------------------------------------------------------


def test_both_backends_build_the_authors_text(vlm):
    assert vlm.chat_format == "llava_v1"
    assert vlm.chat_text("Name it.") == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the human's questions. USER: <image>\nName it. ASSISTANT:"
    )
    assert vlm.score_text("Name it.", "  a frog ") == authors_text("Name it.", "a frog")
    assert authors_text("Name it.", "a frog").endswith("ASSISTANT: a frog")
    vllm_side = VLLMLlavaVLM(None, vlm.processor, prefix_caching=False)  # the text needs no engine
    for prompt in PROMPTS:
        assert vllm_side.chat_text(prompt) == vlm.chat_text(prompt) == authors_text(prompt)
        assert vllm_side.score_text(prompt, "frog") == vlm.score_text(prompt, "frog") == authors_text(prompt, "frog")


def test_the_checkpoint_template_is_an_option(tiny_zoo, vlm, images, monkeypatch):
    own = HFLlavaVLM.load(tiny_zoo / "vlm", chat_format="checkpoint")
    assert own.chat_text("Name it.") == "USER: <image>\nName it. ASSISTANT:"  # llava-hf's: no system prompt
    assert own.score_text("Name it.", "frog") == "USER: <image>\nName it. ASSISTANT: frog"
    seen = record_inputs(own, monkeypatch)
    own.generate(images[:1], ["Name it."], 2)
    # the processor's own ids: the text tokenised in one piece
    want = own.processor(images=images[0], text=own.chat_text("Name it."), return_tensors="pt")["input_ids"][0].tolist()
    assert fed_rows(seen[0]) == [want]
    # the two tokenisations differ on this tokenizer, so the default's ids are a choice, not a given
    assert want != expected(vlm, own.chat_text("Name it."))
    assert VLLMLlavaVLM.option_types()["chat_format"] == str | None and HFLlavaVLM.option_types()["chat_format"] == str | None


def test_the_default_format_is_the_authors_for_llava15_only():
    llava15 = SimpleNamespace(model_type="llava", text_config=SimpleNamespace(model_type="llama"))
    other = SimpleNamespace(model_type="llava", text_config=SimpleNamespace(model_type="mistral"))
    assert default_chat_format(llava15) == "llava_v1" and default_chat_format(other) == "checkpoint"
    assert chat_format_of("vlm", None, other) == "checkpoint" and chat_format_of("vlm", "llava_v1", other) == "llava_v1"
    with pytest.raises(ConfigError, match="chat_format 'vicuna'"):
        chat_format_of("vlm", "vicuna", llava15)


# ---- the ids the model is fed ---------------------------------------------------------------------


def test_generate_feeds_the_authors_ids(vlm, images, monkeypatch):
    seen = record_inputs(vlm, monkeypatch)
    generated = []
    original = vlm.model.generate
    monkeypatch.setattr(vlm.model, "generate", lambda **kw: generated.append(fed_rows(kw)) or original(**kw))
    vlm.generate(images, PROMPTS, 3)
    want = [expected(vlm, authors_text(p)) for p in PROMPTS]
    assert fed_rows(seen[0]) == want and generated == [want]
    # the split tokenisation's mark: "▁" then "\n" after the image, as LLaVA-1.5 saw in training
    image_id = vlm.model.config.image_token_id
    after = want[0][len(want[0]) - want[0][::-1].index(image_id) :][:2]
    assert vlm.tokenizer.convert_ids_to_tokens(after) == ["▁", "<0x0A>"]


@pytest.mark.parametrize("shared", [True, False])
def test_score_feeds_the_authors_ids_and_scores_the_answers_own_tokens(tiny_zoo, vlm, images, monkeypatch, shared):
    scorer = vlm if shared else HFLlavaVLM.load(tiny_zoo / "vlm", shared_prefix=False)
    seen = record_inputs(scorer, monkeypatch)
    answers = ["frog", "a green lizard"]
    scorer.score(images, PROMPTS, answers)
    want = [expected(scorer, authors_text(p, a)) for p, a in zip(PROMPTS, answers)]
    assert [row for batch in seen for row in fed_rows(batch)] == want
    # the scored tokens: the answer's own, what follows the prompt's ids (no end of turn: SPEC step 4)
    prompt_ids = [expected(scorer, authors_text(p)) for p in PROMPTS]
    lengths = scorer._answer_lengths(
        [scorer.chat_text(p) for p in PROMPTS], [scorer.score_text(p, a) for p, a in zip(PROMPTS, answers)]
    )
    assert all(w[: len(p)] == p for w, p in zip(want, prompt_ids))
    assert lengths == [len(w) - len(p) for w, p in zip(want, prompt_ids)]
    assert all(scorer.tokenizer.eos_token_id not in w[len(p) :] for w, p in zip(want, prompt_ids))


def test_vllm_requests_carry_the_authors_ids(vlm, images):
    """The ids vLLM is handed, one image token each (vLLM expands it; tests/backends/test_vlm_vllm.py checks
    the expanded ids of a running engine): no engine needed."""
    vllm_side = VLLMLlavaVLM(None, vlm.processor, prefix_caching=False)
    image_id = vlm.model.config.image_token_id
    texts = [authors_text(PROMPTS[0]), authors_text(PROMPTS[1], "frog")]
    requests = vllm_side._requests(images, texts)
    assert [r["prompt_token_ids"] for r in requests] == [tokenizer_image_token(vlm.tokenizer, t, image_id) for t in texts]
    assert vllm_side._answer_ids([authors_text(PROMPTS[1])], [texts[1]]) == [vlm.tokenizer.convert_tokens_to_ids(["▁frog"])]
