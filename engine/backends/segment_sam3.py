"""SAM 3 (transformers' ``Sam3Model``) as the engine's ``ConceptSegmenter``.

On disk: a transformers SAM 3 directory as ``facebook/sam3`` ships it (config.json, the
safetensors weights, the processor's image settings and the CLIP tokenizer), loaded offline
with ``Sam3Model.from_pretrained`` and ``Sam3Processor.from_pretrained``.

A call runs the vision backbone once per distinct image (``image_batch`` images per pass; runtime
"compile" runs that pass, ``Sam3Model.get_vision_features``, compiled: ``hf_images``), then
the text, geometry, DETR and mask heads over the requests, ``max_batch`` per pass, each request
reading its image's features. Requests with exemplar boxes and requests without run in separate
passes: SAM 3's geometry encoder adds a CLS token to every prompt of a pass with boxes, so a
box-less request batched with boxed ones would not be the request the model sees alone. Within
a pass the box lists are padded to the longest with label -10, SAM 3's padding (``box_mask``),
as ``Sam3Processor`` pads them.

Scores and masks are those of ``Sam3Processor.post_process_instance_segmentation``: a query's
score is sigmoid(pred_logits) * sigmoid(presence_logits), its mask probability
sigmoid(pred_masks) resized bilinearly to the image; the request's probability is the pixel-wise
maximum over the queries scoring at least ``threshold`` (the post-processing keeps ``>``; the
two differ only for a score exactly equal to the threshold).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from ..models.checks import require_files
from ..protocols import ConceptRequest
from .hf_images import (
    RUNTIMES,
    check_runtime,
    distinct_images,
    encode_in_batches,
    encoder_runtime,
    load_model_and_processor,
    torch_dtype,
)
from .segment_checks import check_rgb_image

ROLE = "concept"
FORMAT = "hf-sam3"
EXPECTED = (
    "config.json",
    "model.safetensors|model.safetensors.index.json",
    "processor_config.json|preprocessor_config.json",
    "tokenizer.json|vocab.json",
)
BOX_PAD = -10  # SAM 3's label (and Sam3Processor's coordinate) for a padded box
UPSAMPLE_CHUNK = 16  # instance masks resized to the image at a time (bounds memory at threshold 0)


class Sam3ConceptSegmenter:
    """``ConceptSegmenter`` on transformers' SAM 3.

    model: a ``Sam3Model`` in float32. ``dtype`` float16 / bfloat16 runs the vision backbone (almost
    all of the compute at 1008 px) under autocast and the text, geometry, DETR and mask heads in
    float32 on float32 features: the scores and masks that are thresholded stay float32, and
    torchvision's ``roi_align`` in the geometry encoder refuses autocast's mixed types on CPU.
    processor: its ``Sam3Processor``. runtime: "eager" or "compile" (``load``).
    """

    RUNTIMES = RUNTIMES  # in-process only (no export folder): what ``models check`` accepts

    def __init__(
        self,
        model: torch.nn.Module,
        processor,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        image_batch: int = 4,
        max_batch: int = 8,
        runtime: str = "eager",
    ) -> None:
        check_runtime(ROLE, runtime)
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.image_batch = max(1, int(image_batch))
        self.max_batch = max(1, int(max_batch))
        self.runtime = runtime
        self.backbone = encoder_runtime(runtime, model.get_vision_features)  # the vision backbone pass
        # int_engine.work: images through the vision backbone; requests through the heads
        self.work = {"encoder_images": 0, "texts_encoded": 0, "requests": 0}

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "cpu",
        dtype: str = "float32",
        *,
        image_batch: int = 4,
        max_batch: int = 8,
        runtime: str = "eager",
    ) -> "Sam3ConceptSegmenter":
        """Load the SAM 3 directory ``path`` offline.

        image_batch: images per vision-backbone pass (the published ViT at 1008 px holds about
        1 GB of activations per image in float32). max_batch: requests per pass of the text,
        geometry, DETR and mask heads (each carries a copy of its image's FPN features, about
        110 MB at 1008 px in float32). runtime: "eager", or "compile": ``torch.compile`` of the
        vision backbone pass at one static batch shape, a short last batch padded to
        ``image_batch`` (``hf_images``).
        """
        check_runtime(ROLE, runtime)
        root = require_files(ROLE, path, EXPECTED, FORMAT)
        backbone_dtype = torch_dtype(ROLE, dtype)
        model, processor = load_model_and_processor(ROLE, FORMAT, root, device, "Sam3Model", "Sam3Processor")
        return cls(model, processor, torch.device(device), backbone_dtype, image_batch, max_batch, runtime)

    def segment_concepts(self, requests: Sequence[ConceptRequest], threshold: float) -> list[np.ndarray]:
        """One float32 [H, W] probability in [0, 1] per request, at its image's size: the
        pixel-wise maximum of the mask probabilities of the instances scoring >= ``threshold``
        (detection score x presence score); zeros when none does."""
        for req in requests:
            _check(req)
        if not requests:
            return []
        image_of, images = distinct_images([r.image for r in requests])
        out: list[np.ndarray | None] = [None] * len(requests)
        with torch.inference_mode():
            features, positions = self._encode(images)
            text = self._encode_texts([r.text for r in requests])
            boxed = [i for i, r in enumerate(requests) if len(r.positives) + len(r.negatives)]
            plain = [i for i, r in enumerate(requests) if not len(r.positives) + len(r.negatives)]
            for group in (plain, boxed):
                for start in range(0, len(group), self.max_batch):
                    idx = group[start : start + self.max_batch]
                    rows = torch.tensor([image_of[i] for i in idx], device=self.device)
                    outputs = self._heads([requests[i] for i in idx], features, positions, rows, text)
                    for k, i in enumerate(idx):
                        out[i] = _probability(outputs, k, requests[i].image.shape[:2], threshold)
                    self.work["requests"] += len(idx)
        return out  # type: ignore[return-value]

    def _autocast(self) -> torch.autocast:
        half = self.dtype != torch.float32
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=half)

    def _encode(self, images: list[np.ndarray]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The FPN features of ``images`` ([B, C, h, w] per level) and the levels' position
        encodings ([1, C, h, w]: they depend on the level's shape only, the same for every image)."""
        positions: list[torch.Tensor] = []

        def encode(pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
            with self._autocast():
                vision = self.backbone(pixel_values=pixels.to(self.device))
            positions[:] = [p[:1].float() for p in vision.fpn_position_encoding]
            return vision.fpn_hidden_states

        pad = self.runtime == "compile"
        features = encode_in_batches(self.processor, images, self.image_batch, encode, pad)
        self.work["encoder_images"] += len(images)  # the padding excluded
        return features, positions

    def _encode_texts(self, texts: list[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Each distinct phrase through the text encoder once (a call's views share one pick):
        text -> its row, the projected token features [T, 32, C] and their mask [T, 32] (the
        processor pads every phrase to 32 tokens, so a row does not depend on the others)."""
        distinct = list(dict.fromkeys(texts))
        tokens = self.processor(text=distinct, return_tensors="pt")
        mask = tokens["attention_mask"].to(self.device)
        embeds = self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device), attention_mask=mask).pooler_output
        self.work["texts_encoded"] += len(distinct)
        return {t: j for j, t in enumerate(distinct)}, embeds, mask

    def _heads(
        self,
        requests: list[ConceptRequest],
        features: list[torch.Tensor],
        positions: list[torch.Tensor],
        rows: torch.Tensor,
        text: tuple[dict[str, int], torch.Tensor, torch.Tensor],
    ):
        """One ``Sam3Model`` pass over ``requests``, each on its image's features (``rows``) and its
        phrase's encoding (``_encode_texts``)."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        n = len(requests)
        vision = Sam3VisionEncoderOutput(
            fpn_hidden_states=tuple(level.index_select(0, rows) for level in features),
            fpn_position_encoding=tuple(p.expand(n, -1, -1, -1) for p in positions),
        )
        row_of, embeds, mask = text
        which = torch.tensor([row_of[r.text] for r in requests], device=self.device)
        inputs = {
            "text_embeds": BaseModelOutputWithPooling(pooler_output=embeds.index_select(0, which)),
            "attention_mask": mask.index_select(0, which),
        }
        if any(len(r.positives) + len(r.negatives) for r in requests):
            boxes, labels = _exemplars(requests)
            inputs.update(input_boxes=boxes.to(self.device), input_boxes_labels=labels.to(self.device))
        return self.model(vision_embeds=vision, **inputs)


def _exemplars(requests: Sequence[ConceptRequest]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each request's positive then negative boxes as SAM 3 takes them: float32 [B, N, 4]
    (cx, cy, w, h) divided by the image's width and height, and int64 [B, N] labels 1 / 0,
    padded to the longest list with ``BOX_PAD`` (coordinates and label)."""
    longest = max(len(r.positives) + len(r.negatives) for r in requests)
    boxes = torch.full((len(requests), longest, 4), float(BOX_PAD), dtype=torch.float32)
    labels = torch.full((len(requests), longest), BOX_PAD, dtype=torch.int64)
    for k, r in enumerate(requests):
        xyxy = np.concatenate(
            [np.asarray(r.positives, np.float32).reshape(-1, 4), np.asarray(r.negatives, np.float32).reshape(-1, 4)]
        )
        if not len(xyxy):
            continue
        h, w = r.image.shape[:2]
        t = torch.from_numpy(xyxy) / torch.tensor([w, h, w, h], dtype=torch.float32)
        boxes[k, : len(t)] = torch.stack(
            [(t[:, 0] + t[:, 2]) / 2, (t[:, 1] + t[:, 3]) / 2, t[:, 2] - t[:, 0], t[:, 3] - t[:, 1]], -1
        )
        labels[k, : len(r.positives)] = 1
        labels[k, len(r.positives) : len(t)] = 0
    return boxes, labels


def instance_scores(outputs, k: int) -> torch.Tensor:
    """Request ``k``'s query scores, float32 [Q]: sigmoid(logit) x sigmoid(presence logit)."""
    scores = outputs.pred_logits[k].float().sigmoid()
    if outputs.presence_logits is not None:
        scores = scores * outputs.presence_logits[k].float().sigmoid()
    return scores


def _probability(outputs, k: int, size: tuple[int, int], threshold: float) -> np.ndarray:
    """float32 [H, W]: the maximum over request ``k``'s kept queries of their mask
    probabilities resized (bilinear, half-pixel centres) to ``size``; zeros when none is kept."""
    keep = torch.nonzero(instance_scores(outputs, k) >= threshold).flatten()
    best = torch.zeros(tuple(size), dtype=torch.float32, device=outputs.pred_masks.device)
    for start in range(0, len(keep), UPSAMPLE_CHUNK):
        masks = outputs.pred_masks[k, keep[start : start + UPSAMPLE_CHUNK]].float().sigmoid()
        masks = F.interpolate(masks[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
        best = torch.maximum(best, masks.amax(0))
    return best.cpu().numpy()


def _check(req: ConceptRequest) -> None:
    check_rgb_image(ROLE, req.image)
    for name in ("positives", "negatives"):
        boxes = np.asarray(getattr(req, name))
        if boxes.size and (boxes.ndim != 2 or boxes.shape[1] != 4):
            raise ValueError(f"{ROLE}: {name} must be [N, 4] boxes, got {boxes.shape}")
    if not isinstance(req.text, str) or not req.text.strip():
        raise ValueError(f"{ROLE}: the concept text must be a non-empty string, got {req.text!r}")
