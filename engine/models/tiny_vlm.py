"""Tiny LLaVA-1.5: the real ``LlavaForConditionalGeneration`` architecture at toy size, saved in
the layout of the published ``llava-hf/llava-1.5-7b-hf`` checkpoint.

What matches the real checkpoint: LlamaConfig language model, CLIPVisionConfig vision tower
(patch 14, the second-to-last layer's patch features, CLS dropped), the two-layer GELU
projector, a Llama-style byte-fallback BPE tokenizer with ``<image>`` and ``<pad>`` added
after the base vocabulary, a ``CLIPImageProcessor``, a ``LlavaProcessor`` with the
LLaVA-1.5 chat template (``USER: <image>\\n{prompt} ASSISTANT:``), and safetensors keys under
``language_model.model.*``, ``language_model.lm_head.weight``, ``multi_modal_projector.*`` and
``vision_tower.vision_model.*`` (the layout vLLM and older transformers read).

What is tiny: hidden size 64 with heads of size 32 in both towers (vLLM's CPU attention only
accepts some head sizes, 32 and 64 among them), 2 layers each, 56 px images, so that one
image becomes 4 x 4 = 16 image tokens.

The ``small`` scale (for throughput measurements in which the model's compute dominates)
keeps the layout and the tokenizer: a 4-layer Llama 1024 wide with heads of 64, and a
ViT-B/16-shaped CLIP vision tower (768 wide, 12 heads of 64) with 4 layers at 224 px, so
that one image becomes 14 x 14 = 196 image tokens.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlamaTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from .corpus import tokenizer_corpus


@dataclass(frozen=True)
class VlmSize:
    """The sizes that differ between zoo scales; heads are ``head_dim`` wide in both towers."""

    text_hidden: int
    text_intermediate: int
    text_layers: int
    vision_hidden: int
    vision_layers: int
    image_size: int
    patch_size: int
    head_dim: int
    # std of the random weights; see _configs
    initializer_range: float


SIZES = {
    "tiny": VlmSize(
        text_hidden=64,
        text_intermediate=256,
        text_layers=2,
        vision_hidden=64,
        vision_layers=2,
        image_size=56,
        patch_size=14,
        head_dim=32,
        initializer_range=0.2,
    ),
    # Llama's MLP ratio (11008 / 4096 ~ 2.7, rounded to a multiple of 256) and CLIP ViT-B's widths.
    "small": VlmSize(
        text_hidden=1024,
        text_intermediate=2816,
        text_layers=4,
        vision_hidden=768,
        vision_layers=4,
        image_size=224,
        patch_size=16,
        head_dim=64,
        initializer_range=0.05,
    ),
}
# Prompt (~60 tokens) + 16 image tokens + a generated answer fit many times over; RoPE has no
# position table, so matching the real model's 4096 costs nothing (vLLM's max_model_len <= it).
MAX_POSITIONS = 4096
BPE_VOCAB = 600

# The LLaVA-1.5 conversation format as llava-hf ships it: images first, then the text, each
# user turn ends with a space, and the generation prompt is "ASSISTANT:".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for item in message['content'] if item['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for item in message['content'] if item['type'] == 'text' %}{{ item['text'] + ' ' }}{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

PUBLISHED_PREFIXES = (
    "language_model.model.",
    "language_model.lm_head.weight",
    "multi_modal_projector.",
    "vision_tower.vision_model.",
)


def _train_tokenizer() -> LlamaTokenizer:
    """A Llama-layout tokenizer: ``<unk>``, ``<s>``, ``</s>``, the 256 ``<0xNN>`` byte-fallback
    pieces, then BPE pieces learnt on the engine's own sentences; then ``<image>`` and ``<pad>``."""
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    # split=True keeps "▁" at the start of pieces only, as SentencePiece does, so a merge never
    # crosses a word boundary and "ASSISTANT:" + " frog" tokenises as "ASSISTANT:" then "▁frog".
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=[c for c in string.printable if not c.isspace()],
        show_progress=False,
    )
    lines = tokenizer_corpus() + ["USER: ASSISTANT:"] * 50
    bpe.train_from_iterator(lines, trainer)
    learnt = json.loads(bpe.to_str())["model"]

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(learnt["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learnt["merges"]]

    # llava-hf pads on the left (ready for batched generation); it is saved with the tokenizer.
    tok = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False, padding_side="left")
    # Same order as llava-hf (<image> = 32000, <pad> = 32001 there).
    tok.add_tokens(["<image>"], special_tokens=True)
    tok.add_special_tokens({"pad_token": "<pad>"})
    return tok


def _configs(tok: LlamaTokenizer, size: VlmSize) -> LlavaConfig:
    # Real llava-hf pads the vocabulary to a multiple of 64 (32064); so do we.
    vocab_size = -(-len(tok) // 64) * 64
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=size.text_hidden,
        intermediate_size=size.text_intermediate,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.text_hidden // size.head_dim,
        num_key_value_heads=size.text_hidden // size.head_dim,
        head_dim=size.head_dim,
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-5,
        # A wider init than 0.02 so that the random model's greedy answers and scores vary
        # with the image and the text instead of sitting at a uniform distribution (narrower
        # as the model widens: the logits' spread grows with sqrt(hidden) times this).
        initializer_range=size.initializer_range,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    vision = CLIPVisionConfig(
        hidden_size=size.vision_hidden,
        intermediate_size=4 * size.vision_hidden,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_hidden // size.head_dim,
        image_size=size.image_size,
        patch_size=size.patch_size,
        projection_dim=size.text_hidden,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(size.image_size // size.patch_size) ** 2,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        pad_token_id=tok.pad_token_id,
    )


def _processor(tok: LlamaTokenizer, size: VlmSize) -> LlavaProcessor:
    # CLIP's own normalisation; resize the short side then centre-crop, as llava-hf does.
    images = CLIPImageProcessor(
        size={"shortest_edge": size.image_size},
        crop_size={"height": size.image_size, "width": size.image_size},
        do_center_crop=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    return LlavaProcessor(
        image_processor=images,
        tokenizer=tok,
        patch_size=size.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped again by "default"
        chat_template=CHAT_TEMPLATE,
    )


def _save_processor(processor: LlavaProcessor, out_dir: Path) -> None:
    """Save like llava-hf: the image processor in preprocessor_config.json and only the
    processor's own fields in processor_config.json (transformers 5 would nest the image
    processor inside processor_config.json, a layout older readers do not know)."""
    processor.save_pretrained(out_dir)
    processor.image_processor.save_pretrained(out_dir)
    own = json.loads((out_dir / "processor_config.json").read_text())
    own.pop("image_processor", None)
    (out_dir / "processor_config.json").write_text(json.dumps(own, indent=2, sort_keys=True) + "\n")


def published_key(key: str) -> str:
    """The published llava-hf name of a Llava weight, from any layout transformers writes.

    transformers 5 nests both towers under ``model.`` in memory and, when saving, maps most
    names back to the published layout but writes the vision tower without its
    ``vision_model.`` level (CLIPVisionModel became flat); vLLM needs that level.
    """
    if key.startswith("model.language_model."):
        key = "language_model.model." + key[len("model.language_model.") :]
    elif key.startswith("lm_head."):
        key = "language_model." + key
    elif key.startswith(("model.vision_tower.", "model.multi_modal_projector.")):
        key = key[len("model.") :]
    if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model."):
        key = "vision_tower.vision_model." + key[len("vision_tower.") :]
    if not key.startswith(PUBLISHED_PREFIXES):
        raise ValueError(f"unexpected Llava weight name {key!r}")
    return key


def rewrite_keys(weights_file: Path) -> None:
    """Rename the keys of a saved Llava safetensors file, in place, to the published layout."""
    tensors = load_file(str(weights_file))
    renamed = {published_key(k): v.contiguous() for k, v in tensors.items()}
    save_file(renamed, str(weights_file), metadata={"format": "pt"})


def _size(scale: str) -> VlmSize:
    if scale not in SIZES:
        raise ValueError(f"vlm: unknown zoo scale {scale!r}; scales are {', '.join(SIZES)}")
    return SIZES[scale]


def tiny_model(seed: int = 0, scale: str = "tiny") -> tuple[LlavaForConditionalGeneration, LlamaTokenizer]:
    """The random model of ``scale`` and its tokenizer, in memory: the weights ``build`` writes."""
    size = _size(scale)
    tok = _train_tokenizer()
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(_configs(tok, size)).eval(), tok


def build(out_dir: Path, seed: int = 0, scale: str = "tiny") -> dict:
    """Write a random LLaVA-1.5 of ``scale`` ("tiny" or "small") to ``out_dir``: config.json, generation_config.json,
    model.safetensors (published key names), tokenizer.json + tokenizer_config.json,
    preprocessor_config.json, processor_config.json and chat_template.jinja.
    Deterministic in ``seed``."""
    size = _size(scale)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tok = tiny_model(seed, scale)
    model.save_pretrained(out_dir, safe_serialization=True)
    rewrite_keys(out_dir / "model.safetensors")
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(
        out_dir
    )
    _save_processor(_processor(tok, size), out_dir)
    return {"format": "llava-hf", "params": sum(p.numel() for p in model.parameters())}
