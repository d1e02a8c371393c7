"""open_clip's private ViT steps that CLIP Surgery's forward (``clip_open.surgery_forward``) runs
its own blocks between: the only file that names them (``private_api``).

``VisionTransformer.forward`` is ``_embeds`` (patch embedding, class token first, positional
embedding, patch dropout, ``ln_pre``), the transformer blocks, then ``_pool`` (``ln_post`` and the
pooling its config asks for) and ``proj``. The surgery path replaces only the blocks, so it takes
the first and the last step from open_clip itself rather than a copy that could drift from the
tower's config (pool type, final LN after pooling, attentional pool). No public equivalent
exists in open_clip 3.3.0: ``forward_intermediates`` runs every block itself.
"""

from __future__ import annotations

import torch

from .private_api import private

DIST = "open_clip_torch"
# The private names used here, as tests/backends/test_private_api_shims.py checks them on the installed version.
SYMBOLS = ("open_clip.transformer.VisionTransformer._embeds", "open_clip.transformer.VisionTransformer._pool")


def check_vit(visual: torch.nn.Module) -> None:
    """Raise ``PrivateAPIError`` now, at load, when ``visual`` lacks a step the shim calls."""
    vit_step(visual, "_embeds")
    vit_step(visual, "_pool")


def vit_step(visual: torch.nn.Module, name: str):
    """The bound private step ``name`` of open_clip's ``VisionTransformer`` ``visual``."""
    return private(visual, name, DIST, f"open_clip.transformer.VisionTransformer.{name}")


def vit_embeds(visual: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Normalised pixels [N, 3, S, S] -> the tokens entering the first block [N, 1 + gh * gw, W],
    class token first (open_clip's ``VisionTransformer._embeds``)."""
    return vit_step(visual, "_embeds")(pixels)


def vit_pool(visual: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The last block's tokens [N, 1 + gh * gw, W] -> (pooled [N, W], tokens), not projected
    (open_clip's ``VisionTransformer._pool``)."""
    return vit_step(visual, "_pool")(x)
