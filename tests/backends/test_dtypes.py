"""Per-role dtype and device: a role's precision is set alone, and bfloat16 stays within stated
tolerances of float32 for every role (tiny zoo, CPU). The tolerances are a few times what was
measured here. The tiny models' activations are too small for the float32 islands to change their
outputs measurably (SAM with and without them: both 2e-4), so the islands are checked by
structure (their parameters stay float32), not by accuracy."""

import numpy as np
import pytest
import torch

from int_engine.bench.synthetic import make_scene
from int_engine.config import EngineConfig, apply_overrides
from int_engine.models.load import load_role
from int_engine.protocols import SegmentRequest


@pytest.fixture(scope="module")
def scene():
    return make_scene(1, 96, 128)[0]


def both(zoo, role, **options):
    """The role loaded in float32 and in bfloat16, every other setting equal."""
    out = []
    for dtype in ("float32", "bfloat16"):
        cfg = apply_overrides(
            EngineConfig(), [f"models.{role}.dtype={dtype}"] + [f"models.{role}.options.{k}={v}" for k, v in options.items()]
        )
        out.append(load_role(cfg.models, role, zoo))
    return out


def test_a_role_dtype_and_device_are_set_alone():
    cfg = apply_overrides(EngineConfig(), ["models.dtype=float16", "models.segmenter.dtype=bfloat16", "models.vlm.device=cuda:1"])
    m = cfg.models
    assert m.dtype_of("segmenter") == "bfloat16" and m.dtype_of("clip") == "float16"
    assert m.device_of("vlm") == "cuda:1" and m.device_of("detector") == "cpu"
    assert m.sync_device == "cuda" and EngineConfig().models.sync_device == "cpu"


def test_vlm_bfloat16_scores(tiny_zoo, scene):
    a, b = both(tiny_zoo, "vlm")
    assert next(b.model.parameters()).dtype == torch.bfloat16 and next(a.model.parameters()).dtype == torch.float32
    images, prompts = [scene, scene[:48]], ["Output the name of the camouflaged animal and its environment in one word."] * 2
    sa, sb = a.score(images, prompts, ["frog", "bark"]), b.score(images, prompts, ["frog", "bark"])
    assert np.abs(sa - sb).max() < 0.2  # measured 0.043 (log-probs of ~-9)


def test_segmenter_bfloat16_keeps_float32_layernorms(tiny_zoo, scene):
    a, b = both(tiny_zoo, "segmenter")
    encoder = b.sam.image_encoder
    assert encoder.patch_embed.proj.weight.dtype == torch.bfloat16
    norms = [m for m in encoder.modules() if type(m).__name__ in ("LayerNorm", "LayerNorm2d")]
    assert norms and all(p.dtype == torch.float32 for m in norms for p in m.parameters())
    requests = [SegmentRequest(scene, boxes=np.array([[20, 20, 90, 70]], np.float32))]
    pa, pb = a.segment(requests)[0], b.segment(requests)[0]
    assert pb.dtype == np.float32
    assert np.abs(pa - pb).max() < 0.01 and np.mean((pa > 0.5) != (pb > 0.5)) < 0.01  # measured 2e-4, 0.19%


def test_clip_bfloat16(tiny_zoo, scene):
    a, b = both(tiny_zoo, "clip")
    sa, sb = a.image_text_similarity([scene], ["frog"]), b.image_text_similarity([scene], ["frog"])
    assert abs(float(sa[0] - sb[0])) < 0.01  # measured 0.001
    ma, mb = a.similarity_maps([scene], ["frog"])[0], b.similarity_maps([scene], ["frog"])[0]
    assert np.corrcoef(ma.ravel(), mb.ravel())[0, 1] > 0.99  # measured 0.9999


def test_inpaint_bfloat16(tiny_zoo, scene):
    a, b = both(tiny_zoo, "inpaint", steps=2)
    mask = np.zeros(scene.shape[:2], np.float32)
    mask[20:60, 30:80] = 1
    oa = a.inpaint([scene], [mask], ["bark"], ["frog"], [0])[0].astype(int)
    ob = b.inpaint([scene], [mask], ["bark"], ["frog"], [0])[0].astype(int)
    assert np.abs(oa - ob).mean() < 2.0  # 8-bit levels


def test_detector_bfloat16_runs_under_autocast_with_float32_weights(tiny_zoo, scene):
    """What the backend promises in bfloat16: float32 weights, the forward under autocast (its matmuls
    in bfloat16), float32 outputs of the same shape as float32's. The outputs themselves are not
    compared: the tiny random GroundingDINO is chaotic, and how far its bfloat16 boxes land from the
    float32 ones depends on the CPU's bfloat16 path (measured 7.6 px at the median on one machine,
    16.8 px on one with native avx512_bf16). Instead the first layer the input meets, whose output
    does not go through that chaos, is compared."""
    a, b = both(tiny_zoo, "detector")
    assert next(b.model.parameters()).dtype == torch.float32 and b.dtype == torch.bfloat16
    seen: dict[str, list] = {"float32": [], "bfloat16": []}
    first = next(m for m in b.model.modules() if isinstance(m, torch.nn.Conv2d))
    first_a = next(m for m in a.model.modules() if isinstance(m, torch.nn.Conv2d))
    linears_b = [m for m in b.model.modules() if isinstance(m, torch.nn.Linear)]
    hooks = [m.register_forward_hook(lambda m, i, o: seen["bfloat16"].append(o.dtype)) for m in linears_b]
    outs = {}
    hooks.append(first.register_forward_hook(lambda m, i, o: outs.setdefault("b", o.detach().float())))
    hooks.append(first_a.register_forward_hook(lambda m, i, o: outs.setdefault("a", o.detach().float())))
    try:
        da, db = a.detect([scene], ["animal"], 0.0, 0.0)[0], b.detect([scene], ["animal"], 0.0, 0.0)[0]
    finally:
        for h in hooks:
            h.remove()
    assert seen["bfloat16"] and set(seen["bfloat16"]) == {torch.bfloat16}  # autocast ran every linear layer in bf16
    assert len(da.scores) == len(db.scores)  # threshold 0: every query, in query order
    assert db.boxes.dtype == np.float32 and db.scores.dtype == np.float32
    assert np.isfinite(db.boxes).all() and ((db.scores >= 0) & (db.scores <= 1)).all()
    h, w = scene.shape[:2]
    assert (db.boxes[:, [0, 2]] >= -1e-3).all() and (db.boxes[:, [0, 2]] <= w + 1e-3).all()
    assert (db.boxes[:, [1, 3]] >= -1e-3).all() and (db.boxes[:, [1, 3]] <= h + 1e-3).all()
    # the first convolution sees the same pixels in both: bfloat16 rounding only (measured 0.0033
    # relative on a CPU with native avx512_bf16)
    rel = (outs["a"] - outs["b"]).norm() / outs["a"].norm()
    assert float(rel) < 0.02
