"""Tiny CLIP for the zoo: open_clip's ``CLIP`` at toy sizes, randomly initialised.

Written in the open_clip Hugging Face layout that ``open_clip.create_model("local-dir:...")``
reads (and that e.g. ``timm/vit_base_patch16_clip_224.openai`` ships):
``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and
``open_clip_model.safetensors``. The tokenizer is open_clip's packaged BPE
(``SimpleTokenizer``, vocab 49408), which needs no file in the directory.

Two scales: ``tiny`` (toy widths, for tests) and ``small`` (ViT-B/16's shape with fewer
layers), for throughput measurements in which the model's compute dominates.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIP
from safetensors.torch import save_file

MODEL_CFG = {
    "embed_dim": 32,
    # 64 px / 8 px patches = an 8x8 grid of tokens for the similarity map; heads of 32.
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 64, "head_width": 32, "layers": 2},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 2},
}

# ViT-B-16's model_cfg with 6 of the 12 layers in each tower: 224 px / 16 px patches = a
# 14x14 grid, 12 vision heads of 64, the 512-wide 8-head text tower, 512-d joint embedding.
SMALL_MODEL_CFG = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 224, "patch_size": 16, "width": 768, "head_width": 64, "layers": 6},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 6},
}

MODEL_CFGS = {"tiny": MODEL_CFG, "small": SMALL_MODEL_CFG}


def build(out_dir: Path, seed: int = 0, scale: str = "tiny") -> dict:
    """Write a random CLIP of ``scale`` ("tiny" or "small"; ``open_clip_config.json`` +
    ``open_clip_model.safetensors``) to ``out_dir``."""
    if scale not in MODEL_CFGS:
        raise ValueError(f"clip: unknown zoo scale {scale!r}; scales are {', '.join(MODEL_CFGS)}")
    model_cfg = MODEL_CFGS[scale]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = CLIP(**json.loads(json.dumps(model_cfg)))  # a deep copy: CLIP may edit the dicts
    # Stored as float16: the 49408-word embedding would otherwise make the tiny file 6 MB
    # (and the small one twice its size); the loader casts to its own dtype, as for any
    # real checkpoint.
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "open_clip_model.safetensors"))
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD)},
    }
    (out_dir / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return {"format": "open_clip-hf", "params": sum(p.numel() for p in model.parameters())}
