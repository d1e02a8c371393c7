"""Tiny GroundingDINO: the real transformers architecture at toy size, saved like
``IDEA-Research/grounding-dino-tiny`` (config.json, model.safetensors,
preprocessor_config.json, BERT tokenizer files) so the detector backend loads both the
same way.

The BERT vocabulary is built here from ``tokenizer_corpus()`` and laid out like
``bert-base-uncased``: GroundingDINO's text masks look for the hard-coded ids
101 ``[CLS]``, 102 ``[SEP]``, 1012 ``.`` and 1029 ``?``, so those tokens must sit at
exactly those ids, or the per-phrase attention masks and position ids come out wrong
without any error.

Two scales: ``tiny`` (every width a few dozen, for tests) and ``small`` (the real Swin-T
backbone, a 4-layer BERT-base-wide text encoder, d_model 256 with fewer layers and queries
than the published model), for throughput measurements in which the model's compute dominates.
"""

from __future__ import annotations

import json
import math
import string
from collections import Counter
from pathlib import Path

import torch
from tokenizers import normalizers, pre_tokenizers
from transformers import (
    BertConfig,
    BertTokenizer,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessor,
    GroundingDinoProcessor,
    SwinConfig,
)

from .corpus import tokenizer_corpus

# The ids GroundingDINO's modelling code hard-codes (SPECIAL_TOKENS there).
SPECIAL_IDS = {"[CLS]": 101, "[SEP]": 102, ".": 1012, "?": 1029}
# bert-base-uncased puts the printable ASCII characters (no upper case) from id 999 on;
# with that layout "." lands on 1012 and "?" on 1029 by construction.
_FIRST_CHAR_ID = 999
_ASCII_LOWER = [c for c in string.printable[:94] if not c.isupper()]


def _bert_layout_vocab(pieces: dict[str, int]) -> dict[str, int]:
    """``bert-base-uncased``'s id layout: [PAD] 0, [unused*] up to 99, [UNK] 100,
    [CLS] 101, [SEP] 102, [MASK] 103, [unused*] up to 998, characters from 999,
    then the locally built word pieces in their given order."""
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += [f"[unused{i}]" for i in range(99, 99 + _FIRST_CHAR_ID - len(tokens))]
    assert len(tokens) == _FIRST_CHAR_ID
    tokens += sorted(_ASCII_LOWER, key=ord)
    seen = set(tokens)
    for tok, _ in sorted(pieces.items(), key=lambda kv: kv[1]):
        if tok not in seen:
            tokens.append(tok)
            seen.add(tok)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    for tok, idx in SPECIAL_IDS.items():
        assert vocab[tok] == idx, (tok, vocab[tok], idx)
    return vocab


def _corpus_wordpieces() -> dict[str, int]:
    """An uncased WordPiece vocabulary from the engine's own sentences: every whole word
    of the corpus, most frequent first, plus a ``##`` continuation for each character so
    that an unseen word still splits into pieces instead of becoming [UNK].

    Counted rather than trained with ``tokenizers.trainers.WordPieceTrainer``: that
    trainer breaks ties in a different order in each process, so the vocabulary (and
    with it the saved files) would change from one build to the next.
    """
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for line in tokenizer_corpus():
        counts.update(word for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(line)))
    words = sorted(counts, key=lambda w: (-counts[w], w))
    pieces = ["##" + c for c in sorted(_ASCII_LOWER, key=ord)]
    return {tok: i for i, tok in enumerate(words + pieces)}


def tiny_config(vocab_size: int) -> GroundingDinoConfig:
    """Swin-T/BERT GroundingDINO shrunk: every width a few dozen, one layer per stage."""
    backbone = SwinConfig(
        image_size=128,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        out_indices=[2, 3, 4],
        out_features=["stage2", "stage3", "stage4"],
    )
    text = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    return GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        # GroupNorm(32, d_model) in the input projections: d_model must be a multiple of 32.
        d_model=32,
        num_queries=20,
        encoder_layers=1,
        encoder_ffn_dim=64,
        encoder_attention_heads=2,
        # At least two: the head ties bbox_embed.1.. to bbox_embed.0, and with a single
        # decoder layer transformers finds nothing to tie and refuses to build the model.
        decoder_layers=2,
        decoder_ffn_dim=64,
        decoder_attention_heads=2,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=256,
        architectures=["GroundingDinoForObjectDetection"],
    )


