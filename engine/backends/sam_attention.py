"""SAM's mask-decoder attention through ``F.scaled_dot_product_attention``.

segment-anything's decoder ``Attention`` materialises the [N, heads, tokens, tokens] score
matrix, scales it, softmaxes it and multiplies it by the values: four kernels and a buffer per
attention, 3 x depth + 1 attentions per prompt batch. ``scaled_dot_product_attention`` is the
same arithmetic in one fused kernel (flash / memory-efficient on GPU, a fused loop on CPU), as
segment-anything-fast does. The weights, the state-dict keys and the module tree are unchanged:
only the class of each decoder attention is switched, so checkpoints load as before and the
exported and compiled graphs run the same definition (``sam_decode.PromptDecoder``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.transformer import Attention, TwoWayTransformer


class SdpaAttention(Attention):
    """segment-anything's decoder ``Attention`` (same parameters) with a fused attention kernel.

    q: [N, Tq, C]; k, v: [N, Tk, C] -> [N, Tq, C]; heads split as segment-anything does, scaled
    by 1 / sqrt(C / heads).
    """

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        v = self._separate_heads(self.v_proj(v), self.num_heads)
        return self.out_proj(self._recombine_heads(F.scaled_dot_product_attention(q, k, v)))


def use_sdpa(transformer: TwoWayTransformer) -> int:
    """Switch every decoder ``Attention`` under ``transformer`` to ``SdpaAttention`` in place;
    returns how many were switched."""
    switched = 0
    for module in transformer.modules():
        if type(module) is Attention:
            module.__class__ = SdpaAttention
            switched += 1
    return switched
