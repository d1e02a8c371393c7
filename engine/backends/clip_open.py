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
from .open_clip_shim import check_vit, vit_embeds, vit_pool
from .private_api import PrivateAPIError

ROLE = "clip"
FORMAT = "open_clip (Hugging Face layout)"
CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = "open_clip_model.safetensors|open_clip_pytorch_model.bin"
PRECISIONS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
# CLIP Surgery's class-agnostic text: its embedding is what every prompt shares.
REDUNDANT_TEXT = ""
# CLIP's ImageNet prompt templates, the ensemble CLIP Surgery (and the authors' Spatial CLIP,
# ``encode_text_with_prompt_ensemble``) encodes every text with: the mean of the normalised
# embeddings of the text in each template, normalised.
PROMPT_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.", "a painting of a {}.",
    "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.",
    "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.",
    "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.", "a {} in a video game.",
    "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.", "a photo of a {}.",
    "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.",
    "a sketch of the {}.", "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.",
    "a jpeg corrupted photo of the {}.", "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.",
    "a photo of the small {}.", "a photo of the weird {}.", "the cartoon {}.", "art of the {}.",
    "a drawing of the {}.", "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.",
    "a dark photo of a {}.", "itap of a {}.", "graffiti of the {}.", "a toy {}.",
    "itap of my {}.", "a photo of a cool {}.", "a photo of a small {}.", "a tattoo of the {}.",
    "there is a {} in the scene.", "there is the {} in the scene.", "this is a {} in the scene.",
    "this is the {} in the scene.", "this is one {} in the scene.",
)  # fmt: skip
SURGERY_ATTENTIONS = ("kk", "vv")
FEATURE_NORMS = ("tokens", "channels")
_TEXT_CACHE_SIZE = 4096


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[N, L, W] -> [N, heads, L, W / heads]."""
    n, length, width = x.shape
    return x.view(n, length, n_heads, width // n_heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """[N, heads, L, d] -> [N, L, heads * d]."""
    n, h, length, d = x.shape
    return x.transpose(1, 2).reshape(n, length, h * d)


def dual_attention(attn: torch.nn.MultiheadAttention, x: torch.Tensor, strategy: str = "kk") -> tuple[torch.Tensor, torch.Tensor]:
    """The block's usual self-attention and CLIP Surgery's self-self attention on the same
    normalised tokens x [N, L, W]; both [N, L, W], after the output projection.

    ``strategy="kk"`` (the authors' ``clip_attn_qkv_strategy``) sets the query to the key:
    softmax(k kᵀ) v; ``"vv"`` (CLIP Surgery's original) sets query and key to the value:
    softmax(v vᵀ) v. Either way each token attends to tokens like itself instead of to the few
    global "sink" tokens q-k attention prefers, so patch tokens keep their own place's meaning.
    """
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (_heads(t, attn.num_heads) for t in (q, k, v))
    usual = F.scaled_dot_product_attention(q, k, v)
    selfish = F.scaled_dot_product_attention(k, k, v) if strategy == "kk" else F.scaled_dot_product_attention(v, v, v)
    return attn.out_proj(_merge(selfish)), attn.out_proj(_merge(usual))


def surgery_forward(
    visual: VisionTransformer, pixels: torch.Tensor, depth: int, strategy: str = "kk"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``visual`` on normalised pixels [N, 3, S, S] with CLIP Surgery's dual path in the
    last ``depth`` blocks. Returns the usual pooled embedding [N, D] (equal to
    ``visual(pixels)``) and the surgery path's patch tokens [N, gh * gw, D], both projected
    to the joint space, not normalised.

    The embedding before the blocks and the pooling after them are open_clip's own steps
    (``open_clip_shim``). The surgery path starts from the tokens entering the first modified
    block and adds only each block's self-self attention output (no MLP), the attention being
    computed on the usual path's tokens, as in CLIP Surgery's ``ResidualAttentionBlock``.
    """
    x = vit_embeds(visual, pixels)  # [N, 1 + gh * gw, W]: class token first
    blocks = visual.transformer.resblocks
    split = len(blocks) - min(depth, len(blocks))
    for block in blocks[:split]:
        x = block(x)
    surgery = x
    for block in blocks[split:]:
        selfish, usual = dual_attention(block.attn, block.ln_1(x), strategy)
        surgery = surgery + block.ls_1(selfish)
        x = x + block.ls_1(usual)
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    pooled, _ = vit_pool(visual, x)
    tokens = visual.ln_post(surgery[:, 1:])
    return pooled @ visual.proj, tokens @ visual.proj


class OpenClipModel:
    """``Clip`` on an open_clip ``CLIP`` with a ViT image tower.

    ``image_text_similarity`` (eq 10) is plain CLIP on the raw text. ``similarity_maps`` (eq 9)
    is Spatial CLIP as the authors ran CLIP Surgery (ProMaC's ``clip_surgery``): patch tokens
    through the self-self attention path of the last ``surgery_depth`` blocks (6, CLIP Surgery's
    choice for ViT-B/16) with query = key (``surgery_attention="kk"``, the authors' setting;
    "vv" is CLIP Surgery's original), projected; each feature normalised over the tokens
    (``feature_norm="tokens"``, as CLIP Surgery's and the authors' code divide by the norm over
    dim 1; "channels" normalises each token instead); the similarity to the text's embedding
    minus the similarity to the redundant text "" ("feature surgery"), texts encoded with CLIP's
    prompt-template ensemble (``prompt_ensemble``); min-max over the patches. Given background
    names, their maps (each min-max normalised, then averaged) are subtracted and the difference
    min-max normalised again (FgBgHm). Maps come back on the patch grid [gh, gw].
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        surgery_depth: int = 6,
        batch_size: int = 32,
        surgery_attention: str = "kk",
        prompt_ensemble: bool = True,
        feature_norm: str = "tokens",
    ) -> None:
        if surgery_attention not in SURGERY_ATTENTIONS or feature_norm not in FEATURE_NORMS:
            raise ValueError(
                f"{ROLE}: surgery_attention must be one of {SURGERY_ATTENTIONS} and feature_norm one of "
                f"{FEATURE_NORMS}, got {surgery_attention!r}, {feature_norm!r}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.surgery_depth = surgery_depth
        self.batch_size = max(1, int(batch_size))
        self.surgery_attention = surgery_attention
        self.prompt_ensemble = bool(prompt_ensemble)
        self.feature_norm = feature_norm
        self.work = {"images": 0}  # int_engine.work: image-tower inputs
        self._texts: dict[tuple[str, bool], torch.Tensor] = {}  # encoded texts; names repeat over iterations
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
        surgery_attention: str = "kk",
        prompt_ensemble: bool = True,
        feature_norm: str = "tokens",
        quick_gelu: bool | None = None,
    ) -> "OpenClipModel":
        """Load the open_clip directory ``path`` offline (see the module docstring).

        surgery_depth: how many final blocks get the surgery path. batch_size: images per
        forward pass. surgery_attention, prompt_ensemble, feature_norm: see the class.
        quick_gelu: build the towers with QuickGELU (OpenAI's CLIP was trained with it, and
        open_clip takes it only from ``model_cfg.quick_gelu``). None: as the config says, and a
        checkpoint named for OpenAI's weights without it is refused.
        """
        root = require_files(ROLE, path, [CONFIG_FILE, WEIGHT_FILES], FORMAT)
        if dtype not in PRECISIONS:
            raise ModelLoadError(f"{ROLE}: unknown dtype {dtype!r} for {root} (expected one of {sorted(PRECISIONS)})")
        wants_quick = _check_quick_gelu(root, quick_gelu)
        name = f"local-dir:{root}"
        try:
            # require_pretrained: open_clip only warns and keeps random weights when it
            # finds no checkpoint; pretrained_text=False: never fetch a tower from a hub.
            model = open_clip.create_model(
                name,
                precision=PRECISIONS[dtype],
                device=device,
                pretrained_text=False,
                require_pretrained=True,
                force_quick_gelu=bool(quick_gelu),
            )
            tokenizer = open_clip.get_tokenizer(name)
        except Exception as err:  # open_clip raises ValueError/RuntimeError/KeyError...; one message
            raise ModelLoadError(f"{ROLE}: cannot load {FORMAT} from {root}: {err}") from err
        _check_surgery_ready(model, root)
        if wants_quick and not _uses_quick_gelu(model):
            raise ModelLoadError(f"{ROLE}: {root}: asked for QuickGELU but open_clip built another activation")
        try:
            return cls(
                model.eval(),
                tokenizer,
                surgery_depth=surgery_depth,
                batch_size=batch_size,
                surgery_attention=surgery_attention,
                prompt_ensemble=prompt_ensemble,
                feature_norm=feature_norm,
            )
        except ValueError as err:
            raise ModelLoadError(f"{err} ({root})") from None

    @property
    def device(self) -> torch.device:
        return self.model.visual.proj.device

    def image_text_similarity(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> np.ndarray:
        """Cosine similarity of ``images[j]`` and ``texts[j]`` (the raw text): float32 [len(images)] in [-1, 1]."""
        _check_pairs(images, texts)
        if not len(images):
            return np.zeros((0,), np.float32)
        with torch.inference_mode():
            text = self._encode_texts(texts, ensemble=False)
            chunks = [images[s : s + self.batch_size] for s in range(0, len(images), self.batch_size)]
            image = torch.cat([self.model.encode_image(self._pixels(c)).float() for c in chunks])
            self.work["images"] += len(images)
            sim = (F.normalize(image, dim=-1) * text).sum(dim=-1).clamp(-1.0, 1.0)
        return sim.cpu().numpy().astype(np.float32)

    def similarity_maps(
        self, images: Sequence[np.ndarray], texts: Sequence[str], backgrounds: Sequence[Sequence[str]] | None = None
    ) -> list[np.ndarray]:
        """Spatial CLIP's map of ``texts[j]`` over ``images[j]``, minus that of ``backgrounds[j]``
        when given: float32 [gh, gw] in [0, 1] on the patch grid (see the class docstring)."""
        _check_pairs(images, texts)
        backgrounds = [list(b) for b in backgrounds] if backgrounds is not None else [[] for _ in texts]
        if len(backgrounds) != len(texts):
            raise ValueError(f"{ROLE}: {len(texts)} texts but {len(backgrounds)} background lists")
        if not len(images):
            return []
        visual = self.model.visual
        gh, gw = visual.grid_size
        maps: list[np.ndarray] = []
        with torch.inference_mode():
            names = list(dict.fromkeys([*texts, *(b for bs in backgrounds for b in bs)]))
            table = self._encode_texts([REDUNDANT_TEXT, *names], ensemble=self.prompt_ensemble)
            redundant, rows = table[:1], {n: i + 1 for i, n in enumerate(names)}
            for s in range(0, len(images), self.batch_size):
                chunk = images[s : s + self.batch_size]
                pooled, tokens = surgery_forward(visual, self._pixels(chunk), self.surgery_depth, self.surgery_attention)
                self.work["images"] += len(chunk)
                tokens = self._normalise_tokens(pooled.float(), tokens.float())  # [B, P, D]
                for j in range(len(chunk)):
                    fg = _minmax(tokens[j] @ (table[rows[texts[s + j]]] - redundant[0]))
                    bgs = backgrounds[s + j]
                    if bgs:
                        bg = torch.stack([_minmax(tokens[j] @ (table[rows[b]] - redundant[0])) for b in bgs]).mean(0)
                        fg = _minmax(fg - bg)
                    maps.append(fg.view(gh, gw).cpu().numpy().astype(np.float32))
        return maps

    def _normalise_tokens(self, pooled: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The patch tokens [B, P, D], each feature divided by its norm over the class token and
        the patches (``feature_norm="tokens"``), or each token by its own norm ("channels")."""
        if self.feature_norm == "channels":
            return F.normalize(tokens, dim=-1)
        every = torch.cat([pooled[:, None], tokens], dim=1)
        return tokens / every.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def _encode_texts(self, texts: Sequence[str], ensemble: bool) -> torch.Tensor:
        """L2-normalised float32 [len(texts), D]: each text alone, or with ``ensemble`` the
        normalised mean of its ``PROMPT_TEMPLATES`` embeddings; each distinct text encoded once
        and kept (bounded) for later calls."""
        todo = [t for t in dict.fromkeys(texts) if (t, ensemble) not in self._texts]
        if len(self._texts) + len(todo) > _TEXT_CACHE_SIZE:
            self._texts.clear()
        prompts = [tpl.format(t) for t in todo for tpl in PROMPT_TEMPLATES] if ensemble else list(todo)
        rows = []
        for s in range(0, len(prompts), 256):
            tokens = self.tokenizer(prompts[s : s + 256]).to(self.device)
            rows.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1))
        if rows:
            encoded = torch.cat(rows)
            if ensemble:
                encoded = F.normalize(encoded.view(len(todo), len(PROMPT_TEMPLATES), -1).mean(dim=1), dim=-1)
            for t, row in zip(todo, encoded):
                self._texts[(t, ensemble)] = row
        return torch.stack([self._texts[(t, ensemble)] for t in texts])

    def _pixels(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 [H, W, 3] images -> normalised [B, 3, S, S] in the image tower's dtype."""
        out = []
        for image in images:
            x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None].float() / 255.0
            x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False, antialias=True)
            out.append(x.clamp(0.0, 1.0))
        x = (torch.cat(out) - self.mean.to(self.device)) / self.std.to(self.device)
        return x.to(self.model.visual.conv1.weight.dtype)


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
    try:
        check_vit(visual)  # the open_clip steps surgery_forward calls exist in this version
    except PrivateAPIError as err:
        raise ModelLoadError(f"{ROLE}: cannot load {FORMAT} from {root}: {err}") from None


