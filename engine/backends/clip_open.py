"""open_clip CLIP as the engine's ``Clip``: global similarity (eq 10) and a CLIP-Surgery map (eq 9).

On disk: the open_clip Hugging Face layout, a directory with ``open_clip_config.json``
(``model_cfg``, ``preprocess_cfg``) and ``open_clip_model.safetensors`` (or
``open_clip_pytorch_model.bin``), loaded through open_clip's own ``local-dir:`` schema,
so a downloaded ``timm/vit_base_patch16_clip_224.openai`` directory loads the same way.

Images are resized to the model's input size without cropping (as CLIP Surgery's demo
does): a centre crop would cut off the borders the map has to cover, and the object
weighed in eq 10 can be anywhere in the view.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer

from ..errors import ModelLoadError
from ..models.checks import require_files

ROLE = "clip"
FORMAT = "open_clip (Hugging Face layout)"
CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = "open_clip_model.safetensors|open_clip_pytorch_model.bin"
PRECISIONS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
# CLIP Surgery's class-agnostic text: its embedding is what every prompt shares.
REDUNDANT_TEXT = ""


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[N, L, W] -> [N, heads, L, W / heads]."""
    n, length, width = x.shape
    return x.view(n, length, n_heads, width // n_heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """[N, heads, L, d] -> [N, L, heads * d]."""
    n, h, length, d = x.shape
    return x.transpose(1, 2).reshape(n, length, h * d)


def dual_attention(attn: torch.nn.MultiheadAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's usual self-attention and CLIP Surgery's value-value attention on the
    same normalised tokens x [N, L, W]; both [N, L, W], after the output projection.

    v-v attention sets q = k = v = the value projection, so each token attends to tokens
    with similar values instead of to the few global "sink" tokens q-k attention prefers,
    which is what makes patch tokens keep their own place's meaning.
    """
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (_heads(t, attn.num_heads) for t in (q, k, v))
    usual = F.scaled_dot_product_attention(q, k, v)
    vv = F.scaled_dot_product_attention(v, v, v)
    return attn.out_proj(_merge(vv)), attn.out_proj(_merge(usual))


def surgery_forward(visual: VisionTransformer, pixels: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``visual`` on normalised pixels [N, 3, S, S] with CLIP Surgery's dual path in the
    last ``depth`` blocks. Returns the usual pooled embedding [N, D] (equal to
    ``visual(pixels)``) and the surgery path's patch tokens [N, gh * gw, D], both projected
    to the joint space, not normalised.

    The surgery path starts from the tokens entering the first modified block and adds
    only each block's v-v attention output (no MLP), the attention being computed on the
    usual path's tokens, as in CLIP Surgery's ``ResidualAttentionBlock``.
    """
    x = visual._embeds(pixels)  # [N, 1 + gh * gw, W]: class token first
    blocks = visual.transformer.resblocks
    split = len(blocks) - min(depth, len(blocks))
    for block in blocks[:split]:
        x = block(x)
    surgery = x
    for block in blocks[split:]:
        vv, usual = dual_attention(block.attn, block.ln_1(x))
        surgery = surgery + block.ls_1(vv)
        x = x + block.ls_1(usual)
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    pooled, _ = visual._pool(x)
    tokens = visual.ln_post(surgery[:, 1:])
    return pooled @ visual.proj, tokens @ visual.proj


class OpenClipModel:
    """``Clip`` on an open_clip ``CLIP`` with a ViT image tower.

    ``similarity_maps`` is CLIP Surgery's: patch tokens through the v-v attention path
    of the last ``surgery_depth`` blocks (6, CLIP Surgery's choice for ViT-B/16),
    projected and L2-normalised per token; cosine similarity to the text's embedding
    minus the cosine similarity to the empty prompt "" ("feature surgery": the empty
    prompt stands for what all prompts share; unlike the mean over the batch's texts it
    keeps each map independent of which texts share the batch); min-max scaled to
    [0, 1] per map on the patch grid and upsampled bilinearly to the image size.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, surgery_depth: int = 6, batch_size: int = 32) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.surgery_depth = surgery_depth
        self.batch_size = max(1, int(batch_size))
        self.work = {"images": 0}  # int_engine.work: image-tower inputs
        visual = model.visual
        self.image_size = tuple(visual.image_size)
        self.mean = torch.tensor(visual.preprocess_cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(visual.preprocess_cfg["std"], dtype=torch.float32).view(1, 3, 1, 1)

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "cpu",
        dtype: str = "float32",
        *,
        surgery_depth: int = 6,
        batch_size: int = 32,
    ) -> "OpenClipModel":
        """Load the open_clip directory ``path`` offline (see the module docstring).

        surgery_depth: how many final blocks get the v-v path. batch_size: images or
        texts per forward pass.
        """
        root = require_files(ROLE, path, [CONFIG_FILE, WEIGHT_FILES], FORMAT)
        if dtype not in PRECISIONS:
            raise ModelLoadError(f"{ROLE}: unknown dtype {dtype!r} for {root} (expected one of {sorted(PRECISIONS)})")
        name = f"local-dir:{root}"
        try:
            # require_pretrained: open_clip only warns and keeps random weights when it
            # finds no checkpoint; pretrained_text=False: never fetch a tower from a hub.
            model = open_clip.create_model(
                name, precision=PRECISIONS[dtype], device=device, pretrained_text=False, require_pretrained=True
            )
            tokenizer = open_clip.get_tokenizer(name)
        except Exception as err:  # open_clip raises ValueError/RuntimeError/KeyError...; one message
            raise ModelLoadError(f"{ROLE}: cannot load {FORMAT} from {root}: {err}") from err
        _check_surgery_ready(model, root)
        return cls(model.eval(), tokenizer, surgery_depth=surgery_depth, batch_size=batch_size)

    @property
    def device(self) -> torch.device:
        return self.model.visual.proj.device

    def image_text_similarity(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> np.ndarray:
        """Cosine similarity of ``images[j]`` and ``texts[j]``: float32 [len(images)] in [-1, 1]."""
        _check_pairs(images, texts)
        if not len(images):
            return np.zeros((0,), np.float32)
        with torch.inference_mode():
            text = self._encode_texts(texts)
            chunks = [images[s : s + self.batch_size] for s in range(0, len(images), self.batch_size)]
            image = torch.cat([self.model.encode_image(self._pixels(c)).float() for c in chunks])
            self.work["images"] += len(images)
            sim = (F.normalize(image, dim=-1) * text).sum(dim=-1).clamp(-1.0, 1.0)
        return sim.cpu().numpy().astype(np.float32)

    def similarity_maps(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> list[np.ndarray]:
        """CLIP Surgery map of ``texts[j]`` over ``images[j]``: float32 [H, W] in [0, 1] at each
        image's size (see the class docstring)."""
        _check_pairs(images, texts)
        if not len(images):
            return []
        visual = self.model.visual
        gh, gw = visual.grid_size
        maps: list[np.ndarray] = []
        with torch.inference_mode():
            text = self._encode_texts([*texts, REDUNDANT_TEXT])
            text, redundant = text[:-1], text[-1:]
            for s in range(0, len(images), self.batch_size):
                chunk = images[s : s + self.batch_size]
                _, tokens = surgery_forward(visual, self._pixels(chunk), self.surgery_depth)
                self.work["images"] += len(chunk)
                tokens = F.normalize(tokens.float(), dim=-1)  # [B, gh * gw, D]
                # Cosine to the text minus cosine to "": the surgery (t - r) of CLIP Surgery.
                sim = torch.einsum("bpd,bd->bp", tokens, text[s : s + len(chunk)] - redundant)
                low, high = sim.amin(dim=1, keepdim=True), sim.amax(dim=1, keepdim=True)
                sim = (sim - low) / (high - low).clamp_min(1e-12)  # a flat map becomes all zeros
                grid = sim.view(len(chunk), 1, gh, gw)
                for j, image in enumerate(chunk):
                    up = F.interpolate(grid[j : j + 1], size=image.shape[:2], mode="bilinear", align_corners=False)
                    maps.append(up[0, 0].clamp(0.0, 1.0).cpu().numpy().astype(np.float32))
        return maps

    def _pixels(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 [H, W, 3] images -> normalised [B, 3, S, S] in the image tower's dtype."""
        out = []
        for image in images:
            x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None].float() / 255.0
            x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False, antialias=True)
            out.append(x.clamp(0.0, 1.0))
        x = (torch.cat(out) - self.mean.to(self.device)) / self.std.to(self.device)
        return x.to(self.model.visual.conv1.weight.dtype)

    def _encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised float32 [len(texts), D]; each distinct text is encoded once."""
        unique = list(dict.fromkeys(texts))
        rows = []
        for s in range(0, len(unique), self.batch_size):
            tokens = self.tokenizer(unique[s : s + self.batch_size]).to(self.device)
            rows.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1))
        table = torch.cat(rows)
        index = {t: i for i, t in enumerate(unique)}
        return table[torch.tensor([index[t] for t in texts], dtype=torch.long, device=self.device)]


def _check_surgery_ready(model: torch.nn.Module, root: Path) -> None:
    """The surgery map is written for open_clip's own ViT with standard attention blocks."""
    visual = getattr(model, "visual", None)
    ok = (
        isinstance(visual, VisionTransformer)
        and visual.attn_pool is None
        and all(
            isinstance(b.attn, torch.nn.MultiheadAttention) and b.attn.in_proj_weight is not None
            for b in visual.transformer.resblocks
        )
    )
    if not ok:
        raise ModelLoadError(
            f"{ROLE}: cannot load {FORMAT} from {root}: similarity maps need an open_clip VisionTransformer "
            f"image tower with standard attention blocks, got {type(visual).__name__}"
        )


def _check_pairs(images: Sequence[np.ndarray], texts: Sequence[str]) -> None:
    if len(images) != len(texts):
        raise ValueError(f"{ROLE}: {len(images)} images but {len(texts)} texts")
    for image in images:
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            got = getattr(image, "shape", type(image).__name__), getattr(image, "dtype", None)
            raise ValueError(f"{ROLE}: expected a uint8 [H, W, 3] RGB image, got {got}")
