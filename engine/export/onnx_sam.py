"""SAM as two ONNX graphs: the image encoder and the prompt decoder (prompt encoder + mask decoder).

The split is SAM's own (``segment_anything/utils/onnx.py``): the heavy encoder runs once per
image, the light decoder once per prompt batch. The decoder graph differs from SAM's example
in two ways the engine needs: it takes a batch of N prompts against one image (SAM's example
takes one), and it returns the low-resolution logits of all 1 + num_multimask_outputs masks
without upscaling, so that the backend's torch code (``Sam.postprocess_masks``, the choice of
single vs multi-mask) stays exactly the eager path's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling import Sam

from .manifest import artifact_entry, source_info
from .onnx_io import DEFAULT_OPSET, export_onnx

ROLE = "segmenter"
ENCODER, DECODER = "image_encoder", "prompt_decoder"
ENCODER_IO = (["images"], ["image_embeddings"])
DECODER_IO = (
    ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"],
    ["low_res_masks", "iou_predictions"],
)
# Point labels as SAM's prompt encoder reads them; a box is its two corners labelled 2 and 3.
PAD, NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = -1, 0, 1, 2, 3


class SamEncoderGraph(torch.nn.Module):
    """images float32 [B, 3, S, S] (normalised, padded: ``Sam.preprocess``) -> embeddings [B, C, g, g]."""

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images)


class SamDecoderGraph(torch.nn.Module):
    """SAM's prompt encoder + mask decoder over N prompts of P points each, against one image.

    Inputs: image_embeddings [1, C, g, g]; point_coords [N, P, 2] in the encoder's input frame
    (after ``ResizeLongestSide``); point_labels float [N, P] (-1 padding, 0/1 negative/positive,
    2/3 box corners); mask_input [1 or N, 1, 4g, 4g] low-res logits; has_mask_input [1]
    (0 = no mask: the learnt no-mask embedding is used instead).
    Outputs: low_res_masks [N, M, 4g, 4g] logits and iou_predictions [N, M], M = 1 + multimask.
    """

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        self.img_size = sam.image_encoder.img_size

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # PromptEncoder._embed_points/_embed_boxes, with masked sums instead of boolean indexing
        # (which traces to data-dependent shapes).
        pe = self.prompt_encoder
        emb = pe.pe_layer._pe_encoding((coords + 0.5) / self.img_size)
        labels = labels.unsqueeze(-1)
        emb = emb * (labels != PAD) + pe.not_a_point_embed.weight * (labels == PAD)
        for i in range(pe.num_point_embeddings):
            emb = emb + pe.point_embeddings[i].weight * (labels == i)
        return emb

    def _embed_masks(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return has_mask_input * pe.mask_downscaling(mask_input) + (1 - has_mask_input) * no_mask

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=self._embed_points(point_coords, point_labels),
            dense_prompt_embeddings=self._embed_masks(mask_input, has_mask_input),
        )


def decoder_example(sam: Sam, n: int = 2, p: int = 3) -> tuple[torch.Tensor, ...]:
    """Example decoder inputs (n prompts of p points, no mask), for export and tests."""
    c = sam.prompt_encoder.embed_dim
    g = sam.prompt_encoder.image_embedding_size
    gen = torch.Generator().manual_seed(0)
    return (
        torch.randn(1, c, *g, generator=gen),
        torch.rand(n, p, 2, generator=gen) * sam.image_encoder.img_size,
        torch.randint(-1, 4, (n, p), generator=gen).float(),
        torch.zeros(1, 1, 4 * g[0], 4 * g[1]),
        torch.zeros(1),
    )


def export_sam(sam: Sam, model_dir: Path, out_dir: Path, opset: int = DEFAULT_OPSET) -> list[dict[str, Any]]:
    """Write ``segmenter/image_encoder/model.onnx`` and ``segmenter/prompt_decoder/model.onnx``
    under ``out_dir`` from the float32 ``sam`` loaded from ``model_dir``; returns their manifest entries."""
    sam = sam.float().eval()
    source = source_info(model_dir)
    s = sam.image_encoder.img_size
    entries = []
    specs = [
        (
            ENCODER,
            SamEncoderGraph(sam),
            (torch.randn(2, 3, s, s),),
            ENCODER_IO,
            {"images": {0: "batch"}, "image_embeddings": {0: "batch"}},
        ),
        (
            DECODER,
            SamDecoderGraph(sam),
            decoder_example(sam),
            DECODER_IO,
            {
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
