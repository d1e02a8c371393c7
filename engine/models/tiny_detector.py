"""Tiny GroundingDINO: the real transformers architecture at toy size, saved like
``IDEA-Research/grounding-dino-tiny`` (config.json, model.safetensors,
preprocessor_config.json, BERT tokenizer files) so the detector backend loads both the
same way.

The BERT vocabulary is built here from ``tokenizer_corpus()`` and laid out like
``bert-base-uncased``: GroundingDINO's text masks look for the hard-coded ids
101 ``[CLS]``, 102 ``[SEP]``, 1012 ``.`` and 1029 ``?``, so those tokens must sit at
exactly those ids, or the per-phrase attention masks and position ids come out wrong
without any error.
"""

from __future__ import annotations

import json
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


def _add_processor_class(path: Path, name: str) -> None:
    """Record which processor the file belongs to, as the hub checkpoints do."""
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["processor_class"] = name
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build(out_dir: Path, seed: int = 0) -> dict:
    """Write a randomly initialised tiny GroundingDINO (seeded) to ``out_dir``.

    Returns ``{"format": "hf-grounding-dino", "params": int}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    vocab = _bert_layout_vocab(_corpus_wordpieces())
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=256)
    # 128 px keeps the forward pass in milliseconds; the real checkpoint uses 800/1333.
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 128})
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)

    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(tiny_config(len(vocab))).eval()
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
