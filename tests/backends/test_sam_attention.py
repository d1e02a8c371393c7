"""The mask decoder's fused attention (``sam_attention``) against segment-anything's own."""

from __future__ import annotations

import copy

import pytest
import torch
from segment_anything.modeling import image_encoder
from segment_anything.modeling.transformer import Attention, TwoWayTransformer

from int_engine.backends.sam_attention import SdpaAttention, SdpaEncoderAttention, use_sdpa
from int_engine.backends.segment_sam import PUBLISHED, build_sam


@pytest.mark.parametrize("downsample", [1, 2])
@pytest.mark.parametrize("tokens", [(7, 64), (64, 7), (1, 5)])
def test_fused_attention_equals_segment_anythings(downsample, tokens):
    torch.manual_seed(0)
    plain = Attention(32, num_heads=4, downsample_rate=downsample).eval()
    fused = copy.deepcopy(plain)
    fused.__class__ = SdpaAttention
    tq, tk = tokens
    q, k, v = torch.randn(3, tq, 32), torch.randn(3, tk, 32), torch.randn(3, tk, 32)
    with torch.inference_mode():
        want, got = plain(q, k, v), fused(q, k, v)
    assert got.shape == want.shape == (3, tq, 32)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rel_pos", [True, False])
@pytest.mark.parametrize("grid", [(7, 7), (4, 6)])  # a window; a non-square global grid
def test_fused_encoder_attention_equals_segment_anythings(rel_pos, grid):
    torch.manual_seed(0)
    plain = image_encoder.Attention(48, num_heads=3, use_rel_pos=rel_pos, input_size=grid).eval()
    if rel_pos:  # zero-initialised in segment-anything: give them values a trained model has
        torch.nn.init.normal_(plain.rel_pos_h, std=0.5)
        torch.nn.init.normal_(plain.rel_pos_w, std=0.5)
    fused = copy.deepcopy(plain)
    fused.__class__ = SdpaEncoderAttention
    x = torch.randn(2, *grid, 48)
    with torch.inference_mode():
        want, got = plain(x), fused(x)
    assert got.shape == want.shape == (2, *grid, 48)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_every_attention_is_switched_and_the_weights_keep_their_names():
    arch = PUBLISHED["vit_h"]  # on meta: the structure only, no weights are made
    with torch.device("meta"):
        sam = build_sam(arch)
        plain = TwoWayTransformer(arch.decoder_depth, arch.prompt_embed_dim, arch.decoder_num_heads, arch.decoder_mlp_dim)
    attentions = [m for m in sam.mask_decoder.transformer.modules() if isinstance(m, Attention)]
    assert len(attentions) == 3 * arch.decoder_depth + 1
    assert all(type(m) is SdpaAttention for m in attentions)
    blocks = [m for m in sam.image_encoder.modules() if isinstance(m, image_encoder.Attention)]
    assert len(blocks) == arch.encoder_depth and all(type(m) is SdpaEncoderAttention for m in blocks)
    assert list(sam.mask_decoder.transformer.state_dict()) == list(plain.state_dict())
    assert use_sdpa(sam) == 0  # already switched: nothing left to do


@pytest.mark.parametrize("cls, rel_pos", [(SdpaEncoderAttention, True), (SdpaEncoderAttention, False), (SdpaAttention, False)])
def test_the_fused_kernel_gets_4d_tensors_and_a_bias_in_qs_dtype(cls, rel_pos, monkeypatch):
    """The GPU's fused kernels (flash, memory-efficient, cuDNN) take only 4-D [B, heads, tokens, c]
    inputs; with 3-D ones PyTorch runs the math kernel and materialises every score. The rel-pos
    bias must be 4-D and in q's dtype for the memory-efficient and cuDNN kernels."""
    import torch.nn.functional as F

    from int_engine.backends import sam_attention

    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append((q.dim(), k.dim(), v.dim(), None if attn_mask is None else (attn_mask.dim(), attn_mask.dtype, q.dtype)))
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(sam_attention.F, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    if cls is SdpaEncoderAttention:
        m = image_encoder.Attention(48, num_heads=3, use_rel_pos=rel_pos, input_size=(4, 6)).to(torch.bfloat16).eval()
        m.__class__ = cls
        m(torch.randn(2, 4, 6, 48, dtype=torch.bfloat16))
    else:
        m = Attention(32, num_heads=4).to(torch.bfloat16).eval()
        m.__class__ = cls
        m(*torch.randn(3, 2, 5, 32, dtype=torch.bfloat16))
    (dims,) = seen
    assert dims[:3] == (4, 4, 4)
    assert dims[3] == ((4, torch.bfloat16, torch.bfloat16) if rel_pos else None)
