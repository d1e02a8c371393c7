"""Tiny Qwen2.5-VL and Qwen3-VL: the real ``Qwen2_5_VLForConditionalGeneration`` /
``Qwen3VLForConditionalGeneration`` architectures at toy size, saved as the published
``Qwen/Qwen2.5-VL-7B-Instruct`` / ``Qwen/Qwen3-VL-4B-Instruct`` directories are.

What matches the real checkpoints: the model classes and their config layout (a text config
with multimodal rotary sections, ``mrope_section``, summing to half a head; Qwen3's interleaved;
a vision tower of patch 14 (2.5: window attention with full-attention blocks) or 16 (3: learnt
position embeddings, DeepStack features into the first decoder layers), 2 x 2 patch merging and
temporal patch 2), a byte-level BPE tokenizer (Qwen2's pre-tokenizer regex) with Qwen's special
tokens after the base vocabulary in Qwen's order (``<|endoftext|>``, ``<|im_start|>``,
``<|im_end|>``, ..., ``<|vision_start|>``, ``<|vision_end|>``, ``<|vision_pad|>``,
``<|image_pad|>``, ``<|video_pad|>``), eos ``<|im_end|>`` and pad ``<|endoftext|>``, the
``Qwen2VLImageProcessor`` (smart resize to multiples of patch x merge between min and max
pixels), the family's processor, and a ChatML chat template written here that renders a
conversation as the published templates do: Qwen2.5-VL's opens with the default system turn
"You are a helpful assistant." when the conversation has none, Qwen3-VL's does not; an image
is ``<|vision_start|><|image_pad|><|vision_end|>``, the generation prompt
``<|im_start|>assistant\\n``.

What is tiny: 64 wide with heads of 32 in both towers, 2 layers each, and the image processor's
pixels between 4 and 16 merged tokens' worth (``min_pixels`` / ``max_pixels``), so one image is
at most 16 tokens.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, Qwen2Tokenizer, Qwen2VLImageProcessor

from .corpus import tokenizer_corpus

FAMILIES = ("qwen2_5_vl", "qwen3_vl")
FORMATS = {"qwen2_5_vl": "Qwen2.5-VL (transformers)", "qwen3_vl": "Qwen3-VL (transformers)"}
SCALES = ("tiny",)
BPE_VOCAB = 700
HIDDEN, HEAD_DIM, LAYERS = 64, 32, 2
# Qwen's special tokens, in the order (and so the relative ids) of the published tokenizers.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item or 'image_url' in item %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'video' or 'video' in item %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in item %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
)
# ChatML, as the published Qwen-VL templates render it; only the default system turn differs.
_DEFAULT_SYSTEM = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
)
_TURNS = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n" + _CONTENT + "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT_TEMPLATES = {"qwen2_5_vl": _DEFAULT_SYSTEM + _TURNS, "qwen3_vl": _TURNS}
# The family's vision geometry: patch size; the real processors' mean/std.
PATCH = {"qwen2_5_vl": 14, "qwen3_vl": 16}
IMAGE_STATS = {
    "qwen2_5_vl": ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]),
    "qwen3_vl": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
}
MERGE = 2


def _check(family: str, scale: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"vlm: unknown Qwen-VL family {family!r}; expected one of {', '.join(FAMILIES)}")
    if scale not in SCALES:
        raise ValueError(f"vlm: unknown zoo scale {scale!r}; scales are {', '.join(SCALES)}")


def train_tokenizer() -> Qwen2Tokenizer:
    """A Qwen2-layout byte-level BPE learnt on the engine's sentences, then Qwen's special tokens."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = tokenizer_corpus() + ["system user assistant You are a helpful assistant." + string.digits] * 50
    bpe.train_from_iterator(lines, trainer)
    learnt = json.loads(bpe.to_str())["model"]
    vocab = dict(sorted(learnt["vocab"].items(), key=lambda kv: kv[1]))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learnt["merges"]]
    tok = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )
    tok.add_special_tokens({"additional_special_tokens": [t for t in SPECIAL_TOKENS if t not in tok.get_vocab()]})
    return tok


def _ids(tok: Qwen2Tokenizer) -> dict[str, int]:
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    tokens = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    return {n: tok.convert_tokens_to_ids(t) for n, t in zip(names, tokens)}


