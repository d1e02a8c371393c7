"""SAM (segment-anything) as the engine's ``Segmenter`` (eq 9).

On disk a SAM model is a directory holding the segment-anything state dict (``sam.pth``
or any single ``*.pth``, e.g. the published ``sam_vit_h_4b8939.pth``) and a
``sam_arch.json`` naming its architecture, either in full (the fields of ``SamArch``)
or as ``{"model_type": "vit_h"}`` (or ``vit_l`` / ``vit_b``), which takes the published
parameters (further keys override them). With no ``sam_arch.json`` the model type is
read from the file name (``sam_vit_h_*.pth`` -> vit_h), so a directory holding only the
file downloaded from the segment-anything release loads as it is. The tiny zoo and
vit_h go through the same builder, ``build_sam``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.utils.transforms import ResizeLongestSide

from ..errors import ModelLoadError
from ..models.checks import require_files
from ..protocols import SegmentRequest
from .precision import float32_islands
from .sam_attention import use_sdpa
from .sam_decode import Decoder, PromptDecoder, decode_requests, flatten_prompts, mask_probabilities
from .segment_checks import check_segment_request

ROLE = "segmenter"
FORMAT = "segment-anything (state dict *.pth + sam_arch.json)"
ARCH_FILE = "sam_arch.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class SamArch:
    """Everything ``build_sam`` needs; the defaults are those shared by the published models."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    encoder_window_size: int = 14
    encoder_mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# The parameters of segment_anything.build_sam's three published models.
