"""GroundingDINO through transformers (``GroundingDinoForObjectDetection``): eq 8's
open-vocabulary detector.

Loads a local directory in the layout of ``IDEA-Research/grounding-dino-tiny``
(config.json, weights, preprocessor_config.json, BERT tokenizer) — the published
checkpoint and the tiny zoo alike.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError, ModelLoadError
from ..models.checks import require_files
from ..protocols import Detections

ROLE = "detector"
FORMAT = "hf-grounding-dino"
EXPECTED = (
    "config.json",
    "model.safetensors|pytorch_model.bin",
    "preprocessor_config.json|processor_config.json",
    "tokenizer.json|vocab.txt",
)
# GroundingDINO's text masks split the caption at these hard-coded BERT ids; a tokenizer
# that puts other tokens there would give wrong masks without any error.
SPECIAL_IDS = {"[CLS]": 101, "[SEP]": 102, ".": 1012, "?": 1029}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# What ``load`` takes through ``**options``, name -> type (see ``option_types``).
OPTIONS = {"max_batch": int}
CPU_MAX_BATCH, CUDA_MAX_BATCH = 16, 4  # views per forward pass by default (see load)


def caption(text: str) -> str:
    """GroundingDINO was trained on lower-case captions ending in '.', as Grounded-SAM sends them."""
    text = text.strip().lower()
    return text if text.endswith(".") else text + "."


def text_positions_collapse(get_text_position_embeddings, d_model: int = 8) -> bool:
    """The probe for transformers issue 47674: True when ``get_text_position_embeddings``
    (a GroundingDINO encoder layer's method, bound, or anything with its signature
    ``(text_features, text_position_embedding, text_position_ids)``) turns int64 position
    ids, as the model builds them, into an integer (collapsed) embedding instead of the
    float one it gives for the same ids as floats."""
    ids = torch.arange(4).unsqueeze(0)  # (1, 4) int64
    features = torch.zeros(1, 4, d_model)
    got = get_text_position_embeddings(features, None, ids)
    want = get_text_position_embeddings(features, None, ids.float())
    return not got.is_floating_point() or not torch.allclose(got.float(), want.float())


def fix_text_positions(model) -> bool:
    """Cast GroundingDINO's text position ids to float before their sinusoidal embedding,
    on this model instance only, if the installed transformers needs it; True if it did.

    Why: in transformers 5.16-5.19 ``GroundingDinoEncoderLayer.get_text_position_embeddings``
    passes the int64 ``text_position_ids`` to ``encode_sinusoidal_position_embedding``, which
    casts its sin/cos output back to the input's dtype, so the embedding collapses to
    {-1, 0, 1} (93% zeros at d_model 256): transformers issue 47674, fixed by PR 47675 at
    that call site, in no release ``setup.py`` allows yet.

    How: the probe (``text_positions_collapse``) runs the library's own method on the
    model's first encoder layer; only when it collapses does each encoder layer get an
    instance attribute ``get_text_position_embeddings`` (original in ``__wrapped__``) that
    passes the ids as float32 and returns the embedding in ``text_features``' dtype, as the
    upstream fix does (that casts to the features' dtype before the embedding; float32 first
    keeps ``id * 2 pi`` at float32 precision under fp16/bf16, where bf16 would round it by up
    to 0.125 rad at id 10). The class, other models and a fixed transformers are left alone.

    Remove when ``setup.py`` requires a transformers with PR 47675 (the probe then
    returns False on every allowed version and this does nothing).
    """
    from transformers.models.grounding_dino.modeling_grounding_dino import GroundingDinoEncoderLayer

    layers = [m for m in model.modules() if isinstance(m, GroundingDinoEncoderLayer)]
    if not layers or not text_positions_collapse(layers[0].get_text_position_embeddings, layers[0].d_model):
        return False
    for layer in layers:
        original = layer.get_text_position_embeddings

        def get_text_position_embeddings(text_features, text_position_embedding, text_position_ids, _original=original):
            if text_position_ids is None or text_position_ids.is_floating_point():
                return _original(text_features, text_position_embedding, text_position_ids)
            return _original(text_features, text_position_embedding, text_position_ids.float()).to(text_features.dtype)

        get_text_position_embeddings.__wrapped__ = original
        layer.get_text_position_embeddings = get_text_position_embeddings
    if text_positions_collapse(layers[0].get_text_position_embeddings, layers[0].d_model):
        raise RuntimeError("GroundingDINO text position ids still collapse after the float cast")
    return True


class GroundingDinoDetector:
    """Implements ``Detector``: text-prompted boxes for a batch of (image, text) pairs."""

    # Whether ``load`` applied ``fix_text_positions`` (the installed transformers needed it).
    text_position_fix: bool = False

    def __init__(self, model, processor, device: torch.device, dtype: torch.dtype, max_batch: int = 16):
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.max_batch = max_batch
        self.max_text_len = int(model.config.max_text_len)
        self.work = {"images": 0}  # int_engine.work: images through the detector

    @classmethod
    def option_types(cls) -> dict[str, type]:
        """The options ``load`` takes, name -> type: checked by ``int_engine.models.load``
        before anything is loaded."""
        return dict(OPTIONS)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", dtype: str = "float32", **options) -> "GroundingDinoDetector":
        """Load offline from a local directory. ``options``: ``max_batch`` (int), the most images
        one forward pass takes: by default 16 on CPU and 4 on CUDA, where a pass at 800 x 1333 holds
        ~1.7 GB of activations per view with Swin-B (``python -m int_engine.bench.cost``: 21.2 GB
        for 16 views)."""
        p = require_files(ROLE, path, EXPECTED, FORMAT)
        if dtype not in DTYPES:
            raise ConfigError(f"{ROLE}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise ConfigError(f"{ROLE}: unknown options {', '.join(sorted(unknown))} for {FORMAT}")
        try:
            from transformers import AutoConfig, AutoProcessor, GroundingDinoForObjectDetection

            config = AutoConfig.from_pretrained(p, local_files_only=True)
            if config.model_type != "grounding-dino":
                raise ValueError(f"config.json has model_type {config.model_type!r}, expected 'grounding-dino'")
            processor = AutoProcessor.from_pretrained(p, local_files_only=True)
            if type(processor).__name__ != "GroundingDinoProcessor":
                raise ValueError(f"processor is {type(processor).__name__}, expected GroundingDinoProcessor")
            # float32 weights always: half precision runs under autocast (``_detect_batch``), so the
            # norms, softmaxes and the box/class heads' outputs that are thresholded stay float32
            model = GroundingDinoForObjectDetection.from_pretrained(p, config=config, local_files_only=True, dtype=torch.float32)
            model.to(torch.device(device)).eval()
            position_fix = fix_text_positions(model)
        except Exception as err:  # any library failure is a load failure of this path
            raise ModelLoadError(f"{ROLE}: cannot load {FORMAT} from {p}: {err}") from err
        ids = {tok: processor.tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_IDS}
        if ids != SPECIAL_IDS:
            raise ModelLoadError(
                f"{ROLE}: cannot load {FORMAT} from {p}: tokenizer ids {ids} differ from the ids "
                f"GroundingDINO hard-codes {SPECIAL_IDS}"
            )
        default_batch = CUDA_MAX_BATCH if torch.device(device).type == "cuda" else CPU_MAX_BATCH
        detector = cls(model, processor, torch.device(device), DTYPES[dtype], int(options.get("max_batch", default_batch)))
        detector.text_position_fix = position_fix
        return detector

    def detect(
        self, images: Sequence[np.ndarray], texts: Sequence[str], box_threshold: float, text_threshold: float
    ) -> list[Detections]:
        """Boxes of ``texts[j]`` in ``images[j]`` (uint8 [H, W, 3]), one ``Detections`` per image.

        A query is kept when its best token probability exceeds ``box_threshold``;
        ``text_threshold`` only picks the phrase tokens, which this protocol does not
        return (as in Grounded-SAM). Boxes are float32 [N, 4] (x0, y0, x1, y1) in the
        image's pixels, clipped to it; scores float32 [N].
        """
        if len(images) != len(texts):
            raise ValueError(f"{ROLE}: {len(images)} images but {len(texts)} texts")
        for j, im in enumerate(images):
            if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                raise ValueError(f"{ROLE}: image {j} must be uint8 [H, W, 3], got {im.dtype} {im.shape}")
        out: list[Detections | None] = [None] * len(images)
        for idx in self._batches(images):
            dets = self._detect_batch([images[i] for i in idx], [texts[i] for i in idx], box_threshold, text_threshold)
            self.work["images"] += len(idx)
            for i, d in zip(idx, dets):
                out[i] = d
        return out  # type: ignore[return-value]

    def _batches(self, images: Sequence[np.ndarray]) -> list[list[int]]:
        """Indices grouped by the size the processor resizes each image to.

        Only same-size images share a forward pass: the processor would pad the others,
        and the Swin backbone sees the padding (only the transformer masks it), so an
        image's boxes would depend on its batch-mates.
        """
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, im in enumerate(images):
            groups[self._resized_size(im.shape[0], im.shape[1])].append(i)
        return [idx[k : k + self.max_batch] for idx in groups.values() for k in range(0, len(idx), self.max_batch)]

    def _resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) the image processor gives an image of (height, width), without touching pixels."""
        from transformers.image_transforms import get_size_with_aspect_ratio

        size = self.processor.image_processor.size
        if size.get("shortest_edge") and size.get("longest_edge"):
            return tuple(get_size_with_aspect_ratio((height, width), size["shortest_edge"], size["longest_edge"]))
        if size.get("height") and size.get("width"):
            return (size["height"], size["width"])
        # Anything else (max_height/max_width): key on the input size, which always groups
        # correctly, only more finely.
        return (height, width)

    @torch.inference_mode()
    def _detect_batch(
        self, images: list[np.ndarray], texts: list[str], box_threshold: float, text_threshold: float
    ) -> list[Detections]:
        """One forward pass over images the processor resizes to one common size."""
        inputs = self.processor(
            images=list(images),
            text=[caption(t) for t in texts],
            return_tensors="pt",
            padding="longest",
            truncation=True,
            max_length=self.max_text_len,
            input_data_format="channels_last",
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        half = self.dtype != torch.float32
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=half):
            outputs = self.model(**inputs)
        outputs.logits = outputs.logits.float()
        outputs.pred_boxes = outputs.pred_boxes.float()
        sizes = [im.shape[:2] for im in images]
        results = self.processor.post_process_grounded_object_detection(
            outputs,
            input_ids=inputs["input_ids"],
            threshold=box_threshold,
            text_threshold=text_threshold,
            target_sizes=sizes,
        )
        dets = []
        for (h, w), res in zip(sizes, results):
            boxes = res["boxes"].cpu().numpy().astype(np.float32).reshape(-1, 4)
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
            dets.append(Detections(boxes, res["scores"].cpu().numpy().astype(np.float32).reshape(-1)))
        return dets
