"""Inpainting role: tiny SD2-inpainting through SDInpainter, and the classical Telea backend."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest

from int_engine.backends.inpaint_sd import SDInpainter
from int_engine.backends.inpaint_telea import TeleaInpainter
from int_engine.errors import ConfigError, ModelLoadError
from int_engine.models import tiny_inpaint
from int_engine.models.zoo import read_manifest
from int_engine.protocols import Inpainter

PROMPT = "sand, high quality, detailed, and well-integrated with the original image."
NEGATIVE = "frog is not a camouflaged animal."


@pytest.fixture(scope="module")
def tiny_dir(tiny_zoo, tiny_model):
    info = read_manifest(tiny_zoo)["models"]["inpaint"]
    assert info["format"] == "diffusers-sd-inpaint" and info["params"] > 0
    return tiny_model("inpaint")


@pytest.fixture(scope="module")
def sd(tiny_dir):
    return SDInpainter.load(tiny_dir, size=32, steps=2, guidance_scale=7.5)


def _jobs(n: int = 3):
    """n random images of different shapes, each with a rectangular mask."""
    rng = np.random.default_rng(0)
    shapes = [(40, 60), (50, 30), (32, 32), (24, 72)][:n]
    images, masks = [], []
    for h, w in shapes:
        images.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        m = np.zeros((h, w), np.float32)
        m[h // 4 : h // 2 + 4, w // 4 : w // 2 + 4] = 1.0
        masks.append(m)
    return images, masks, [PROMPT] * n, [NEGATIVE] * n, [11, 22, 33, 44][:n]


# -- tiny builder --------------------------------------------------------------------------------


def test_tiny_layout_is_sd2_inpainting(tiny_dir):
    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInpaintPipeline"
    assert index["safety_checker"] == [None, None] and index["feature_extractor"] == [None, None]
    assert index["scheduler"] == ["diffusers", "PNDMScheduler"]
    unet = json.loads((tiny_dir / "unet" / "config.json").read_text())
    assert unet["in_channels"] == 9 and unet["out_channels"] == 4 and unet["use_linear_projection"]
    sched = json.loads((tiny_dir / "scheduler" / "scheduler_config.json").read_text())
    assert sched["skip_prk_steps"] and sched["prediction_type"] == "epsilon"
    assert not (tiny_dir / "tokenizer" / "tokenizer.json").exists()  # vocab.json + merges.txt, as SD2
    size = sum(f.stat().st_size for f in tiny_dir.rglob("*") if f.is_file())
    assert size < 8 * 2**20


def test_tiny_tokenizer_makes_subwords(tiny_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_dir / "tokenizer", local_files_only=True)
    ids = tok(PROMPT).input_ids
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens[0] == "<|startoftext|>" and tokens[-1] == "<|endoftext|>"
    assert tok.unk_token_id not in ids[1:-1]
    assert "sand</w>" in tokens and "quality</w>" in tokens  # whole words from the corpus
    assert len(ids) < len(PROMPT) // 3
    # Unseen text falls back to byte symbols, never to the unknown token.
    assert tok.unk_token_id not in tok("zebra über 42").input_ids[1:-1]
    assert tok.model_max_length == 77


def test_tiny_build_is_deterministic(tiny_dir, tmp_path):
    tiny_inpaint.build(tmp_path, seed=0)
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", "tokenizer/merges.txt"):
        assert (tmp_path / name).read_bytes() == (tiny_dir / name).read_bytes(), name


# -- SD backend -----------------------------------------------------------------------------------


def test_sd_is_an_inpainter_using_sdpa(sd):
    assert isinstance(sd, Inpainter)
    processors = {**sd.pipe.unet.attn_processors, **sd.pipe.vae.attn_processors}
    assert processors and {type(p).__name__ for p in processors.values()} == {"AttnProcessor2_0"}


def test_sd_shapes_composite_and_change(sd):
    images, masks, prompts, negs, seeds = _jobs(4)
    outs = sd.inpaint(images, masks, prompts, negs, seeds)
    assert len(outs) == 4
    for im, m, out in zip(images, masks, outs):
        assert out.shape == im.shape and out.dtype == np.uint8
        inside = m > 0.5
        np.testing.assert_array_equal(out[~inside], im[~inside])
        assert np.abs(out[inside].astype(int) - im[inside].astype(int)).mean() > 10


def test_sd_deterministic_and_seeded(sd):
    images, masks, prompts, negs, seeds = _jobs(2)
    a = sd.inpaint(images, masks, prompts, negs, seeds)
    b = sd.inpaint(images, masks, prompts, negs, seeds)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = sd.inpaint(images, masks, prompts, negs, [s + 1 for s in seeds])
    assert not np.array_equal(a[0], c[0])


def test_sd_job_does_not_depend_on_batch_mates(sd, monkeypatch):
    images, masks, prompts, negs, seeds = _jobs(3)
    batch = sd.inpaint(images, masks, prompts, negs, seeds)
    alone = sd.inpaint(images[1:2], masks[1:2], prompts[1:2], negs[1:2], seeds[1:2])[0]
    assert np.abs(batch[1].astype(int) - alone.astype(int)).max() <= 2
    monkeypatch.setattr(sd, "max_batch", 1)  # three pipeline calls instead of one
    split = sd.inpaint(images, masks, prompts, negs, seeds)
    for x, y in zip(batch, split):
        assert np.abs(x.astype(int) - y.astype(int)).max() <= 2


def test_sd_encodes_masked_images_in_batches_with_each_jobs_own_noise(sd, monkeypatch):
    from int_engine.backends import inpaint_sd

    images, masks, prompts, negs, seeds = _jobs(4)
    passes = []
    encode = sd.pipe.vae.encode
    monkeypatch.setattr(sd.pipe.vae, "encode", lambda x, *a, **k: passes.append(len(x)) or encode(x, *a, **k))
    monkeypatch.setattr(inpaint_sd, "VAE_ENCODE_BATCH", 3)
    batched = sd.inpaint(images, masks, prompts, negs, seeds)
    assert passes == [3, 1]
    passes.clear()
    monkeypatch.setattr(inpaint_sd, "prepared_latents", lambda *args: {})  # diffusers' own: one image per pass
    diffusers_own = sd.inpaint(images, masks, prompts, negs, seeds)
    assert passes == [1, 1, 1, 1]
    for x, y in zip(batched, diffusers_own):
        assert np.abs(x.astype(int) - y.astype(int)).max() <= 2  # batched convs round differently


@pytest.mark.parametrize("scheduler", [None, "euler"])  # euler draws step noise from the generators too
def test_sd_prepared_latents_are_the_pipelines_own(tiny_dir, monkeypatch, scheduler):
    """``prepared_latents`` passed through ``latents=`` / ``masked_image_latents=`` gives the plain
    pipeline's output on the same inputs: the same masked image, scaling factor and draws from each
    job's generator in the pipeline's order (noise, then the latent sample, then the steps'). One
    image per VAE pass is bit for bit the pipeline's own; batched passes round differently only."""
    import torch

    from int_engine.backends import inpaint_sd

    sd = SDInpainter.load(tiny_dir, size=32, steps=2, guidance_scale=7.5, scheduler=scheduler)
    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.random((3, 3, 32, 32), dtype=np.float32))
    mask = torch.zeros(3, 1, 32, 32)
    mask[:, :, 8:20, 6:24] = 1.0
    mask[1, :, 0:4] = 0.7  # not binary: the mask processor binarises it

    def run(prepare: bool, seeds=(5, 6, 7)) -> np.ndarray:
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        prepared = inpaint_sd.prepared_latents(sd.pipe, image, mask, generators, 32) if prepare else {}
        return sd.pipe(
            prompt=[PROMPT] * 3,
            negative_prompt=[NEGATIVE] * 3,
            image=image,
            mask_image=mask,
            height=32,
            width=32,
            num_inference_steps=2,
            guidance_scale=7.5,
            generator=generators,
            output_type="np",
            **prepared,
        ).images

    with torch.inference_mode():
        plain = run(prepare=False)
        monkeypatch.setattr(inpaint_sd, "VAE_ENCODE_BATCH", 1)
        np.testing.assert_array_equal(run(prepare=True), plain)
        monkeypatch.setattr(inpaint_sd, "VAE_ENCODE_BATCH", 8)
        np.testing.assert_allclose(run(prepare=True), plain, atol=1e-4)
        assert np.abs(run(prepare=True, seeds=(5, 6, 8))[2] - plain[2]).max() > 1e-3  # the seeds matter


