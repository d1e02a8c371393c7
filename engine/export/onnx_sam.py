"""SAM as two ONNX graphs: the image encoder and the prompt decoder (prompt encoder + mask decoder).

The split is SAM's own (``segment_anything/utils/onnx.py``): the heavy encoder runs once per
image, the light decoder once per prompt batch. The decoder graph (``sam_decode.PromptDecoder``,
the module the eager backend runs) differs from SAM's example in two ways the engine needs: it
takes a batch of N prompts, each with its own image embedding, so that one pass serves the
prompts of many images (SAM's example takes one prompt against one image), and it returns the
low-resolution logits of all 1 + num_multimask_outputs masks without upscaling, so that the
backend's torch code (``Sam.postprocess_masks``, the choice of single vs multi-mask) stays
exactly the eager path's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling import Sam

from ..backends.sam_decode import PromptDecoder
from .manifest import artifact_entry, source_info
from .onnx_io import DEFAULT_OPSET, export_onnx, module_device

ROLE = "segmenter"
ENCODER, DECODER = "image_encoder", "prompt_decoder"
ENCODER_IO = (["images"], ["image_embeddings"])
DECODER_IO = (
    ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"],
    ["low_res_masks", "iou_predictions"],
)


class SamEncoderGraph(torch.nn.Module):
    """images float32 [B, 3, S, S] (normalised, padded: ``Sam.preprocess``) -> embeddings [B, C, g, g]."""

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images)


def encoder_example(sam: Sam, n: int = 2, device: str | torch.device | None = None) -> tuple[torch.Tensor]:
    """Example encoder input: ``n`` float32 images [n, 3, S, S] on ``device`` (None: the image
    encoder's device), the same values on every device."""
    s = sam.image_encoder.img_size
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(n, 3, s, s, generator=gen).to(device or module_device(sam.image_encoder)),)


def decoder_example(sam: Sam, n: int = 2, p: int = 3, device: str | torch.device | None = None) -> tuple[torch.Tensor, ...]:
    """Example decoder inputs (n prompts of p points, each against its own image embedding, no
    mask), for export and tests, on ``device`` (None: the prompt encoder's device): embeddings
    [n, C, g, g], coords [n, p, 2], labels [n, p], mask [1, 1, 4g, 4g], has_mask [1]."""
    c = sam.prompt_encoder.embed_dim
    g = sam.prompt_encoder.image_embedding_size
    # Drawn on the CPU (a generator belongs to one device), then moved: the same values anywhere.
    gen = torch.Generator().manual_seed(0)
    example = (
        torch.randn(n, c, *g, generator=gen),
        torch.rand(n, p, 2, generator=gen) * sam.image_encoder.img_size,
        torch.randint(-1, 4, (n, p), generator=gen).float(),
        torch.zeros(1, 1, 4 * g[0], 4 * g[1]),
        torch.zeros(1),
    )
    device = device or module_device(sam.prompt_encoder)
    return tuple(t.to(device) for t in example)


def export_sam(sam: Sam, model_dir: Path, out_dir: Path, opset: int = DEFAULT_OPSET) -> list[dict[str, Any]]:
    """Write ``segmenter/image_encoder/model.onnx`` and ``segmenter/prompt_decoder/model.onnx``
    under ``out_dir`` from the float32 ``sam`` loaded from ``model_dir``; returns their manifest entries.
    The examples are traced on ``sam``'s device."""
    sam = sam.float().eval()
    source = source_info(model_dir)
    entries = []
    specs = [
        (
            ENCODER,
            SamEncoderGraph(sam),
            encoder_example(sam),
            ENCODER_IO,
            {"images": {0: "batch"}, "image_embeddings": {0: "batch"}},
        ),
        (
            DECODER,
            PromptDecoder(sam),
            decoder_example(sam),
            DECODER_IO,
            {
                "image_embeddings": {0: "num_prompts"},
                "point_coords": {0: "num_prompts", 1: "num_points"},
                "point_labels": {0: "num_prompts", 1: "num_points"},
                "mask_input": {0: "mask_batch"},
                "low_res_masks": {0: "num_prompts"},
                "iou_predictions": {0: "num_prompts"},
            },
        ),
    ]
    for module, graph, args, (inputs, outputs), axes in specs:
        file = f"{ROLE}/{module}/model.onnx"
        fields = export_onnx(graph, args, out_dir / file, inputs, outputs, axes, opset, where=f"{ROLE}/{module}")
        entries.append(artifact_entry(ROLE, module, "onnx", file, source, dtype="float32", **fields))
    return entries
