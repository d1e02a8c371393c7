"""Tiny SAM 2.1: transformers' ``Sam2Model`` (Hiera backbone, FPN neck, SAM 2 prompt encoder and
mask decoder) at toy sizes, randomly initialised, saved as ``facebook/sam2.1-hiera-tiny`` is laid
out (config.json, model.safetensors, the processor's config) so that
``engine.backends.segment_sam2`` loads both the same way.

Every size follows from ``IMAGE_SIZE``: the Hiera patch embedding has stride 4 and three of its
four stages pool by 2, so the 128 px input gives feature maps of 32, 16, 8 and 4 px; the neck
keeps the first three (``backbone_feature_sizes``), the prompt encoder's 8 x 8 image embedding is
128 / 16 (its ``patch_size``), and the mask decoder's low-res masks are 4 x that, 32 x 32.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    Sam2Config,
    Sam2HieraDetConfig,
    Sam2ImageProcessor,
    Sam2MaskDecoderConfig,
    Sam2Model,
    Sam2Processor,
    Sam2PromptEncoderConfig,
    Sam2VisionConfig,
)

from ..backends.segment_sam2 import FORMAT

IMAGE_SIZE = 128
HIDDEN = 32  # the FPN's, prompt encoder's and mask decoder's width (one width in SAM 2)
SCALES = ("tiny",)


def tiny_config() -> Sam2Config:
    """A ``Sam2Config`` of the real architecture at toy widths (see the module docstring)."""
    dims = [16, 32, 64, 128]
    grid = IMAGE_SIZE // 4
    backbone = Sam2HieraDetConfig(
        hidden_size=dims[0],
        num_attention_heads=1,
        image_size=[IMAGE_SIZE, IMAGE_SIZE],
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=dims,
        num_attention_heads_per_stage=[1, 1, 2, 2],
        # stage 0's 8 px windows tile its 32 x 32 map 4 x 4: windowed attention stays windowed
        window_size_per_stage=[8, 4, 4, 2],
        window_positional_embedding_background_size=[4, 4],
        global_attention_blocks=[3],  # one global block in stage 2, as the published tiny has
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=dims[::-1],
        backbone_feature_sizes=[[grid, grid], [grid // 2, grid // 2], [grid // 4, grid // 4]],
        fpn_hidden_size=HIDDEN,
    )
    prompt = Sam2PromptEncoderConfig(hidden_size=HIDDEN, image_size=IMAGE_SIZE, patch_size=16, mask_input_channels=8)
    decoder = Sam2MaskDecoderConfig(hidden_size=HIDDEN, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32)
    return Sam2Config(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def tiny_processor() -> Sam2Processor:
    """SAM 2's processor at the tiny model's input size (ImageNet mean/std, bilinear resize)."""
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    mask = {"height": IMAGE_SIZE // 4, "width": IMAGE_SIZE // 4}
    return Sam2Processor(image_processor=Sam2ImageProcessor(size=size, mask_size=mask))


def build(out_dir: Path, seed: int = 0, scale: str = "tiny") -> dict:
    """Write a random tiny SAM 2.1 (``save_pretrained`` of the model and the processor) to ``out_dir``."""
    if scale not in SCALES:
        raise ValueError(f"segmenter: unknown sam2 zoo scale {scale!r}; scales are {', '.join(SCALES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = Sam2Model(tiny_config()).eval()
    with torch.no_grad():
        # transformers draws every linear and conv weight from N(0, 0.02), which at toy widths
        # leaves the mask logits ~1e-5 (every probability 0.5) and the IoU scores equal to 1e-4:
        # PyTorch's default init instead, as segment-anything's own modules get.
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                module.reset_parameters()
        # It also zero-initialises Hiera's position embeddings (absolute and windowed) and the
        # "no memory" embedding added to the lowest-resolution map; a trained model has learnt
        # ones, and with zeros a random encoder is blind to where things are (see tiny_segmenter).
        for param in (model.vision_encoder.backbone.pos_embed, model.vision_encoder.backbone.pos_embed_window):
            param.normal_(0.0, 0.5)
        model.no_memory_embedding.normal_(0.0, 0.1)
        # Logits of a trained model's scale (std ~2 here) and IoU scores that differ by tenths, so
        # that masks binarise into shapes and the multimask choice is not decided by rounding.
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.mul_(40.0)
        model.mask_decoder.iou_prediction_head.proj_out.weight.mul_(10.0)
    model.save_pretrained(out_dir)
    tiny_processor().save_pretrained(out_dir)
    return {"format": FORMAT, "params": sum(p.numel() for p in model.parameters())}