def small_config(vocab_size: int) -> GroundingDinoConfig:
    """grounding-dino-tiny's shape with fewer layers: its Swin-T backbone as published, a BERT
    as wide as bert-base with 4 of its 12 layers, d_model 256 with 3 of the 6 encoder and
    decoder layers and 300 of the 900 queries."""
    backbone = SwinConfig(
        image_size=224,
        embed_dim=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        out_indices=[2, 3, 4],
        out_features=["stage2", "stage3", "stage4"],
    )
    text = BertConfig(
        vocab_size=vocab_size,
        hidden_size=768,
        num_hidden_layers=4,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
    )
    return GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=256,
        num_queries=300,
        encoder_layers=3,
        encoder_ffn_dim=2048,
        encoder_attention_heads=8,
        decoder_layers=3,
        decoder_ffn_dim=2048,
        decoder_attention_heads=8,
        encoder_n_points=4,
        decoder_n_points=4,
        max_text_len=256,
        architectures=["GroundingDinoForObjectDetection"],
    )


CONFIGS = {"tiny": tiny_config, "small": small_config}
# Each scale's random query-token logits are set to about N(mean, std) (see
# ``calibrate_logits``): with the published 0.35 box threshold a view gets 0-3 boxes (of 20
# queries, tiny) or a few (of 300, small), as from a trained model, instead of most queries.
# Left random, 15-19 of the tiny model's 20 queries passed on every view, each a SAM box
# prompt, so SAM decoding of dozens of boxes per view dominated every run.
LOGITS = {"tiny": (-2.5, 1.0), "small": (-4.0, 1.0)}


def calibrate_logits(model: GroundingDinoForObjectDetection, mean: float, std: float) -> None:
    """Shift and narrow the random model's class logits to about N(mean, std), in place.

    A logit is the dot product of two LayerNorm outputs, the decoder's final ``layer_norm``
    (queries) and the last encoder layer's ``text_enhancer_layer.layer_norm_after`` (tokens):
    sum_i (a n_i + c)(e m_i + b) with n, m normalised (zero mean, unit variance over the
    d_model dimensions). With constant LayerNorm weights a, e and biases c, b, the cross terms
    a b sum(n) and c e sum(m) vanish, leaving a e sum(n m) (spread ~ a e sqrt(d) for unrelated
    n, m) plus d c b. Random weights leave a = e = 1 and b = c = 0: logits of spread ~ 16
    around 0, so half the 300 queries of every image would pass any threshold below 0.5 and
    each would become a SAM box prompt. The decoder norm only feeds the class logits and the
    box head, whose last layer starts at zero, so boxes are unchanged.
    """
    d = model.config.d_model
    queries = model.model.decoder.layer_norm
    tokens = model.model.encoder.layers[-1].text_enhancer_layer.layer_norm_after
    with torch.no_grad():
        queries.weight.fill_(std / math.sqrt(d))
        queries.bias.fill_(1.0)
        tokens.weight.fill_(1.0)
        tokens.bias.fill_(mean / d)


# The image processor's resize (shortest_edge, longest_edge): 128 px keeps the tiny forward
# pass in milliseconds; the small one is the published 800/1333 scaled to SAM's 256 px (a
# batch is padded to its largest image, so the long side bounds every image's cost).
IMAGE_SIDES = {"tiny": (128, 128), "small": (256, 427)}


def _add_processor_class(path: Path, name: str) -> None:
    """Record which processor the file belongs to, as the hub checkpoints do."""
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["processor_class"] = name
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build(out_dir: Path, seed: int = 0, scale: str = "tiny") -> dict:
    """Write a randomly initialised GroundingDINO of ``scale`` ("tiny" or "small"; seeded) to ``out_dir``.

    Returns ``{"format": "hf-grounding-dino", "params": int}``.
    """
    if scale not in CONFIGS:
        raise ValueError(f"detector: unknown zoo scale {scale!r}; scales are {', '.join(CONFIGS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    vocab = _bert_layout_vocab(_corpus_wordpieces())
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=256)
    shortest, longest = IMAGE_SIDES[scale]
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": shortest, "longest_edge": longest})
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)

    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(CONFIGS[scale](len(vocab))).eval()
    calibrate_logits(model, *LOGITS[scale])
    model.save_pretrained(out_dir, safe_serialization=True)
    # Saved part by part, not as one processor: transformers 5 would fold the image
    # settings into processor_config.json, while the published checkpoint (and older
    # transformers) keeps them in preprocessor_config.json.
    image_processor.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    for name in ("preprocessor_config.json", "tokenizer_config.json"):
        _add_processor_class(out_dir / name, type(processor).__name__)
    # The published checkpoint ships vocab.txt beside tokenizer.json; slow-tokenizer
    # tooling reads it.
    (out_dir / "vocab.txt").write_text("".join(t + "\n" for t in sorted(vocab, key=vocab.get)), encoding="utf-8")
    return {"format": "hf-grounding-dino", "params": sum(p.numel() for p in model.parameters())}
