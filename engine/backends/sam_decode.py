"""SAM's prompt side over the prompts of many images in one pass (eq 9's SAM calls, batched).

segment-anything decodes the prompts of one image per call: ``MaskDecoder.predict_masks``
repeats that image's embedding once per prompt. The engine's SAM call holds every view of
every image in flight, each with a few boxes, so it decodes them together instead: each
prompt carries its own image embedding, gathered from the call's encoder batch. The
arithmetic per prompt is SAM's own (same modules, same order), so a prompt decoded here
equals the same prompt decoded by ``SamPredictor`` up to float rounding of batched matmuls.

``PromptDecoder`` is the module the eager backend runs, ``int-engine export`` writes to ONNX
and the "compile" runtime compiles, so the three runtimes share one definition.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from segment_anything.modeling import MaskDecoder, Sam

# Point labels as SAM's prompt encoder reads them; a box is its two corners labelled 2 and 3.
PAD, NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = -1, 0, 1, 2, 3


def decode_masks(
    decoder: MaskDecoder,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's mask decoder with one image embedding per prompt.

    image_embeddings: [N, C, g, g], row n the embedding of prompt n's image; image_pe: [1, C, g, g];
    sparse: [N, T, C] prompt tokens; dense: [N or 1, C, g, g].
    Returns low-res mask logits [N, M, 4g, 4g] and predicted IoUs [N, M] for all
    M = 1 + num_multimask_outputs mask tokens (token 0 is the single-mask output).
    """
    n = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(n, -1, -1), sparse], dim=1)
    src = image_embeddings + dense
    b, c, h, w = src.shape
    hidden, src = decoder.transformer(src, image_pe.expand(b, -1, -1, -1), tokens)
    iou_token, mask_tokens = hidden[:, 0, :], hidden[:, 1 : 1 + decoder.num_mask_tokens, :]
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = torch.stack([mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
    b, c, h, w = upscaled.shape
    masks = (hyper @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
    return masks, decoder.iou_prediction_head(iou_token)


class PromptDecoder(torch.nn.Module):
    """SAM's prompt encoder + mask decoder over N prompts of P points each, one image embedding per prompt.

    Inputs: image_embeddings [N, C, g, g]; point_coords [N, P, 2] in the encoder's input frame
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
        # PromptEncoder's point and box embedding, with masked sums instead of boolean indexing
        # (which traces to data-dependent shapes); the coordinates shifted to the pixel centre
        # and encoded by the positional encoding's public forward_with_coords, as SAM does.
        pe = self.prompt_encoder
        emb = pe.pe_layer.forward_with_coords(coords + 0.5, (self.img_size, self.img_size))
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
        return decode_masks(
            self.mask_decoder,
            image_embeddings,
            self.prompt_encoder.get_dense_pe(),
            self._embed_points(point_coords, point_labels),
            self._embed_masks(mask_input, has_mask_input),
        )


def flatten_prompts(
    point_coords: torch.Tensor | None, point_labels: torch.Tensor | None, boxes: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points and boxes as one [N, P, 2] coordinate and [N, P] float label tensor, in the order
    ``PromptEncoder`` embeds them: the points, then each box's two corners (labels 2, 3); with
    points and no box, one padding point (label -1), as ``PromptEncoder`` pads.

    point_coords: [N, P0, 2] (or [1, P0, 2] with N boxes: every box gets the same points);
    point_labels: [N or 1, P0]; boxes: [N, 4] (x0, y0, x1, y1).
    """
    coords, labels = [], []
    n = len(boxes) if boxes is not None else len(point_coords)
    if point_coords is not None:
        c, lab = point_coords.float().expand(n, -1, -1), point_labels.float().expand(n, -1)
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


Decoder = Callable[..., tuple[torch.Tensor, torch.Tensor]]  # PromptDecoder's signature


def decode_requests(
    decoder: Decoder,
    features: torch.Tensor,
    prompts: Sequence[tuple[torch.Tensor, torch.Tensor]],
    multimask_output: bool,
    max_prompts: int,
) -> list[torch.Tensor]:
    """Each request's chosen low-res logits, its prompts decoded together with every other request's.

    features: [R, C, g, g], one image embedding per request; prompts[r]: request r's
    (coords [n_r, P_r, 2], labels [n_r, P_r]) from ``flatten_prompts``. Prompts with the same
    number of points go through ``decoder`` in passes of at most ``max_prompts``.
    Returns [n_r, 1, 4g, 4g] per request: SAM's single mask, or with ``multimask_output``
    the multimask output with the highest predicted IoU (as ``SamPredictor`` users pick).
    """
    g = features.shape[-2:]
    no_mask, has_mask = features.new_zeros(1, 1, 4 * g[0], 4 * g[1]), features.new_zeros(1)
    keep = slice(1, None) if multimask_output else slice(0, 1)
    out: list[list[torch.Tensor]] = [[] for _ in prompts]
    by_points: dict[int, list[int]] = {}
    for r, (coords, _) in enumerate(prompts):
        by_points.setdefault(coords.shape[1], []).append(r)
    for requests in by_points.values():
        coords = torch.cat([prompts[r][0] for r in requests])
        labels = torch.cat([prompts[r][1] for r in requests])
        owner = torch.cat([torch.full((len(prompts[r][0]),), r, dtype=torch.long) for r in requests])
        for s in range(0, len(owner), max_prompts):
            rows = owner[s : s + max_prompts]
            low_res, iou = decoder(
                features[rows.to(features.device)], coords[s : s + max_prompts], labels[s : s + max_prompts], no_mask, has_mask
            )
            low_res, iou = low_res[:, keep], iou[:, keep]
            best = low_res[torch.arange(len(low_res), device=low_res.device), iou.argmax(dim=1)][:, None]
            for r in rows.unique_consecutive().tolist():
                out[r].append(best[rows == r])
    return [torch.cat(parts) if parts else features.new_zeros(0, 1, 4 * g[0], 4 * g[1]) for parts in out]


def mask_probabilities(
    sam: Sam,
    logits: Sequence[torch.Tensor],
    input_sizes: Sequence[tuple[int, int]],
    original_sizes: Sequence[tuple[int, int]],
    max_prompts: int,
) -> list[torch.Tensor]:
    """Each request's mask probability at its image's size, float32 [H, W] in [0, 1]: the
    pixel-wise maximum over its prompts of sigmoid(upscaled logit - ``Sam.mask_threshold``).

    The logits are upscaled as ``Sam.postprocess_masks`` does; subtracting SAM's threshold puts
    SAM's own decision at 0.5 (the published models' threshold is 0.0, so this is the plain
    sigmoid the authors' code uses), and ``> 0.5`` gives exactly the union of SAM's binary masks.
    Requests sharing (input size, original size) are upscaled together, at most ``max_prompts``
    masks per pass so that memory stays bounded for large images.
    """
    # sigmoid is monotonic: the maximum of the logits, squashed once, is the maximum of the
    # probabilities, without a sigmoid over every prompt's full-size mask
    best = [torch.full(size, -torch.inf, dtype=torch.float32, device=sam.device) for size in original_sizes]
    groups: dict[tuple, list[int]] = {}
    for r, key in enumerate(zip(input_sizes, original_sizes)):
        groups.setdefault(key, []).append(r)
    for (input_size, original), requests in groups.items():
        stacked = torch.cat([logits[r] for r in requests])
        owner = torch.cat([torch.full((len(logits[r]),), r, dtype=torch.long) for r in requests])
        for s in range(0, len(owner), max_prompts):
            rows = owner[s : s + max_prompts]
            upscaled = sam.postprocess_masks(stacked[s : s + max_prompts], input_size, original)[:, 0].float()
            for r in rows.unique_consecutive().tolist():
                best[r] = torch.maximum(best[r], upscaled[(rows == r).to(upscaled.device)].amax(dim=0))
    return [torch.sigmoid(b - sam.mask_threshold) for b in best]