def _text_config(tok: Qwen2Tokenizer, family: str) -> dict:
    """The text tower's fields (a dict: each family's config class reads it)."""
    half = HEAD_DIM // 2  # mrope sections (t, h, w) sum to half a head, as the real 16+24+24 = 64 of 128
    rope = (
        {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]}
        if family == "qwen2_5_vl"
        else {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [6, 5, 5], "mrope_interleaved": True}
    )
    assert sum(rope["mrope_section"]) == half
    return {
        "vocab_size": -(-len(tok) // 64) * 64,
        "hidden_size": HIDDEN,
        "intermediate_size": 4 * HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HIDDEN // HEAD_DIM,
        "num_key_value_heads": 1,  # grouped-query attention, as the real models
        "head_dim": HEAD_DIM,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        # wider than 0.02 so the random model's answers and scores vary with image and text
        "initializer_range": 0.2,
        "rope_parameters": rope,
        "bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "tie_word_embeddings": False,
    }


def _config(tok: Qwen2Tokenizer, family: str):
    vision = {
        "depth": LAYERS,
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_heads": HIDDEN // HEAD_DIM,
        "patch_size": PATCH[family],
        "temporal_patch_size": 2,
        "spatial_merge_size": MERGE,
        "out_hidden_size": HIDDEN,
        "initializer_range": 0.2,
    }
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        vision |= {"hidden_act": "silu", "window_size": 112, "fullatt_block_indexes": [1], "tokens_per_second": 2}
        return Qwen2_5_VLConfig(
            text_config=_text_config(tok, family), vision_config=vision, tie_word_embeddings=False, **_ids(tok)
        )
    from transformers import Qwen3VLConfig

    vision |= {"hidden_act": "gelu_pytorch_tanh", "num_position_embeddings": 64, "deepstack_visual_indexes": [0]}
    return Qwen3VLConfig(text_config=_text_config(tok, family), vision_config=vision, tie_word_embeddings=False, **_ids(tok))


def processor_of(tok: Qwen2Tokenizer, family: str):
    """The family's processor: ``Qwen2VLImageProcessor`` at small pixel bounds (4 to 16 merged
    tokens), the family's video processor, the tokenizer and ``CHAT_TEMPLATES[family]``."""
    factor = PATCH[family] * MERGE
    mean, std = IMAGE_STATS[family]
    common = {"patch_size": PATCH[family], "temporal_patch_size": 2, "merge_size": MERGE, "image_mean": mean, "image_std": std}
    size = {"shortest_edge": 4 * factor * factor, "longest_edge": 16 * factor * factor}
    images = Qwen2VLImageProcessor(size=size, **common)
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor, Qwen2VLVideoProcessor

        videos = Qwen2VLVideoProcessor(size=size, **common)
        return Qwen2_5_VLProcessor(
            image_processor=images, tokenizer=tok, video_processor=videos, chat_template=CHAT_TEMPLATES[family]
        )
    from transformers import Qwen3VLProcessor, Qwen3VLVideoProcessor

    videos = Qwen3VLVideoProcessor(size=size, **common)
    return Qwen3VLProcessor(image_processor=images, tokenizer=tok, video_processor=videos, chat_template=CHAT_TEMPLATES[family])


def _save_processor(processor, out_dir: Path) -> None:
    """Save as the published snapshots are laid out: the image processor in
    preprocessor_config.json, the video processor in video_preprocessor_config.json, and only the
    processor's own fields in processor_config.json (transformers 5 would nest both inside it)."""
    processor.save_pretrained(out_dir)
    processor.image_processor.save_pretrained(out_dir)
    processor.video_processor.save_pretrained(out_dir)
    own = json.loads((out_dir / "processor_config.json").read_text())
    own.pop("image_processor", None)
    own.pop("video_processor", None)
    (out_dir / "processor_config.json").write_text(json.dumps(own, indent=2, sort_keys=True) + "\n")


def tiny_model(seed: int = 0, family: str = "qwen2_5_vl"):
    """The random model of ``family`` and its tokenizer, in memory: the weights ``build`` writes."""
    _check(family, "tiny")
    tok = train_tokenizer()
    config = _config(tok, family)
    torch.manual_seed(seed)
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLForConditionalGeneration as cls
    else:
        from transformers import Qwen3VLForConditionalGeneration as cls
    return cls(config).eval(), tok


def build(out_dir: Path, seed: int = 0, scale: str = "tiny", family: str = "qwen2_5_vl") -> dict:
    """Write a random Qwen-VL of ``family`` ("qwen2_5_vl" or "qwen3_vl") to ``out_dir``:
    config.json, generation_config.json, model.safetensors, tokenizer.json + tokenizer_config.json,
    preprocessor_config.json, video_preprocessor_config.json, processor_config.json and chat_template.jinja, loadable offline
    by ``AutoProcessor`` and the model class. Deterministic in ``seed``."""
    _check(family, scale)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tok = tiny_model(seed, family)
    model.save_pretrained(out_dir, safe_serialization=True)
    eos = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    GenerationConfig(bos_token_id=eos[1], eos_token_id=eos, pad_token_id=tok.pad_token_id, do_sample=False).save_pretrained(
        out_dir
    )
    _save_processor(processor_of(tok, family), out_dir)
    return {"format": FORMATS[family], "params": sum(p.numel() for p in model.parameters())}
