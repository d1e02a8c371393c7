"""Any diffusers inpainting pipeline through DiffusersInpainter (AutoPipelineForInpainting): tiny
SDXL-inpainting and tiny SD3 (no T5) built here, and the SD2 tiny directory the ``sd`` backend reads."""

from __future__ import annotations

import inspect
import json
import shutil

import numpy as np
import pytest
import torch

from int_engine.backends.inpaint_diffusers import DiffusersInpainter
from int_engine.backends.inpaint_sd import SDInpainter
from int_engine.errors import ConfigError, ModelLoadError
from int_engine.models import tiny_inpaint, tiny_inpaint_sd3, tiny_inpaint_sdxl
from int_engine.protocols import Inpainter

PROMPT = "sand, high quality, detailed, and well-integrated with the original image."
NEGATIVE = "frog is not a camouflaged animal."
STEPS, GUIDANCE = 2, 7.5
# Parity with the pipeline called directly, in uint8 levels of the output: the backend runs the
# same computation (batched or not), so only float rounding of batched convolutions may differ.
PARITY_LEVELS = 2
FAMILIES = {
    "sdxl": (tiny_inpaint_sdxl, "StableDiffusionXLInpaintPipeline", "StableDiffusionXLInpaintPipeline"),
    "sd3": (tiny_inpaint_sd3, "StableDiffusion3Pipeline", "StableDiffusion3InpaintPipeline"),
}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """family -> a freshly built tiny directory (sdxl, sd3, and sd2 = the ``sd`` backend's tiny one)."""
    root = tmp_path_factory.mktemp("diffusers_inpaint")
    out = {}
    for family, (builder, _, _) in FAMILIES.items():
        info = builder.build(root / family, seed=0)
        assert info["format"] == builder.FORMAT and info["params"] > 0
        out[family] = root / family
    tiny_inpaint.build(root / "sd2", seed=0)
    out["sd2"] = root / "sd2"
    return out


@pytest.fixture(scope="module")
def inpainters(dirs):
    return {family: DiffusersInpainter.load(dirs[family], size=32, steps=STEPS, guidance_scale=GUIDANCE) for family in FAMILIES}


def _jobs(n: int = 3, square: bool = False):
    """n random images (32 x 32 when ``square``, else of different shapes), each with a rectangular mask."""
    rng = np.random.default_rng(0)
    shapes = [(32, 32)] * n if square else [(40, 60), (50, 30), (32, 32), (24, 72)][:n]
    images, masks = [], []
    for k, (h, w) in enumerate(shapes):
        images.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        m = np.zeros((h, w), np.float32)
        m[h // 4 + k : h // 2 + 4 + k, w // 4 : w // 2 + 4] = 1.0
        masks.append(m)
    return images, masks, [PROMPT] * n, [NEGATIVE] * n, [11, 22, 33, 44][:n]


def _direct(pipe, image: np.ndarray, mask: np.ndarray, seed: int) -> np.ndarray:
    """The documented diffusers call on one 32 x 32 job -> uint8 [32, 32, 3] (not composited)."""
    with torch.inference_mode():
        out = pipe(
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            image=torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None],
            mask_image=torch.from_numpy(mask)[None, None],
            height=32,
            width=32,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            strength=1.0,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np",
        ).images[0]
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


# -- tiny builders -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_layout_and_auto_mapping(dirs, inpainters, family):
    _, saved_as, loaded_as = FAMILIES[family]
    d = dirs[family]
    index = json.loads((d / "model_index.json").read_text())
    assert index["_class_name"] == saved_as
    assert index["text_encoder"][1].startswith("CLIPTextModel") and index["text_encoder_2"][1] == "CLIPTextModelWithProjection"
    for tok in ("tokenizer", "tokenizer_2"):  # vocab.json + merges.txt, as the real repos
        assert (d / tok / "merges.txt").exists() and not (d / tok / "tokenizer.json").exists()
    if family == "sd3":
        assert index["text_encoder_3"] == [None, None] and index["tokenizer_3"] == [None, None]  # no T5
        assert json.loads((d / "vae" / "config.json").read_text())["latent_channels"] == 16
    else:
        assert json.loads((d / "unet" / "config.json").read_text())["in_channels"] == 9
    assert sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) < 12 * 2**20
    inp = inpainters[family]
    assert isinstance(inp, Inpainter) and type(inp.pipe).__name__ == loaded_as


