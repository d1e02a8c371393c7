"""Work counters (``int_engine.work``): each backend counts the work it did, where it did it."""

from types import SimpleNamespace

import numpy as np
import pytest

from int_engine.backends.inpaint_sd import SDInpainter
from int_engine.backends.inpaint_telea import TeleaInpainter
from int_engine.backends.vlm_vllm import VLLMLlavaVLM
from int_engine.config import EngineConfig, apply_overrides
from int_engine.models.load import load_models
from int_engine.protocols import SegmentRequest
from int_engine.work import per_unit, work_delta, work_of


def _image(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def models(tiny_zoo):
    cfg = apply_overrides(EngineConfig(iterations=2, max_new_tokens=8), ["models.inpaint.options.steps=2"])
    return cfg, load_models(cfg.models, tiny_zoo)


def test_work_of_sums_roles_and_a_role_without_counters_counts_nothing():
    models = SimpleNamespace(
        vlm=SimpleNamespace(work={"prefill_tokens": 5}),
        inpainter=SimpleNamespace(),
        detector=SimpleNamespace(work={"images": 2}),
        segmenter=object(),
        clip=None,
    )
    before = work_of(models)
    assert before == {"vlm.prefill_tokens": 5.0, "detector.images": 2.0}
    models.vlm.work["prefill_tokens"] += 7
    models.inpainter.work = {"unet_latent_pixels": 100}  # appears: missing before counts 0
    assert work_delta(before, work_of(models)) == {
        "detector.images": 0.0,
        "inpaint.unet_latent_pixels": 100.0,
        "vlm.prefill_tokens": 7.0,
    }
    assert per_unit({"a": 6.0}, 3) == {"a": 2.0} and per_unit({"a": 6.0}, 0) == {"a": 0.0}


@pytest.mark.parametrize("scheduler, evaluations", [("ddim", 2), (None, 3)])  # PNDM (the checkpoint's) runs steps + 1
def test_sd_counts_unet_evaluations_x_rows_x_latent_pixels(tiny_zoo, scheduler, evaluations):
    sd = SDInpainter.load(tiny_zoo / "inpaint", steps=2, scheduler=scheduler)
    latent = (sd.size // sd.pipe.vae_scale_factor) ** 2
    full, empty = np.zeros((48, 64), np.float32), np.zeros((48, 64), np.float32)
    full[10:30, 20:40] = 1.0
    sd.inpaint([_image(0), _image(1), _image(2)], [full, empty, full], ["a"] * 3, ["b"] * 3, [0, 1, 2])
    # 2 jobs with a mask (the empty one costs nothing) x 2 rows each (classifier-free guidance)
    assert sd.work == {"unet_latent_pixels": evaluations * 2 * 2 * latent, "inpaint_jobs": 2}
    sd.guidance_scale = 1.0  # no guidance: one row per job
    sd.inpaint([_image(0)], [full], ["a"], ["b"], [0])
    assert sd.work == {"unet_latent_pixels": evaluations * 5 * latent, "inpaint_jobs": 3}


def test_telea_counts_jobs_and_no_unet_work():
    telea = TeleaInpainter.load()
    full = np.zeros((48, 64), np.float32)
    full[5:9, 5:9] = 1.0
    telea.inpaint([_image(0), _image(1)], [full, np.zeros_like(full)], ["a"] * 2, ["b"] * 2, [0, 1])
    assert telea.work == {"unet_latent_pixels": 0, "inpaint_jobs": 1}


def test_sam_clip_detector_and_vlm_count_their_inputs(models):
    _, m = models
    a, b, c = _image(0), _image(1), _image(2)
    box = np.array([[4, 4, 30, 30], [10, 10, 40, 40]], np.float32)
    before = work_of(m)
    # each request's image is encoded once, however many prompts it has; none without prompts
    m.segmenter.segment(
        [
            SegmentRequest(a, boxes=box),
            SegmentRequest(b, points=np.array([[5, 5]], np.float32), labels=np.array([1])),
            SegmentRequest(c),
        ]
    )
    m.clip.image_text_similarity([a, b, c], ["x", "y", "z"])
    m.clip.similarity_maps([a, b], ["x", "y"])
    m.detector.detect([a, b, c], ["x"] * 3, 0.35, 0.25)
    texts = [m.vlm.chat_text("What is this?"), m.vlm.chat_text("Name it.")]
    m.vlm.generate([a, b], ["What is this?", "Name it."], 2)
    # the prompt tokens computed, image tokens included, padding not: the processor's own count
    expected = int(m.vlm._inputs([a, b], texts, padding_side="left")["attention_mask"].sum())
    d = work_delta(before, work_of(m))
    assert d["segmenter.encoder_images"] == 2 and d["clip.images"] == 5 and d["detector.images"] == 3
    assert d["vlm.prefill_tokens"] == expected
    before = work_of(m)
    m.vlm.score([a, a], ["What is this?"] * 2, ["frog", "a snake"])
    # scoring: the language-model tokens it ran (a prefix shared by rows runs once), at most every row in full
    full = sum(m.vlm._row_lengths([m.vlm.chat_text("What is this?") + " frog", m.vlm.chat_text("What is this?") + " a snake"]))
    scored = work_delta(before, work_of(m))["vlm.prefill_tokens"]
    assert scored == m.vlm.last_stats["prefix_tokens"] + m.vlm.last_stats["answer_tokens"] and 0 < scored <= full


def test_vllm_counts_prompt_tokens_computed_and_cached():
    outputs = [
        SimpleNamespace(prompt_token_ids=list(range(10)), num_cached_tokens=4),
        SimpleNamespace(prompt_token_ids=list(range(7)), num_cached_tokens=None),
    ]
    vlm = VLLMLlavaVLM(
        SimpleNamespace(generate=lambda requests, params, use_tqdm: outputs), SimpleNamespace(tokenizer=None), prefix_caching=True
    )
    assert vlm._run([{}, {}], None) is outputs
    assert vlm.work == {"prefill_tokens": 13, "prefill_cached_tokens": 4} and vlm.calls == 1


@pytest.mark.parametrize("scope", ["view", "image"])
def test_engine_unet_work_is_its_inpainting_jobs_x_steps_x_rows_x_latent(models, scope):
    import dataclasses

    from int_engine.bench.throughput import run_engine

    cfg, m = models
    cfg = dataclasses.replace(cfg, inpaint_scope=scope)
    images = [_image(7, 72, 96)]
    results, _, _, work = run_engine(m, cfg, images)
    jobs = sum(it.inpaint_jobs for r in results for it in r.trace.iterations)
    latent = (m.inpainter.size // m.inpainter.pipe.vae_scale_factor) ** 2
    evaluations = m.inpainter.pipe.num_timesteps  # 3: PNDM with steps=2
    iterations = len(results[0].trace.iterations)  # image scope: at most one whole-image job per iteration
    assert jobs > 0 and (jobs <= iterations if scope == "image" else jobs <= 9 * iterations)
    assert work["inpaint.inpaint_jobs"] == jobs
    assert work["inpaint.unet_latent_pixels"] == jobs * evaluations * 2 * latent
    assert work["segmenter.encoder_images"] <= 9 * 2 and work["detector.images"] == 9 * 2