def test_sd_empty_mask_skips_the_model(sd, monkeypatch):
    images, masks, prompts, negs, seeds = _jobs(2)
    masks[0] = np.zeros_like(masks[0])
    calls = []
    real_run = sd._run

    def spy(imgs, *rest):
        calls.append(len(imgs))
        return real_run(imgs, *rest)

    monkeypatch.setattr(sd, "_run", spy)
    outs = sd.inpaint(images, masks, prompts, negs, seeds)
    np.testing.assert_array_equal(outs[0], images[0])
    assert calls == [1]  # only the job with a mask reached the pipeline
    calls.clear()
    outs = sd.inpaint(images[:1], masks[:1], prompts[:1], negs[:1], seeds[:1])
    np.testing.assert_array_equal(outs[0], images[0])
    assert calls == []


def test_sd_stretch_and_dilate(sd, monkeypatch):
    images, masks, prompts, negs, seeds = _jobs(2)
    monkeypatch.setattr(sd, "fit", "stretch")
    monkeypatch.setattr(sd, "dilate", 3)
    outs = sd.inpaint(images, masks, prompts, negs, seeds)
    for im, m, out in zip(images, masks, outs):
        assert out.shape == im.shape
        ys, xs = np.nonzero(m > 0.5)
        far = np.ones(m.shape, bool)
        far[max(ys.min() - 4, 0) : ys.max() + 5, max(xs.min() - 4, 0) : xs.max() + 5] = False
        np.testing.assert_array_equal(out[far], im[far])
        ring = np.zeros(m.shape, bool)  # the 2 pixels just above the mask are now filled too
        ring[ys.min() - 2 : ys.min(), xs.min() : xs.max() + 1] = True
        assert not np.array_equal(out[ring], im[ring])