def _check_pairs(images: Sequence[np.ndarray], texts: Sequence[str]) -> None:
    if len(images) != len(texts):
        raise ValueError(f"{ROLE}: {len(images)} images but {len(texts)} texts")
    for image in images:
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            got = getattr(image, "shape", type(image).__name__), getattr(image, "dtype", None)
            raise ValueError(f"{ROLE}: expected a uint8 [H, W, 3] RGB image, got {got}")


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalised to [0, 1]; a flat input becomes zeros."""
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def _uses_quick_gelu(model: torch.nn.Module) -> bool:
    return any(type(m).__name__ == "QuickGELU" for m in model.visual.modules())


def _check_quick_gelu(root: Path, quick_gelu: bool | None) -> bool:
    """Whether the model must be built with QuickGELU; refuses OpenAI's weights without it.

    OpenAI's CLIP was trained with QuickGELU; open_clip builds it only when ``model_cfg`` says
    ``quick_gelu: true`` (for a local directory it cannot know the weights are OpenAI's), and
    GELU on those weights gives quietly worse features. A checkpoint named for OpenAI's weights
    (``timm/vit_base_patch16_clip_224.openai``, ``openai/...`` in its path or config) needs it.
    """
    import json

    try:
        config = json.loads((root / CONFIG_FILE).read_text())
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{ROLE}: cannot read {root / CONFIG_FILE}: {err}") from None
    in_config = bool((config.get("model_cfg") or {}).get("quick_gelu", False))
    if quick_gelu is not None:
        return bool(quick_gelu) or in_config
    named_openai = (
        "openai" in str(root.resolve()).lower()
        or "openai" in json.dumps({k: v for k, v in config.items() if k != "preprocess_cfg"}).lower()
    )
    if named_openai and not in_config:
        raise ModelLoadError(
            f"{ROLE}: {root} holds OpenAI's CLIP weights (by its name) but {CONFIG_FILE} has no "
            '"quick_gelu": true in model_cfg: open_clip would build GELU, not the QuickGELU they were '
            "trained with, and every similarity would be off. Add it to model_cfg, or set "
            "models.clip.options.quick_gelu: true (false to run GELU anyway)"
        )
    return in_config
