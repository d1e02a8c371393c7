"""SAM 2.1 (transformers' ``Sam2Model`` and ``Sam2Processor``, image mode) as the engine's
``Segmenter`` (eq 9).

On disk: a transformers SAM 2 directory as ``facebook/sam2.1-hiera-*`` ships it (config.json,
the safetensors weights, the processor's config), loaded offline with ``Sam2Model.from_pretrained``
and ``Sam2Processor.from_pretrained``. Those repositories hold the video model (``model_type``
``sam2_video``); ``Sam2Model`` reads its image part and leaves the memory modules, as the
transformers documentation loads them for images.

A call encodes each distinct image of its requests once (``batch_size`` images per pass; runtime
"compile" runs that pass, ``Sam2Model.get_image_embeddings``, compiled: ``hf_images``), then
decodes every request's prompts together, each prompt reading its own image's embeddings
(``decode_batch`` prompts per pass). SAM 2's decoder has no attention mask: a padding point
(label -10) is a zero token that still takes part in the two-way attention, so a padded prompt
is not the prompt the model sees alone. Prompts are therefore grouped by shape instead of padded:
the same number of points and the same box-or-not go through one pass.

A prompt is what ``Sam2Processor`` makes of one box with the request's points (or of the points
alone): coordinates scaled to the processor's ``target_size`` square, the box as
``input_boxes`` [1, 1, 4], the points as ``input_points`` [1, 1, P, 2] with ``input_labels``
[1, 1, P]. Its mask is the highest-IoU-scoring multimask output (``multimask_output``) or SAM 2's
single mask, resized to the image by ``Sam2Processor.post_process_masks``; a request's
probability is the sigmoid of the pixel-wise maximum of its prompts' logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import ModelLoadError
from ..models.checks import require_files
from ..protocols import SegmentRequest
from .hf_images import (
    RUNTIMES,
    check_runtime,
    distinct_images,
    encode_in_batches,
    encoder_runtime,
    load_model_and_processor,
    torch_dtype,
)
from .precision import float32_islands
from .segment_checks import check_segment_request

ROLE = "segmenter"
FORMAT = "hf-sam2"
EXPECTED = (
    "config.json",
    "model.safetensors|model.safetensors.index.json|pytorch_model.bin",
    "processor_config.json|preprocessor_config.json",
)
MODEL_TYPES = ("sam2", "sam2_video")  # the image model, and the video repositories it reads
# One prompt: (its image's row, box [4] or None, points [P, 2] or None, labels int64 [P] or None).
Prompt = tuple[int, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


class Sam2Segmenter:
    """``Segmenter`` on transformers' SAM 2 / 2.1 (image mode).

    model: a ``Sam2Model`` whose prompt encoder and mask decoder are float32 (the image encoder
    may be half precision, see ``load``); processor: its ``Sam2Processor``. runtime: "eager" or
    "compile" (``load``).
    """

    RUNTIMES = RUNTIMES  # in-process only (no export folder): what ``models check`` accepts

    def __init__(
        self,
        model: torch.nn.Module,
        processor,
        multimask_output: bool = True,
        batch_size: int = 4,
        decode_batch: int = 64,
        runtime: str = "eager",
    ) -> None:
        check_runtime(ROLE, runtime)
        self.model = model
        self.processor = processor
        self.multimask_output = bool(multimask_output)
        self.batch_size = max(1, int(batch_size))
        self.decode_batch = max(1, int(decode_batch))
        self.target_size = int(processor.target_size)
        self.runtime = runtime
        self.encoder = encoder_runtime(runtime, model.get_image_embeddings)  # the image encoder pass
        self.work = {"encoder_images": 0}  # int_engine.work: images through the image encoder

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "cpu",
        dtype: str = "float32",
        *,
        multimask_output: bool = True,
        batch_size: int = 4,
        decode_batch: int = 64,
        runtime: str = "eager",
    ) -> "Sam2Segmenter":
        """Load the SAM 2 directory ``path`` (see the module docstring) offline.

        multimask_output: ask SAM 2 for its 3 masks per prompt and keep the highest-scoring one
        (the authors' setting, SPEC step 8); False takes SAM 2's single mask (which
        ``Sam2Model`` itself replaces by the best multimask output when it is unstable).
        batch_size: images per image-encoder pass. decode_batch: prompts per mask-decoder pass
        (each holds a copy of its image's three feature maps: 4 M floats, 16 MB, at 1024 px).
        dtype: the image encoder's (Hiera, the FPN neck and the decoder's two high-resolution
        projections); its LayerNorms stay float32, and the prompt encoder and mask decoder run
        in float32 on float32 copies of the features.
        runtime: "eager", or "compile": ``torch.compile`` of the image encoder pass at one static
        batch shape, a short last batch padded to ``batch_size`` (``hf_images``).
        """
        check_runtime(ROLE, runtime)
        root = require_files(ROLE, path, EXPECTED, FORMAT)
        encoder_dtype = torch_dtype(ROLE, dtype)
        model_type = _model_type(root)
        if model_type not in MODEL_TYPES:
            raise ModelLoadError(
                f"{ROLE}: {root} is not a {FORMAT} directory: config.json has model_type {model_type!r}, "
                f"expected one of {', '.join(MODEL_TYPES)}"
            )
        model, processor = load_model_and_processor(ROLE, FORMAT, root, device, "Sam2Model", "Sam2Processor")
        if encoder_dtype != torch.float32:
            half_encoder(model, encoder_dtype)
        return cls(model, processor, multimask_output, batch_size, decode_batch, runtime)

    @property
    def device(self) -> torch.device:
        return self.model.no_memory_embedding.device

    def segment(self, requests: Sequence[SegmentRequest]) -> list[np.ndarray]:
        """One float32 [H, W] mask probability per request, at its image's size (``Segmenter``):
        the maximum over its boxes (each with the request's points), the points-only mask when it
        has no box, zeros when it has neither. ``> 0.5`` is SAM 2's own binary mask (logit > 0)."""
        for req in requests:
            check_segment_request(ROLE, req)
        out: list[np.ndarray | None] = [None] * len(requests)
        todo = [i for i, r in enumerate(requests) if len(r.boxes) or len(r.points)]
        for i in set(range(len(requests))) - set(todo):
            out[i] = np.zeros(requests[i].image.shape[:2], np.float32)
        if not todo:
            return out  # type: ignore[return-value]
        image_of, images = distinct_images([requests[i].image for i in todo])
        with torch.inference_mode():
            features = self._encode(images)
            prompts = [self._prompts(requests[i], row) for i, row in zip(todo, image_of)]
            logits = self._decode(features, prompts)
            for i, chosen in zip(todo, logits):
                out[i] = self._probability(chosen, requests[i].image.shape[:2]).cpu().numpy()
        return out  # type: ignore[return-value]

    def _encode(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """The images' embeddings as ``Sam2Model.get_image_embeddings`` gives them, float32, one
        [B, C_l, h_l, w_l] per feature level (high resolution first), B = len(images)."""

        def encode(pixels: torch.Tensor) -> list[torch.Tensor]:
            return self.encoder(pixels.to(self.device))

        pad = self.runtime == "compile"
        features = encode_in_batches(self.processor, images, self.batch_size, encode, pad)
        self.work["encoder_images"] += len(images)  # the padding excluded
        return features

    def _prompts(self, req: SegmentRequest, row: int) -> list[Prompt]:
        """A request's prompts (``Prompt``), coordinates in the processor's ``target_size`` frame:
        one per box, each with all the points; one with the points alone when there is no box."""
        h, w = req.image.shape[:2]
        scale = torch.tensor([self.target_size / w, self.target_size / h], dtype=torch.float32)
        points = labels = None
        if len(req.points):
            points = torch.as_tensor(np.asarray(req.points, np.float32).reshape(-1, 2)) * scale
            labels = torch.as_tensor(np.asarray(req.labels), dtype=torch.int64).reshape(-1)
        if not len(req.boxes):
            return [(row, None, points, labels)]
        boxes = (torch.as_tensor(np.asarray(req.boxes, np.float32).reshape(-1, 2, 2)) * scale).reshape(-1, 4)
        return [(row, box, points, labels) for box in boxes]

    def _decode(self, features: list[torch.Tensor], prompts: list[list[Prompt]]) -> list[torch.Tensor]:
        """Each request's chosen low-res mask logits, float32 [n_r, h, w], its prompts decoded in
        passes with every other request's prompts of the same shape (module docstring)."""
        flat = [(r, k, p) for r, request in enumerate(prompts) for k, p in enumerate(request)]
        groups: dict[tuple[bool, int], list[tuple[int, int, Prompt]]] = {}
        for r, k, p in flat:
            groups.setdefault((p[1] is not None, 0 if p[2] is None else len(p[2])), []).append((r, k, p))
        out: list[list[torch.Tensor | None]] = [[None] * len(request) for request in prompts]
        for (has_box, n_points), members in groups.items():
            for start in range(0, len(members), self.decode_batch):
                part = members[start : start + self.decode_batch]
                chosen = self._decode_pass(features, [p for _, _, p in part], has_box, n_points)
                for (r, k, _), logits in zip(part, chosen):
                    out[r][k] = logits
        return [torch.stack(request) for request in out]  # type: ignore[arg-type]

    def _decode_pass(self, features: list[torch.Tensor], part: list[Prompt], has_box: bool, n_points: int) -> torch.Tensor:
        """One ``Sam2Model`` pass over prompts of one shape, each on its image's embeddings;
        returns the chosen mask logits float32 [N, h, w]."""
        rows = torch.tensor([p[0] for p in part], device=self.device)
        inputs: dict[str, torch.Tensor] = {}
        if has_box:
            inputs["input_boxes"] = torch.stack([p[1] for p in part])[:, None].to(self.device)  # [N, 1, 4]
        if n_points:
            inputs["input_points"] = torch.stack([p[2] for p in part])[:, None].to(self.device)  # [N, 1, P, 2]
            inputs["input_labels"] = torch.stack([p[3] for p in part])[:, None].to(self.device)  # [N, 1, P]
        outputs = self.model(
            image_embeddings=[level.index_select(0, rows) for level in features],
            multimask_output=self.multimask_output,
            **inputs,
        )
        masks, scores = outputs.pred_masks[:, 0], outputs.iou_scores[:, 0]  # [N, M, h, w], [N, M]
        best = scores.argmax(dim=1)
        return masks[torch.arange(len(best), device=best.device), best].float()

    def _probability(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """float32 [H, W]: sigmoid of the maximum over prompts of ``logits`` [n, h, w] resized to
        ``size`` by ``Sam2Processor.post_process_masks`` (``decode_batch`` masks at a time)."""
        best = torch.full(tuple(size), -torch.inf, dtype=torch.float32, device=logits.device)
        for start in range(0, len(logits), self.decode_batch):
            chunk = logits[start : start + self.decode_batch][None]  # [1, n, h, w]
            (resized,) = self.processor.post_process_masks([chunk], [tuple(size)], binarize=False)
            best = torch.maximum(best, resized[0].amax(dim=0))
        return torch.sigmoid(best)


def half_encoder(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Put ``model``'s image encoder in ``dtype``: the vision encoder and the mask decoder's two
    projections of its high-resolution maps (``conv_s0``, ``conv_s1``, which
    ``Sam2Model.get_image_features`` applies to the encoder's output), the LayerNorms kept as
    float32 islands (``precision``). The prompt encoder and the rest of the mask decoder stay float32."""
    model.vision_encoder.to(dtype)
    model.mask_decoder.conv_s0.to(dtype)
    model.mask_decoder.conv_s1.to(dtype)
    float32_islands(model.vision_encoder, (torch.nn.LayerNorm,))


def _model_type(root: Path) -> str | None:
    try:
        return json.loads((root / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as err:
        raise ModelLoadError(f"{ROLE}: cannot load {FORMAT} from {root}: bad config.json: {err}") from err
