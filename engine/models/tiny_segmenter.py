"""Tiny SAM for the zoo: segment-anything's own classes at toy sizes, randomly initialised.

Two scales: ``tiny`` (toy widths, for tests) and ``small`` (a ViT-B-shaped encoder, 768 wide
with 12 heads, at 256 px and fewer blocks, with the real prompt encoder and mask decoder),
for throughput measurements in which the model's compute, not Python, dominates.

Written as a real SAM directory is read (``engine.backends.segment_sam``): the state
dict as ``sam.pth`` plus ``sam_arch.json`` with the full architecture, built by the same
``build_sam`` that builds vit_h.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..backends.segment_sam import ARCH_FILE, SamArch, build_sam

TINY_ARCH = SamArch(
    encoder_embed_dim=64,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=(1,),
    image_size=128,
    patch_size=16,
    # 128 / 16 = 8x8 embedding; windows of 4 keep windowed attention really windowed.
    encoder_window_size=4,
    prompt_embed_dim=32,
    decoder_depth=2,
    decoder_mlp_dim=64,
    decoder_num_heads=2,
    iou_head_hidden_dim=32,
)

# vit_b's widths (768, 12 heads of 64, MLP x4) with half its blocks, global attention every
# third block as in vit_b ([2, 5, 8, 11] -> [2, 5]); the prompt encoder and mask decoder keep
# the published defaults (256 wide, 2 decoder layers, MLP 2048, 8 heads).
SMALL_ARCH = SamArch(
    encoder_embed_dim=768,
    encoder_depth=6,
    encoder_num_heads=12,
    encoder_global_attn_indexes=(2, 5),
    # SamPredictor resizes the long side to this; 256 / 16 = a 16x16 embedding.
    image_size=256,
    patch_size=16,
    # vit_b's 14 would pad the 16x16 grid to 28x28 (3x the tokens); windows of 8 tile it exactly.
    encoder_window_size=8,
)

ARCHS = {"tiny": TINY_ARCH, "small": SMALL_ARCH}


def build(out_dir: Path, seed: int = 0, scale: str = "tiny") -> dict:
    """Write a random SAM of ``scale`` ("tiny" or "small"; ``sam.pth`` + ``sam_arch.json``) to ``out_dir``."""
    if scale not in ARCHS:
        raise ValueError(f"segmenter: unknown zoo scale {scale!r}; scales are {', '.join(ARCHS)}")
    arch = ARCHS[scale]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    sam = build_sam(arch)
    # segment-anything zero-initialises the absolute and relative position embeddings;
    # a trained model has learnt ones, and without them a random encoder is blind to
    # where things are, so give them small random values.
    with torch.no_grad():
        for name, param in sam.image_encoder.named_parameters():
            if name == "pos_embed" or name.endswith(("rel_pos_h", "rel_pos_w")):
                param.normal_(0.0, 0.5)
    torch.save(sam.state_dict(), out_dir / "sam.pth")
    (out_dir / ARCH_FILE).write_text(json.dumps(arch.to_json(), indent=2) + "\n")
    return {"format": "segment-anything", "params": sum(p.numel() for p in sam.parameters())}
