"""The working-square part every diffusion inpainting backend shares (``inpaint_sd.SDInpainter``,
``inpaint_diffusers.DiffusersInpainter``): jobs checked and their masks binarised, empty masks
skipped, the rest run in batches of at most ``max_batch`` jobs, each view fitted into one
``size x size`` square, the diffusers pipeline called once per batch with one CPU
``torch.Generator`` per job, and the model's square cropped, resized back and composited so that
pixels outside the mask are exactly the input's.

Geometry: with ``fit="pad"`` a view keeps its aspect ratio: it is resized so that its longer
side is ``size`` and the rest of the square is filled by reflecting the view (the model sees
plausible context there and is never asked to paint it: the mask is 0 in the padding). With
``fit="stretch"`` the view is resized to the square, distorting elongated views but using
every working pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np
import torch

from .inpaint_jobs import binary_mask, check_jobs

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


@dataclass(frozen=True)
class Fit:
    """Where a job's view sits in the working square: resized to (h, w) at offset (top, left)."""

    h: int
    w: int
    top: int
    left: int


class SquareInpainter:
    """Base of the square-working diffusion inpainters on a diffusers pipeline ``pipe``.

    size: working square side; steps: denoising steps; guidance_scale: classifier-free guidance
    (<= 1 turns it and the negative prompt off); dilate: mask growth in input pixels; fit: "pad"
    | "stretch"; max_batch: jobs per pipeline call (0 = all). A subclass may add pipeline
    arguments in ``_call_args`` (one pipeline call over B jobs).

    pad_to: jobs in every pipeline call (0 = as many as the call has). A compiled runtime sets
    it to ``max_batch``, so that every call has one batch shape and nothing recompiles: a call
    with fewer jobs is filled up with copies of its last job, whose outputs are dropped (each job
    has its own generator, so they change nothing but the time taken)."""

    role = "inpaint"
    pad_to = 0

    def __init__(
        self,
        pipe: DiffusionPipeline,
        device: str,
        size: int,
        steps: int,
        guidance_scale: float,
        dilate: int,
        fit: str,
        max_batch: int,
    ) -> None:
        self.pipe = pipe
        self.device = device
        self.size = size
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.dilate = dilate
        self.fit = fit
        self.max_batch = max_batch
        # running totals (int_engine.work): denoiser evaluations x latent pixels, jobs the model ran
        self.work = {"unet_latent_pixels": 0, "inpaint_jobs": 0}

    # -- geometry ---------------------------------------------------------------------------

    def _placement(self, height: int, width: int) -> Fit:
        s = self.size
        if self.fit == "stretch":
            return Fit(s, s, 0, 0)
        scale = s / max(height, width)
        h, w = max(1, round(height * scale)), max(1, round(width * scale))
        return Fit(h, w, (s - h) // 2, (s - w) // 2)

    def _to_square(self, image: np.ndarray, mask: np.ndarray, f: Fit) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [H, W, 3] + bool [H, W] -> float32 [S, S, 3] in [0, 1] + float32 [S, S] in {0, 1}."""
        s = self.size
        shrink = f.h < image.shape[0]
        img = cv2.resize(image, (f.w, f.h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
        # Any working pixel touched by the mask is masked, so a thin mask never vanishes.
        m = cv2.resize(mask.astype(np.float32), (f.w, f.h), interpolation=cv2.INTER_AREA) > 0
        if (f.h, f.w) != (s, s):
            pads = (f.top, s - f.h - f.top, f.left, s - f.w - f.left)
            img = cv2.copyMakeBorder(img, *pads, borderType=cv2.BORDER_REFLECT_101)
            m = np.pad(m, ((pads[0], pads[1]), (pads[2], pads[3])))
        return img.astype(np.float32) / 255.0, m.astype(np.float32)

    @staticmethod
    def _from_square(out: np.ndarray, f: Fit, height: int, width: int) -> np.ndarray:
        """float [S, S, 3] in [0, 1] -> uint8 [H, W, 3]: crop the view, resize it back."""
        crop = out[f.top : f.top + f.h, f.left : f.left + f.w]
        crop = cv2.resize(crop, (width, height), interpolation=cv2.INTER_CUBIC)
        return np.clip(np.rint(crop * 255.0), 0, 255).astype(np.uint8)

    def _squares(self, images: list[np.ndarray], bins: list[np.ndarray]) -> tuple[list[Fit], torch.Tensor, torch.Tensor]:
        """B jobs -> their fits, images float32 [B, 3, S, S] in [0, 1] (a channels-last view of the
        stacked squares) and masks float32 [B, 1, S, S] in {0, 1}."""
        fits = [self._placement(*im.shape[:2]) for im in images]
        squares = [self._to_square(im, m, f) for im, m, f in zip(images, bins, fits)]
        image = torch.from_numpy(np.stack([sq[0] for sq in squares])).permute(0, 3, 1, 2)
        mask = torch.from_numpy(np.stack([sq[1] for sq in squares]))[:, None]
        return fits, image, mask

    # -- jobs -----------------------------------------------------------------------------------

    def inpaint(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        prompts: Sequence[str],
        negative_prompts: Sequence[str],
        seeds: Sequence[int],
    ) -> list[np.ndarray]:
        """Fill ``masks[j]`` (float32 [H, W], > 0.5 = fill) of ``images[j]`` (uint8 [H, W, 3])
        guided by ``prompts[j]`` / ``negative_prompts[j]``, noise from ``seeds[j]``.

        Returns one uint8 [H, W, 3] per job. Jobs with an empty mask come back unchanged
        and cost nothing; all others run in one batched model call (or ``max_batch``-sized
        calls), each with its own ``torch.Generator`` so that batch-mates do not matter.
        """
        check_jobs(self.role, images, masks, prompts, negative_prompts, seeds)
        outputs = [np.array(im, copy=True) for im in images]
        bins, jobs = [], []
        for j, mk in enumerate(masks):
            bins.append(binary_mask(mk, self.dilate))
            if bins[j].any():
                jobs.append(j)
        chunk = self.max_batch or max(1, len(jobs))
        for start in range(0, len(jobs), chunk):
            part = jobs[start : start + chunk]
            filled = self._run(
                [images[j] for j in part],
                [bins[j] for j in part],
                [prompts[j] for j in part],
                [negative_prompts[j] for j in part],
                [seeds[j] for j in part],
            )
            for j, f in zip(part, filled):
                outputs[j] = np.where(bins[j][..., None], f, images[j])
        return outputs

    def _run(
        self,
        images: list[np.ndarray],
        bins: list[np.ndarray],
        prompts: list[str],
        negative_prompts: list[str],
        seeds: list[int],
    ) -> list[np.ndarray]:
        """One pipeline call over B jobs -> B uint8 [H, W, 3] model outputs (not yet composited)."""
        jobs = len(images)
        if self.pad_to > jobs:  # filler jobs: the last one again (``pad_to``)
            images, bins, prompts, negative_prompts, seeds = (
                [*x, *[x[-1]] * (self.pad_to - jobs)] for x in (images, bins, prompts, negative_prompts, seeds)
            )
        fits, image_t, mask_t = self._squares(images, bins)  # [B, 3, S, S], [B, 1, S, S]
        # CPU generators: the same seed gives the same noise on every device.
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        args = dict(
            prompt=list(prompts),
            negative_prompt=list(negative_prompts) if self.guidance_scale > 1 else None,
            image=image_t,
            mask_image=mask_t,
            height=self.size,
            width=self.size,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance_scale,
            generator=generators,
            output_type="np",
        )
        with torch.inference_mode():
            result = self.pipe(**self._call_args(args, image_t, mask_t, generators)).images  # float32 [B, S, S, 3]
        # every denoising step the pipeline ran evaluates the denoiser on all B jobs' rows (2 each
        # with classifier-free guidance, fillers included) over the (size / vae scale)^2 latent grid
        guided = getattr(self.pipe, "do_classifier_free_guidance", False)
        evaluations = getattr(self.pipe, "num_timesteps", self.steps)
        latent = self.size // self.pipe.vae_scale_factor
        self.work["unet_latent_pixels"] += evaluations * len(images) * (2 if guided else 1) * latent**2
        self.work["inpaint_jobs"] += jobs
        return [self._from_square(out, f, *im.shape[:2]) for out, f, im in zip(result[:jobs], fits, images)]

    def _call_args(self, args: dict, image: torch.Tensor, mask: torch.Tensor, generators: list[torch.Generator]) -> dict:
        """The keyword arguments of the pipeline call: ``args`` (the documented ones every
        inpainting pipeline shares) and a subclass's own, given the batch's squares ``image``
        [B, 3, S, S] and ``mask`` [B, 1, S, S] and its generators; runs under inference mode."""
        return args
