"""HFQwenVLM (engine/backends/vlm_qwen.py) on tiny random Qwen2.5-VL and Qwen3-VL checkpoints
(engine/models/tiny_qwen.py), loaded back through ``load``. Parity with transformers called the
documented way (processor + apply_chat_template + model.generate / a full forward), shared prefix
== plain, batch == one-by-one, seeded sampling independent of the batch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from int_engine.backends.qwen_boxes import engine_box_text
from int_engine.backends.vlm_qwen import HFQwenVLM
from int_engine.errors import ModelLoadError
from int_engine.models import tiny_qwen

FAMILIES = ["qwen2_5_vl", "qwen3_vl"]
RNG = np.random.RandomState(0)
# views of different sizes and aspects: different token grids and rotary positions
IMAGES = [RNG.randint(0, 256, shape, dtype=np.uint8) for shape in [(90, 130, 3), (120, 60, 3), (64, 64, 3)]]
PROMPTS = ["Where is the frog?", "Name the animal.", "Give the box of the leaf."]


@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request, tmp_path_factory) -> HFQwenVLM:
    out = tmp_path_factory.mktemp(request.param)
    info = tiny_qwen.build(out, family=request.param)
    assert info["params"] > 0
    return HFQwenVLM.load(out, max_batch_tokens=None)


def reference_generate(vlm: HFQwenVLM, image: np.ndarray, prompt: str, max_new_tokens: int) -> str:
    """transformers' documented path, one request: chat template, processor, model.generate."""
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = vlm.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    inputs = vlm.processor(text=[text], images=[image], return_tensors="pt")
    out = vlm.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return vlm.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0].strip()


def reference_score(vlm: HFQwenVLM, image: np.ndarray, prompt: str, answer: str) -> float:
    """A full forward of the processor's inputs for prompt + answer; the mean log_softmax at the
    answer's positions."""
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = vlm.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    inputs = vlm.processor(text=[text + answer], images=[image], return_tensors="pt")
    answer_ids = vlm.processor.tokenizer(answer, add_special_tokens=False)["input_ids"]
    ids = inputs["input_ids"][0]
    n = len(answer_ids)
    assert ids[-n:].tolist() == answer_ids  # the answer's own tokens end the processor's row
    with torch.no_grad():
        logits = vlm.model(**inputs).logits[0].float()
    logp = torch.log_softmax(logits[-n - 1 : -1], dim=-1)
    return float(logp.gather(-1, ids[-n:, None]).mean())


def test_family_is_read_from_the_config(vlm):
    assert vlm.family == vlm.model.config.model_type
    assert (
        type(vlm.model).__name__
        == {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration", "qwen3_vl": "Qwen3VLForConditionalGeneration"}[vlm.family]
    )


def test_chat_text_is_chatml(vlm):
    text = vlm.chat_text("Where?")
    assert text.endswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Where?<|im_end|>\n<|im_start|>assistant\n")
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.") == (vlm.family == "qwen2_5_vl")


def test_generate_greedy_equals_model_generate(vlm):
    got = vlm.generate(IMAGES, PROMPTS, 10)
    want = [reference_generate(vlm, im, p, 10) for im, p in zip(IMAGES, PROMPTS)]
    # the backend's answers are the model's with any box in the engine's frame
    assert got == [engine_box_text(a, vlm.family, im.shape[1], im.shape[0], vlm.input_size(im)) for a, im in zip(want, IMAGES)]
    assert len(set(got)) > 1  # the random model's answers depend on the input


def test_generate_batch_equals_one_by_one(vlm):
    images = [IMAGES[0], IMAGES[1], IMAGES[0], IMAGES[2]]
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[0]]
    batch = vlm.generate(images, prompts, 8)
    assert batch == [vlm.generate([im], [p], 8)[0] for im, p in zip(images, prompts)]


def test_image_tokens_match_the_processor(vlm):
    for im in IMAGES:
        grid = vlm.processor.image_processor(images=[im], return_tensors="pt")["image_grid_thw"][0]
        merge = vlm.processor.image_processor.merge_size
        assert vlm.image_token_count(im) == int(grid.prod()) // merge**2
        assert vlm.input_size(im) == (
            int(grid[1]) * vlm.processor.image_processor.patch_size,
            int(grid[2]) * vlm.processor.image_processor.patch_size,
        )


SCORE_ROWS = [(0, 0, "frog"), (0, 0, "tree frog"), (1, 1, "a dog on the grass"), (1, 2, "cat"), (2, 1, "x"), (0, 0, "leaf")]


def score_rows(vlm):
    return [IMAGES[i] for i, _, _ in SCORE_ROWS], [PROMPTS[p] for _, p, _ in SCORE_ROWS], [a for _, _, a in SCORE_ROWS]


def test_score_equals_manual_forward(vlm):
    images, prompts, answers = score_rows(vlm)
    vlm.shared_prefix = False
    try:
        plain = vlm.score(images, prompts, answers)
    finally:
        vlm.shared_prefix = True
    want = np.array([reference_score(vlm, im, p, a) for im, p, a in zip(images, prompts, answers)], np.float32)
    assert plain.dtype == np.float32 and plain.shape == (len(answers),)
    np.testing.assert_allclose(plain, want, atol=1e-4, rtol=0)
    assert np.ptp(want) > 0.1  # scores differ between rows: the check is not vacuous


def test_shared_prefix_equals_plain_and_batch_equals_one_by_one(vlm):
    images, prompts, answers = score_rows(vlm)
    shared = vlm.score(images, prompts, answers)
    assert vlm.last_stats["prefix_tokens"] < sum(len(r) for r in vlm.prompt_ids(images, [vlm.chat_text(p) for p in prompts]))
    vlm.shared_prefix = False
    try:
        plain = vlm.score(images, prompts, answers)
    finally:
        vlm.shared_prefix = True
    np.testing.assert_allclose(shared, plain, atol=1e-4, rtol=0)
    one = np.array([vlm.score([im], [p], [a])[0] for im, p, a in zip(images, prompts, answers)])
    np.testing.assert_allclose(shared, one, atol=1e-4, rtol=0)
    # small passes: prefixes split between passes give the same scores
    vlm.max_batch_size = 2
    try:
        np.testing.assert_allclose(vlm.score(images, prompts, answers), shared, atol=1e-4, rtol=0)
    finally:
        vlm.max_batch_size = 256


def test_sampled_answers_depend_only_on_their_seeds(vlm):
    images, prompts = IMAGES, PROMPTS
    batch = vlm.generate(images, prompts, 6, temperature=1.0, seeds=[11, 12, 13])
    alone = [vlm.generate([images[j]], [prompts[j]], 6, temperature=1.0, seeds=[s])[0] for j, s in enumerate([11, 12, 13])]
    assert batch == alone
    reseeded = vlm.generate(images, prompts, 6, temperature=1.0, seeds=[21, 22, 23])
    assert reseeded != batch
    with pytest.raises(ValueError):
        vlm.generate(images, prompts, 6, temperature=1.0)


def test_load_refuses_bad_directories(tmp_path, vlm):
    with pytest.raises(ModelLoadError, match="missing"):
        HFQwenVLM.load(tmp_path)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        (tmp_path / name).write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ModelLoadError, match="model_type"):
        HFQwenVLM.load(tmp_path)
