"""SAM's exported graphs behind the interfaces the eager backend already uses.

``GraphPredictor`` is a ``SamPredictor`` whose ``predict_torch`` runs the prompt-decoder graph;
``GraphEncoder`` turns the image-encoder graph into a ``[B, 3, S, S] -> [B, C, g, g]`` callable.
Everything around them (resizing, normalising, padding, mask upscaling, thresholding) is
segment-anything's own torch code, unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam

from ..models.zoo import checksum
from .onnx_sam import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, DECODER, DECODER_IO, ENCODER, ENCODER_IO, PAD, ROLE
from .runtime import Runner, compile_module, compile_options, open_runner


def open_sam_graphs(
    sam: Sam, runtime: str, artifacts: str | Path, model_dir: Path, device: str
) -> tuple[GraphEncoder, GraphPredictor]:
    """The image-encoder callable and the predictor of ``runtime`` ("onnx" | "tensorrt") from
    ``artifacts``, both checked against the checkpoint in ``model_dir`` (hashed once)."""
    sha = checksum(Path(model_dir))
    enc = open_runner(ROLE, ENCODER, runtime, artifacts, model_dir, device, sha)
    dec = open_runner(ROLE, DECODER, runtime, artifacts, model_dir, device, sha)
    return GraphEncoder(enc), GraphPredictor(sam, dec)


def compile_sam(sam: Sam, artifacts: str | Path | None, model_dir: Path) -> None:
    """Wrap ``sam``'s image encoder and mask decoder (the modules the graphs hold) with
    ``torch.compile``, in place; the predictor built afterwards uses the wrapped ones."""
    options = compile_options(ROLE, artifacts, model_dir, (ENCODER, DECODER))
    sam.image_encoder = compile_module(sam.image_encoder, options)
    sam.mask_decoder = compile_module(sam.mask_decoder, options)


class GraphEncoder:
    """images float [B, 3, S, S] -> image embeddings float32 [B, C, g, g] through ``runner``."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        (name,), _ = ENCODER_IO
        return self.runner({name: images})[0]


def flatten_prompts(
    point_coords: torch.Tensor | None, point_labels: torch.Tensor | None, boxes: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points and boxes as one [N, P, 2] coordinate and [N, P] float label tensor, in the order
    ``PromptEncoder`` embeds them: the points, then each box's two corners (labels 2, 3); with
    points and no box, one padding point (label -1), as ``PromptEncoder`` pads."""
    coords, labels = [], []
    n = len(boxes) if boxes is not None else len(point_coords)
    if point_coords is not None:
        c, lab = point_coords.float(), point_labels.float()
        if boxes is None:
            c = torch.cat([c, torch.zeros(n, 1, 2, device=c.device)], dim=1)
            lab = torch.cat([lab, torch.full((n, 1), float(PAD), device=c.device)], dim=1)
        coords.append(c)
        labels.append(lab)
    if boxes is not None:
        coords.append(boxes.float().reshape(-1, 2, 2))
        corner = torch.tensor([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], dtype=torch.float32, device=boxes.device)
        labels.append(corner.expand(n, 2))
    return torch.cat(coords, dim=1), torch.cat(labels, dim=1)


class GraphPredictor(SamPredictor):
    """``SamPredictor`` with the prompt encoder + mask decoder replaced by a decoder graph."""

    def __init__(self, sam: Sam, decoder: Runner) -> None:
        super().__init__(sam)
        self.decoder = decoder

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As ``SamPredictor.predict_torch``: masks [N, M, H, W] (bool unless return_logits),
        iou predictions [N, M], low-res logits [N, M, 4g, 4g]."""
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        if point_coords is None and boxes is None:
            raise ValueError("GraphPredictor needs points or boxes (a mask alone is not a prompt here)")
        coords, labels = flatten_prompts(point_coords, point_labels, boxes)
        if mask_input is None:
            g = self.model.prompt_encoder.image_embedding_size
            mask_input, has_mask = torch.zeros(1, 1, 4 * g[0], 4 * g[1]), torch.zeros(1)
        else:
            has_mask = torch.ones(1)
        names, _ = DECODER_IO
        low_res, iou = self.decoder(dict(zip(names, (self.features, coords, labels, mask_input, has_mask))))
        # MaskDecoder.forward's choice: the single-mask token alone, or the multimask ones.
        keep = slice(1, None) if multimask_output else slice(0, 1)
        low_res, iou = low_res[:, keep].to(self.device), iou[:, keep].to(self.device)
        masks = self.model.postprocess_masks(low_res, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low_res
