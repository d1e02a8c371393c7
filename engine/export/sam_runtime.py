"""SAM's exported graphs behind the callables the eager backend already uses.

``GraphEncoder`` turns the image-encoder graph into a ``[B, 3, S, S] -> [B, C, g, g]`` callable;
``GraphDecoder`` runs the prompt-decoder graph with ``sam_decode.PromptDecoder``'s signature.
Everything around them (resizing, normalising, padding, mask upscaling, thresholding) is the
eager path's torch code, unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch
from segment_anything.modeling import Sam

from ..backends.sam_decode import PromptDecoder
from ..errors import ModelLoadError
from ..models.zoo import checksum
from .manifest import require_artifact
from .onnx_sam import DECODER, DECODER_IO, ENCODER, ENCODER_IO, ROLE
from .runtime import Runner, compile_module, compile_options, open_runner, profile_rows


def open_sam_graphs(
    sam: Sam, runtime: str, artifacts: str | Path, model_dir: Path, device: str
) -> tuple[GraphEncoder, GraphDecoder]:
    """The image-encoder and prompt-decoder callables of ``runtime`` ("onnx" | "tensorrt") from
    ``artifacts``, both checked against the checkpoint in ``model_dir`` (hashed once)."""
    sha = checksum(Path(model_dir))
    enc = open_runner(ROLE, ENCODER, runtime, artifacts, model_dir, device, sha)
    entry = require_artifact(artifacts, ROLE, DECODER, runtime, model_dir, sha)
    embeddings = next((i for i in entry.get("inputs", []) if i.get("name") == DECODER_IO[0][0]), {})
    if embeddings.get("shape", [None])[0] != "num_prompts":
        raise ModelLoadError(
            f"{ROLE}: {entry.get('path', entry.get('file'))} decodes against one image embedding per call "
            f"(exported by an older int-engine); the backend needs one per prompt: re-export it "
            f"(`int-engine export --format {runtime} --out {artifacts}`)"
        )
    dec = open_runner(ROLE, DECODER, runtime, artifacts, model_dir, device, sha)
    # A TensorRT profile's bound on prompts: the backend then decodes in passes that fit it.
    return GraphEncoder(enc), GraphDecoder(dec, max_prompts=profile_rows(entry))


def compile_sam(sam: Sam, artifacts: str | Path | None, model_dir: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``torch.compile``d image encoder and prompt decoder (``PromptDecoder``) of ``sam``, with the
    options recorded in ``artifacts``' manifest when given; compilation happens at the first call."""
    options = compile_options(ROLE, artifacts, model_dir, (ENCODER, DECODER))
    return compile_module(sam.image_encoder, options), compile_module(PromptDecoder(sam), options)


class GraphEncoder:
    """images float [B, 3, S, S] -> image embeddings float32 [B, C, g, g] through ``runner``."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        (name,), _ = ENCODER_IO
        return self.runner({name: images})[0]


class GraphDecoder:
    """``PromptDecoder``'s call through the prompt-decoder graph: (image_embeddings [N, C, g, g],
    point_coords [N, P, 2], point_labels [N, P], mask_input, has_mask_input) -> low-res logits
    [N, M, 4g, 4g], iou predictions [N, M]. ``max_prompts``: the most N the graph accepts (None: any)."""

    def __init__(self, runner: Runner, max_prompts: int | None = None) -> None:
        self.runner = runner
        self.max_prompts = max_prompts

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        names, _ = DECODER_IO
        low_res, iou = self.runner(dict(zip(names, inputs)))
        return low_res, iou