def test_tiny_builds_are_deterministic(dirs, tmp_path):
    tiny_inpaint_sd3.build(tmp_path, seed=0)
    for name in ("transformer/diffusion_pytorch_model.safetensors", "text_encoder_2/model.safetensors", "tokenizer/merges.txt"):
        assert (tmp_path / name).read_bytes() == (dirs["sd3"] / name).read_bytes(), name


# -- parity with the diffusers pipeline --------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_each_job_equals_the_pipeline_called_directly(inpainters, family):
    """A batch of three 32 x 32 jobs (working size 32: no resizing) equals, job by job, the
    pipeline's documented call with that job's seed, inside the mask; outside it is the input."""
    inp = inpainters[family]
    images, masks, prompts, negs, seeds = _jobs(3, square=True)
    outs = inp.inpaint(images, masks, prompts, negs, seeds)
    for im, m, out, seed in zip(images, masks, outs, seeds):
        inside = m > 0.5
        direct = _direct(inp.pipe, im, m, seed)
        assert _max_diff(out[inside], direct[inside]) <= PARITY_LEVELS
        np.testing.assert_array_equal(out[~inside], im[~inside])
        assert np.abs(out[inside].astype(int) - im[inside].astype(int)).mean() > 10  # the model painted
    other = _direct(inp.pipe, images[0], masks[0], seeds[0] + 1)
    assert _max_diff(other[masks[0] > 0.5], outs[0][masks[0] > 0.5]) > 10  # the seed matters


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_equals_one_by_one_and_bounded_batches(inpainters, family, monkeypatch):
    inp = inpainters[family]
    images, masks, prompts, negs, seeds = _jobs(4)
    batch = inp.inpaint(images, masks, prompts, negs, seeds)
    for j in range(4):
        alone = inp.inpaint(images[j : j + 1], masks[j : j + 1], prompts[j : j + 1], negs[j : j + 1], seeds[j : j + 1])[0]
        assert alone.shape == images[j].shape and alone.dtype == np.uint8
        assert _max_diff(batch[j], alone) <= PARITY_LEVELS
        np.testing.assert_array_equal(batch[j][masks[j] <= 0.5], images[j][masks[j] <= 0.5])
    calls = []
    run = inp._run
    monkeypatch.setattr(inp, "_run", lambda imgs, *rest: calls.append(len(imgs)) or run(imgs, *rest))
    monkeypatch.setattr(inp, "max_batch", 3)
    bounded = inp.inpaint(images, masks, prompts, negs, seeds)
    assert calls == [3, 1]
    for x, y in zip(batch, bounded):
        assert _max_diff(x, y) <= PARITY_LEVELS


def test_max_batch_and_vae_slicing_options(dirs):
    inp = DiffusersInpainter.load(dirs["sdxl"], size=32, steps=STEPS, max_batch=2, vae_slicing=True)
    assert inp.max_batch == 2 and inp.pipe.vae.use_slicing
    decoded = []
    decode = inp.pipe.vae.decoder.forward
    inp.pipe.vae.decoder.forward = lambda z, *a, **k: decoded.append(len(z)) or decode(z, *a, **k)
    images, masks, prompts, negs, seeds = _jobs(3)
    outs = inp.inpaint(images, masks, prompts, negs, seeds)
    assert decoded == [1, 1, 1]  # batches of 2 + 1 jobs, one image per decoder pass
    for im, m, out in zip(images, masks, outs):
        np.testing.assert_array_equal(out[m <= 0.5], im[m <= 0.5])
    assert inp.work["inpaint_jobs"] == 3
    # 2 steps x 3 jobs x 2 rows (guidance) x (32 / VAE scale 2)^2 latent pixels
    assert inp.work["unet_latent_pixels"] == STEPS * 3 * 2 * 16**2


