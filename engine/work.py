"""Work counters: what the models computed, apart from how fast the machine computed it.

Every backend that does model work keeps a plain dict ``work`` of running totals, counted
where the work happens:

- ``inpaint``: ``unet_latent_pixels`` — UNet evaluations x latent pixels (each denoising step
  runs every job's rows, 2 per job with classifier-free guidance, over latent_h x latent_w; the
  steps are the scheduler's timesteps: PNDM, SD2-inpainting's own, runs ``steps + 1``);
  ``inpaint_jobs`` — the jobs the model ran (empty masks excluded). Telea counts 0 UNet work.
- ``vlm``: ``prefill_tokens`` — prompt tokens the VLM computed (generate and score rows, image
  tokens included, padding excluded).
- ``segmenter``: ``encoder_images`` — images through SAM's image encoder.
- ``clip``: ``images`` — image-tower inputs (``image_text_similarity`` + ``similarity_maps``).
- ``detector``: ``images`` — images through GroundingDINO.

``work_of`` sums them over the five roles under ``<role>.<key>`` names, the roles named as in
the model calls (``int_engine.calls.ROLE_FIELD``: "inpaint" is ``Models.inpainter``; a backend without
``work``, e.g. the scripted test models, counts nothing); ``work_delta`` is what a run added.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .calls import ROLE_FIELD


def work_of(models: Any) -> dict[str, float]:
    """Every role's ``work`` counters, as ``{"<role>.<key>": total}``; roles without any are absent."""
    out: dict[str, float] = {}
    for role, field in ROLE_FIELD.items():
        counters = getattr(getattr(models, field, None), "work", None)
        if not isinstance(counters, Mapping):
            continue
        for key, value in counters.items():
            name = f"{role}.{key}"
            out[name] = out.get(name, 0.0) + float(value)
    return out


def work_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """``after - before`` per counter (a counter missing on one side is 0 there)."""
    return {k: float(after.get(k, 0.0)) - float(before.get(k, 0.0)) for k in sorted(set(before) | set(after))}


def per_unit(work: Mapping[str, float], units: float) -> dict[str, float]:
    """Each counter divided by ``units`` (e.g. image-iterations); zeros when there are none."""
    return {k: (float(v) / units if units else 0.0) for k, v in sorted(work.items())}
