"""Tiny SAM 3: transformers' ``Sam3Model`` at toy sizes, randomly initialised, saved like
``facebook/sam3`` (config.json, model.safetensors, processor_config.json with the image
settings, CLIP tokenizer files) so that ``Sam3Model.from_pretrained`` and
``Sam3Processor.from_pretrained`` load it offline, as they load the published checkpoint.

Every part of the real architecture is there: the RoPE ViT backbone with windowed and global
layers and tiled position embeddings (the 112 px input is twice the 56 px "pretrain" grid, as
1008 px is three times 336 px in the real model), the FPN neck, the CLIP text encoder, the
geometry (exemplar box) encoder, the DETR encoder and decoder with the presence token, and the
mask decoder. The CLIP byte-level BPE tokenizer is trained here on the engine's own sentences
(``corpus.tokenizer_corpus``) and laid out like CLIP's: the 256 byte symbols, the same with
``</w>``, the learnt merges, then ``<|startoftext|>`` and ``<|endoftext|>``.

Two scales: ``tiny`` (widths of 32, for tests) and ``small`` (the published widths, 1008 px
input, fewer layers), for throughput measurements in which the model's compute dominates.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTextConfig, CLIPTokenizer, Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor

from .corpus import tokenizer_corpus

FORMAT = "hf-sam3"
BPE_VOCAB = 1000
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's pre-tokenisation (transformers' CLIPTokenizer): the specials, contractions, letters,
# single digits, runs of other symbols; then byte-level symbols.
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
TEXT_LENGTH = 32  # Sam3Processor pads every phrase to 32 tokens; the text encoder's positions


@dataclass(frozen=True)
class Sam3Size:
    """The widths and depths of one scale (the published model: 1008 px, ViT 1024 x 32, CLIP 1024 x 24, d 256)."""

    image: int  # input side; 14 px patches
    pretrain_image: int  # the position-embedding grid's side in px, tiled over the input
    window: int  # the ViT's window in patches
    vit_hidden: int
    vit_layers: int
    vit_heads: int
    text_hidden: int
    text_layers: int
    text_heads: int
    d_model: int  # FPN, geometry encoder, DETR encoder / decoder and mask decoder width
    heads: int
    layers: int  # geometry encoder, DETR encoder and decoder layers each
    ffn: int
    queries: int


SIZES = {
    "tiny": Sam3Size(112, 56, 4, 32, 2, 2, 32, 1, 2, 32, 2, 1, 64, 20),
    "small": Sam3Size(1008, 336, 24, 1024, 4, 16, 1024, 4, 16, 256, 8, 2, 2048, 200),
}


def _train_tokenizer() -> CLIPTokenizer:
    """A CLIP-layout byte-level BPE tokenizer learnt on the engine's sentences."""
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator(tokenizer_corpus(), trainer)
    learnt = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = {}
    for symbol in alphabet + [s + "</w>" for s in alphabet]:
        vocab.setdefault(symbol, len(vocab))
    for piece, _ in sorted(learnt["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learnt["merges"]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=TEXT_LENGTH)


def sam3_config(size: Sam3Size, tok: CLIPTokenizer) -> Sam3Config:
    """``Sam3Config`` of ``size``, its CLIP text encoder sized for ``tok``'s vocabulary."""
    grid = size.image // 14
    backbone = {
        "hidden_size": size.vit_hidden,
        "intermediate_size": 4 * size.vit_hidden,
        "num_hidden_layers": size.vit_layers,
        "num_attention_heads": size.vit_heads,
        "image_size": size.image,
        "patch_size": 14,
        "window_size": size.window,
        "global_attn_indexes": [size.vit_layers - 1],
        "pretrain_image_size": size.pretrain_image,
    }
    vision = {
        "backbone_config": backbone,
        "fpn_hidden_size": size.d_model,
        "backbone_feature_sizes": [[4 * grid, 4 * grid], [2 * grid, 2 * grid], [grid, grid]],
    }
    text = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=size.text_hidden,
        intermediate_size=4 * size.text_hidden,
        projection_dim=size.d_model,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.text_heads,
        max_position_embeddings=TEXT_LENGTH,
        hidden_act="gelu",
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    common = {"hidden_size": size.d_model, "num_attention_heads": size.heads}
    layers = {**common, "num_layers": size.layers, "intermediate_size": size.ffn}
    return Sam3Config(
        vision_config=vision,
        text_config=text.to_dict(),
        geometry_encoder_config=layers,
        detr_encoder_config=layers,
        detr_decoder_config={**layers, "num_queries": size.queries},
        mask_decoder_config=common,
        architectures=["Sam3Model"],
    )


def calibrate(model: Sam3Model, seed: int) -> None:
    """Give the random heads a trained model's spread, in place.

    transformers initialises every linear layer with std 0.02, so at d = 32 the mask logits come
    out within 1e-3 of 0 (every probability ~0.5) and the query scores within 0.01 of 0.25:
    nothing a test could tell apart. The mask embedder, the instance projection and the scoring
    projections get std 1/sqrt(fan_in) (mask logits spread ~1.5 around -1, query logits ~1.7)
    and the presence head's output bias 1.5 (presence ~0.8), so scores spread over ~0.1-0.7.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    scoring = model.dot_product_scoring
    layers = [*model.mask_decoder.mask_embedder.layers, model.mask_decoder.instance_projection, scoring.text_proj]
    with torch.no_grad():
        for layer in [*layers, scoring.query_proj]:
            layer.weight.normal_(0.0, 1.0 / math.sqrt(layer.weight[0].numel()), generator=gen)
        scoring.query_proj.weight.mul_(2.0)
        model.detr_decoder.presence_head.layer3.bias.fill_(1.5)


def build(out_dir: Path, seed: int = 0, scale: str = "tiny") -> dict:
    """Write a randomly initialised SAM 3 of ``scale`` ("tiny" or "small"; seeded) and its
    processor to ``out_dir``. Returns ``{"format": "hf-sam3", "params": int}``."""
    if scale not in SIZES:
        raise ValueError(f"concept: unknown zoo scale {scale!r}; scales are {', '.join(SIZES)}")
    size = SIZES[scale]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = _train_tokenizer()
    grid = size.image // 14
    image_processor = Sam3ImageProcessor(
        size={"height": size.image, "width": size.image}, mask_size={"height": 4 * grid, "width": 4 * grid}
    )
    processor = Sam3Processor(image_processor=image_processor, tokenizer=tok)
    torch.manual_seed(seed)
    model = Sam3Model(sam3_config(size, tok)).eval()
    calibrate(model, seed)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return {"format": FORMAT, "params": sum(p.numel() for p in model.parameters())}