def test_sd_rejects_mismatched_lists(sd):
    images, masks, prompts, negs, seeds = _jobs(2)
    with pytest.raises(ValueError):
        sd.inpaint(images, masks[:1], prompts, negs, seeds)
    with pytest.raises(ValueError):
        sd.inpaint(images, masks, prompts, negs, seeds[:1])


def test_sd_other_scheduler(tiny_dir):
    inp = SDInpainter.load(tiny_dir, size=32, steps=2, scheduler="ddim")
    assert type(inp.pipe.scheduler).__name__ == "DDIMScheduler"
    images, masks, prompts, negs, seeds = _jobs(1)
    out = inp.inpaint(images, masks, prompts, negs, seeds)[0]
    np.testing.assert_array_equal(out[masks[0] <= 0.5], images[0][masks[0] <= 0.5])


def test_sd_bad_options(tiny_dir):
    with pytest.raises(ConfigError, match="multiple of 2"):
        SDInpainter.load(tiny_dir, size=31)
    with pytest.raises(ConfigError, match="fit"):
        SDInpainter.load(tiny_dir, fit="crop")


@pytest.mark.skipif(importlib.util.find_spec("xformers") is not None, reason="xformers is installed")
def test_sd_xformers_absent_is_a_clear_error(tiny_dir):
    with pytest.raises(ConfigError, match="xformers"):
        SDInpainter.load(tiny_dir, size=32, enable_xformers=True)