def test_empty_mask_skips_the_model(inpainters, monkeypatch):
    inp = inpainters["sd3"]
    images, masks, prompts, negs, seeds = _jobs(2)
    masks[0] = np.zeros_like(masks[0])
    calls = []
    run = inp._run
    monkeypatch.setattr(inp, "_run", lambda imgs, *rest: calls.append(len(imgs)) or run(imgs, *rest))
    outs = inp.inpaint(images, masks, prompts, negs, seeds)
    np.testing.assert_array_equal(outs[0], images[0])
    assert calls == [1]


# -- the SD2 directory through AutoPipelineForInpainting --------------------------------------------


def test_sd2_directory_agrees_with_the_sd_backend(dirs):
    auto = DiffusersInpainter.load(dirs["sd2"], size=32, steps=STEPS, guidance_scale=GUIDANCE)
    sd = SDInpainter.load(dirs["sd2"], size=32, steps=STEPS, guidance_scale=GUIDANCE)
    assert type(auto.pipe).__name__ == "StableDiffusionInpaintPipeline"
    images, masks, prompts, negs, seeds = _jobs(3)
    a = auto.inpaint(images, masks, prompts, negs, seeds)
    b = sd.inpaint(images, masks, prompts, negs, seeds)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)  # the same pipeline, the same batched VAE encode and draws


# -- what AutoPipelineForInpainting maps -------------------------------------------------------------


def test_flux_fill_is_not_in_the_auto_mapping_but_takes_a_mask(tmp_path):
    """diffusers 0.42's AutoPipelineForInpainting maps FluxPipeline (to FluxInpaintPipeline) but not
    FluxFillPipeline; the backend then loads the named class itself, as it takes ``mask_image``."""
    from diffusers import AutoPipelineForInpainting, FluxFillPipeline

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxFillPipeline"}))
    with pytest.raises(ValueError, match="can't find a pipeline linked to FluxFillPipeline"):
        AutoPipelineForInpainting.from_pretrained(tmp_path, local_files_only=True)
    assert "mask_image" in inspect.signature(FluxFillPipeline.__call__).parameters


def test_a_pipeline_without_inpainting_is_refused(dirs, tmp_path):
    broken = tmp_path / "upscale"
    shutil.copytree(dirs["sd2"], broken)
    index = json.loads((broken / "model_index.json").read_text())
    (broken / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionUpscalePipeline"}))
    with pytest.raises(ModelLoadError, match="maps no inpainting pipeline to StableDiffusionUpscalePipeline"):
        DiffusersInpainter.load(broken)


# -- errors --------------------------------------------------------------------------------------------


def test_missing_dir_and_missing_component(dirs, tmp_path):
    with pytest.raises(ModelLoadError, match="nope"):
        DiffusersInpainter.load(tmp_path / "nope")
    broken = tmp_path / "no_te2"
    shutil.copytree(dirs["sdxl"], broken, ignore=shutil.ignore_patterns("text_encoder_2"))
    with pytest.raises(ModelLoadError, match="text_encoder_2/") as err:
        DiffusersInpainter.load(broken)
    assert str(broken) in str(err.value)
    no_denoiser = tmp_path / "no_transformer"
    shutil.copytree(dirs["sd3"], no_denoiser, ignore=shutil.ignore_patterns("transformer"))
    with pytest.raises(ModelLoadError, match="unet/config.json|transformer/config.json"):
        DiffusersInpainter.load(no_denoiser)


def test_bad_options(dirs):
    with pytest.raises(ConfigError, match="multiple of 4"):  # SD3: VAE scale 2 x patch 2
        DiffusersInpainter.load(dirs["sd3"], size=30)
    with pytest.raises(ConfigError, match="strength"):
        DiffusersInpainter.load(dirs["sd3"], strength=0.0)
    with pytest.raises(ConfigError, match="fit"):
        DiffusersInpainter.load(dirs["sdxl"], fit="crop")