PUBLISHED: dict[str, SamArch] = {
    "vit_h": SamArch(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": SamArch(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": SamArch(768, 12, 12, (2, 5, 8, 11)),
}


def arch_from_json(data: dict[str, Any]) -> SamArch:
    """A ``SamArch`` from ``sam_arch.json``'s content: full fields, or ``model_type`` plus
    optional overrides. Raises ValueError on an unknown model type, unknown or missing keys."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    data = dict(data)
    known = {f.name for f in fields(SamArch)}
    model_type = data.pop("model_type", None)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown keys {unknown}")
    # JSON has no tuples; the dataclass is frozen and compared, so normalise lists.
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    if model_type is None:
        return SamArch(**data)
    if model_type not in PUBLISHED:
        raise ValueError(f"unknown model_type {model_type!r} (expected one of {sorted(PUBLISHED)})")
    return replace(PUBLISHED[model_type], **data)


def build_sam(arch: SamArch) -> Sam:
    """A randomly initialised ``Sam`` of architecture ``arch``, in eval mode, on the current
    default device (wrap in ``torch.device("meta")`` to get the structure for free); its
    attention runs on ``scaled_dot_product_attention`` (``sam_attention``)."""
    grid = arch.image_size // arch.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=arch.image_size,
            patch_size=arch.patch_size,
            embed_dim=arch.encoder_embed_dim,
            depth=arch.encoder_depth,
            num_heads=arch.encoder_num_heads,
            mlp_ratio=arch.encoder_mlp_ratio,
            out_chans=arch.prompt_embed_dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=arch.encoder_window_size,
            global_attn_indexes=tuple(arch.encoder_global_attn_indexes),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=arch.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=arch.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_num_heads,
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=arch.iou_head_depth,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=list(arch.pixel_mean),
        pixel_std=list(arch.pixel_std),
    )
    use_sdpa(sam)
    return sam.eval()


def resolve_checkpoint(path: str | Path, checkpoint: str | None = None) -> tuple[Path, SamArch]:
    """The state-dict file and architecture of the SAM directory ``path``.

    The file is ``checkpoint`` if given, else ``sam.pth``, else the directory's only
    ``*.pth``. The architecture comes from ``sam_arch.json``, else from the file name
    (``sam_vit_h_*.pth`` / ``sam_vit_l_*`` / ``sam_vit_b_*``). Raises ModelLoadError.
    """
    raw = Path(path).expanduser()
    found = sorted(p.name for p in raw.glob("*.pth")) if raw.is_dir() else []
    wanted = checkpoint or ("sam.pth" if not found or "sam.pth" in found else "|".join(found))
    root = require_files(ROLE, path, [wanted], FORMAT)
    if checkpoint is None and "sam.pth" not in found and len(found) > 1:
        raise ModelLoadError(f"{ROLE}: {root} holds several state dicts {found}; pass checkpoint=<name>")
    pth = root / (checkpoint or ("sam.pth" if "sam.pth" in found else found[0]))

    arch_path = root / ARCH_FILE
    if arch_path.exists():
        try:
            arch = arch_from_json(json.loads(arch_path.read_text()))
        except (ValueError, TypeError) as err:
            raise ModelLoadError(f"{ROLE}: cannot load {FORMAT} from {root}: bad {arch_path}: {err}") from err
        return pth, arch
    match = re.match(r"sam_(vit_[hlb])(_|\.)", pth.name)
    if match is None:
        raise ModelLoadError(
            f"{ROLE}: {root} is not a {FORMAT} directory: missing {ARCH_FILE} "
            f"(and the model type cannot be read from {pth.name!r}; expected sam_vit_h_*.pth / vit_l / vit_b)"
        )
    return pth, PUBLISHED[match.group(1)]


def load_sam(pth: Path, arch: SamArch, device: str, dtype: torch.dtype) -> Sam:
    """Build ``arch`` and fill it with the state dict ``pth``; the image encoder in ``dtype``
    with its LayerNorms as float32 islands (``precision``), the prompt encoder and mask decoder in
    float32 (the predictor feeds them float32 prompts; they are 4M of vit_h's 641M parameters)."""
    state = torch.load(pth, map_location="cpu", weights_only=True)
    # Building on meta and assigning the loaded tensors skips vit_h's random init (seconds,
    # and a second copy of 2.5 GB); strict=True still proves every weight was in the file.
    with torch.device("meta"):
        sam = build_sam(arch)
    sam.load_state_dict(state, strict=True, assign=True)
    # pixel_mean / pixel_std are non-persistent buffers: not in the file, so set them here.
    sam.pixel_mean = torch.tensor(arch.pixel_mean, dtype=torch.float32).view(-1, 1, 1)
    sam.pixel_std = torch.tensor(arch.pixel_std, dtype=torch.float32).view(-1, 1, 1)
    left = [n for n, t in [*sam.named_parameters(), *sam.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"tensors not filled by the state dict: {left[:5]}")
    sam.to(device=device, dtype=torch.float32)
    sam.image_encoder.to(dtype=dtype)
    if dtype != torch.float32:
        float32_islands(sam.image_encoder, (torch.nn.LayerNorm, LayerNorm2d))
    return sam.eval()


class SamSegmenter:
    """``Segmenter`` on segment-anything's SAM.

    A call encodes its request images in batches of up to ``batch_size`` (each resized and
    padded exactly as ``SamPredictor.set_image`` does), then decodes the prompts of all its
    requests together (``sam_decode``: every prompt with its own image's embedding, at most
    ``decode_batch`` prompts per pass); each box of a request carries the request's points.
    """

    def __init__(
        self,
        sam: Sam,
        multimask_output: bool = True,
        batch_size: int = 4,
        decode_batch: int = 64,
        *,
        encoder: Callable[[torch.Tensor], torch.Tensor] | None = None,
        decoder: Decoder | None = None,
        runtime: str = "eager",
    ) -> None:
        """encoder / decoder: stand-ins for ``sam.image_encoder`` and ``PromptDecoder(sam)``
        (the exported or compiled graphs, see ``int_engine.export.sam_runtime``); None = eager."""
        self.sam = sam
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)
        self.encoder = encoder if encoder is not None else sam.image_encoder
        self.decoder = decoder if decoder is not None else PromptDecoder(sam)
        self.runtime = runtime
        self.multimask_output = multimask_output
        self.batch_size = max(1, int(batch_size))
        self.decode_batch = max(1, int(decode_batch))
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
        checkpoint: str | None = None,
        runtime: str = "eager",
        artifacts: str | Path | None = None,
    ) -> "SamSegmenter":
        """Load the SAM directory ``path`` (see the module docstring) offline.

        multimask_output: ask SAM for its 3 masks per prompt and keep the highest-scoring
        one (SPEC step 8: the authors' ``predict(..., multimask_output=True)`` and ``argmax(scores)``);
        False takes SAM's single mask.
        batch_size: images per image-encoder call. decode_batch: prompts per mask-decoder
        pass (each holds a copy of its image embedding: 4 MB for vit_h). checkpoint: which
        ``*.pth`` to load.
        runtime: "eager"; "onnx" / "tensorrt" run the image encoder and the prompt decoder
        from the export folder ``artifacts`` (``int-engine export``), refusing artifacts
        exported from another checkpoint; "compile" wraps them with ``torch.compile``
        (options from ``artifacts``' manifest when given).
        """
        if runtime != "eager":  # the export package is only needed off the eager path
            from ..export.runtime import check_runtime

            check_runtime(ROLE, runtime, artifacts)
        pth, arch = resolve_checkpoint(path, checkpoint)
        if dtype not in DTYPES:
            raise ModelLoadError(f"{ROLE}: unknown dtype {dtype!r} for {path} (expected one of {sorted(DTYPES)})")
        try:
            sam = load_sam(pth, arch, device, DTYPES[dtype])
        except Exception as err:  # torch/segment-anything raise many types; one message for the CLI
            raise ModelLoadError(f"{ROLE}: cannot load {FORMAT} from {path}: {err}") from err
        encoder = decoder = None
        if runtime in ("onnx", "tensorrt"):
            from ..export.sam_runtime import open_sam_graphs

            encoder, decoder = open_sam_graphs(sam, runtime, artifacts, pth.parent, device)
            if decoder.max_prompts is not None:  # a TensorRT profile's upper bound
                decode_batch = min(decode_batch, decoder.max_prompts)
            # the graph replaces the eager encoder: its weights (2.5 GB for vit_h in float32) go
            # on meta, keeping the attributes the backend reads (image size, dtype)
            sam.image_encoder.to("meta")
        elif runtime == "compile":
            from ..export.sam_runtime import compile_sam

            encoder, decoder = compile_sam(sam, artifacts, pth.parent)
        return cls(
            sam,
            multimask_output=multimask_output,
            batch_size=batch_size,
            decode_batch=decode_batch,
            encoder=encoder,
            decoder=decoder,
            runtime=runtime,
        )

    @property
    def device(self) -> torch.device:
        return self.sam.device

    def segment(self, requests: Sequence[SegmentRequest]) -> list[np.ndarray]:
        """One float32 [H, W] mask probability per request, at its image's size (``Segmenter``):
        the maximum over its boxes (each with the request's points), the points-only mask when it
        has no box, zeros when it has neither. ``> 0.5`` is SAM's own binary mask."""
        out: list[np.ndarray | None] = [None] * len(requests)
        todo = []
        for i, req in enumerate(requests):
            check_segment_request(ROLE, req, point_shapes=False)
            if len(req.boxes) or len(req.points):
                todo.append(i)
            else:
                out[i] = np.zeros(req.image.shape[:2], np.float32)
        if not todo:
            return out  # type: ignore[return-value]
        originals = [tuple(requests[i].image.shape[:2]) for i in todo]
        with torch.inference_mode():
            features, input_sizes = [], []
            for start in range(0, len(todo), self.batch_size):
                f, sizes = self._encode([requests[i].image for i in todo[start : start + self.batch_size]])
                features.append(f)
                input_sizes += sizes
            prompts = [self._prompts(requests[i], size) for i, size in zip(todo, originals)]
            logits = decode_requests(self.decoder, torch.cat(features), prompts, self.multimask_output, self.decode_batch)
            masks = mask_probabilities(self.sam, logits, input_sizes, originals, self.decode_batch)
        for i, mask in zip(todo, masks):
            out[i] = mask.to(torch.float32).cpu().numpy()
        return out  # type: ignore[return-value]

    def _encode(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Image embeddings float32 [B, C, h, w] and each image's resized (unpadded) size."""
        batch, sizes = [], []
        for image in images:
            resized = self.transform.apply_image(image)  # uint8 [h, w, 3], long side = img_size
            x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
            sizes.append(tuple(x.shape[-2:]))
            batch.append(self.sam.preprocess(x))  # normalised, padded to a square
        features = self.encoder(torch.cat(batch).to(self.sam.image_encoder.patch_embed.proj.weight.dtype))
        self.work["encoder_images"] += len(batch)
        return features.float(), sizes

    def _prompts(self, req: SegmentRequest, original: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A request's prompts in the encoder's frame: coords [N, P, 2], labels [N, P] (``flatten_prompts``)."""
        boxes = coords = labels = None
        if len(req.boxes):
            boxes = self._to_encoder_frame(req.boxes, original).reshape(-1, 4)  # [B, 4]
        if len(req.points):
            coords = self._to_encoder_frame(req.points, original).reshape(1, -1, 2)  # [1, P, 2]
            labels = torch.as_tensor(np.asarray(req.labels), dtype=torch.float32, device=self.device)[None]
        return flatten_prompts(coords, labels, boxes)

    def _to_encoder_frame(self, xy, original: tuple[int, int]) -> torch.Tensor:
        """Pixel coordinates (x, y pairs, any shape ending in an even count) of an image of
        ``original`` (h, w) scaled to its resized frame, float32 [K, 2]: what SAM's
        ``ResizeLongestSide.apply_coords_torch`` computes, bit for bit, without its deepcopy,
        which clones the tensor's storage and was a third of a call's prompt handling."""
        old_h, old_w = original
        new_h, new_w = self.transform.get_preprocess_shape(old_h, old_w, self.transform.target_length)
        scale = torch.tensor([new_w / old_w, new_h / old_h], dtype=torch.float32, device=self.device)
        return torch.tensor(np.asarray(xy, np.float32).reshape(-1, 2), device=self.device) * scale