def test_sd_missing_dir(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match="nope"):
        SDInpainter.load(missing)


def test_sd_dir_without_unet(tiny_dir, tmp_path):
    broken = tmp_path / "no_unet"
    shutil.copytree(tiny_dir, broken, ignore=shutil.ignore_patterns("unet"))
    with pytest.raises(ModelLoadError, match="unet/config.json") as err:
        SDInpainter.load(broken)
    assert str(broken) in str(err.value)


def test_sd_malformed_unet_config(tiny_dir, tmp_path):
    broken = tmp_path / "bad_unet"
    shutil.copytree(tiny_dir, broken)
    (broken / "unet" / "config.json").write_text("{ not json")
    with pytest.raises(ModelLoadError, match="cannot load") as err:
        SDInpainter.load(broken)
    assert str(broken) in str(err.value)


# -- Telea backend ---------------------------------------------------------------------------------


def test_telea_removes_a_dark_square():
    image = np.full((64, 64, 3), 180, np.uint8)
    image[28:36, 28:36] = 20
    mask = np.zeros((64, 64), np.float32)
    mask[27:37, 27:37] = 1.0
    telea = TeleaInpainter.load(radius=3)
    assert isinstance(telea, Inpainter)
    out = telea.inpaint([image], [mask], [PROMPT], [NEGATIVE], [0])[0]
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.abs(out[27:37, 27:37].astype(int) - 180).max() <= 5
    np.testing.assert_array_equal(out[mask <= 0.5], image[mask <= 0.5])


def test_telea_batch_ignores_prompts_and_seeds():
    images, masks, prompts, negs, seeds = _jobs(3)
    telea = TeleaInpainter.load()
    a = telea.inpaint(images, masks, prompts, negs, seeds)
    b = telea.inpaint(images[::-1], masks[::-1], ["x"] * 3, ["y"] * 3, [0, 1, 2])[::-1]
    for im, m, x, y in zip(images, masks, a, b):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x[m <= 0.5], im[m <= 0.5])
    empty = telea.inpaint(images[:1], [np.zeros_like(masks[0])], prompts[:1], negs[:1], seeds[:1])[0]
    np.testing.assert_array_equal(empty, images[0])


def test_telea_rejects_path_and_mismatched_lists():
    with pytest.raises(ConfigError):
        TeleaInpainter.load("/some/weights")
    images, masks, prompts, negs, seeds = _jobs(2)
    with pytest.raises(ValueError):
        TeleaInpainter.load().inpaint(images, masks, prompts[:1], negs, seeds)


def test_sd_memory_bounds_by_device_and_vae_slicing_changes_nothing(sd, monkeypatch):
    from int_engine.backends.inpaint_sd import CUDA_MAX_BATCH, memory_bounds

    assert memory_bounds("cuda:0", None, None) == (CUDA_MAX_BATCH, True)
    assert memory_bounds("cpu", None, None) == (0, False)
    assert memory_bounds("cuda", 2, False) == (2, False)  # what the user set wins
    assert sd.max_batch == 0 and not sd.pipe.vae.use_slicing  # this CPU backend: one batch
    images, masks, prompts, negs, seeds = _jobs(3)
    whole = sd.inpaint(images, masks, prompts, negs, seeds)
    decoded = []
    decode = sd.pipe.vae.decoder.forward
    monkeypatch.setattr(sd.pipe.vae.decoder, "forward", lambda z, *a, **k: decoded.append(len(z)) or decode(z, *a, **k))
    monkeypatch.setattr(sd.pipe.vae, "use_slicing", True)
    sliced = sd.inpaint(images, masks, prompts, negs, seeds)
    assert decoded == [1, 1, 1]  # one image per VAE decoder pass
    for x, y in zip(whole, sliced):
        assert np.abs(x.astype(int) - y.astype(int)).max() <= 2
