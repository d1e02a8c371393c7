"""The paper's five models at their real sizes, without weights: every call the engine makes runs at
the engine's real shapes (a shape or dtype error fails here, not on the first GPU), and the cost
model's figures agree with independent counts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from int_engine.bench import cost
from int_engine.bench import realsize as rs
from int_engine.models import real

ROOT = Path(__file__).resolve().parents[2]


def test_live_bytes_counts_new_storages_until_freed_not_views():
    tracker = rs.LiveBytes()
    with tracker:
        a = torch.zeros(1000, device="meta")  # 4000 bytes
        b = a + 1  # 4000 more
        v = b.view(10, 100)  # a view: nothing new
        b.add_(1)  # in place: nothing new
        del a
        c = torch.zeros(500, device="meta")  # 2000: live 6000, peak 8000
    assert tracker.peak == 8000 and tracker.live == 6000 and v.shape == (10, 100) and c.numel() == 500


def test_the_alias_shim_reads_torchs_op_schemas():
    """``realsize.returns_alias`` is the one use of torch's private ``OpOverload._schema``: this fails
    loudly when the pinned torch changes it."""
    assert torch.__version__.startswith("2.14")  # constraints.txt's pin; check the shim on any other
    assert rs.returns_alias(torch.ops.aten.add.Tensor) == [False]
    assert rs.returns_alias(torch.ops.aten.add_.Tensor) == [True]
    assert rs.returns_alias(torch.ops.aten.view.default) == [True]
    assert rs.returns_alias(torch.ops.aten.split.Tensor) == [True]


def test_vlm_at_real_size():
    model = real.build_vlm()
    assert real.parameter_count(model) == pytest.approx(13.35e9, rel=1e-3)
    assert next(model.parameters()).dtype == torch.float16
    calls = rs.vlm_calls(model, images=2, rows=2, tokens=rs.IMAGE_TOKENS + 51)
    lm_params = real.parameter_count(model.model.language_model)
    # a prefill token costs two FLOPs per weight of the language model, plus attention's share
    assert calls["prefill"].flops / (2 * (rs.IMAGE_TOKENS + 51)) == pytest.approx(2 * lm_params, rel=0.05)
    vision = real.parameter_count(model.model.vision_tower) + real.parameter_count(model.model.multi_modal_projector)
    assert calls["vision"].flops / 2 == pytest.approx(2 * vision * 577, rel=0.1)  # 577 tokens through ViT-L/14-336
    assert calls["prefill"].activation_bytes > 0


def test_inpaint_at_real_size():
    parts = real.build_inpaint()
    counts = {k: real.parameter_count(m) for k, m in parts.items()}
    assert counts["unet"] == pytest.approx(865.9e6, rel=1e-3) and counts["vae"] == pytest.approx(83.65e6, rel=1e-3)
    assert counts["text_encoder"] == pytest.approx(340.4e6, rel=1e-3)
    calls = rs.inpaint_calls(parts, steps=20)
    assert calls["unet"].flops / 20 / 2 == pytest.approx(0.80e12, rel=0.05)  # one UNet evaluation of a 64 x 64 latent


def test_segmenter_at_real_size():
    sam = real.build_segmenter()
    assert real.parameter_count(sam) == pytest.approx(641.1e6, rel=1e-3)
    assert sam.image_encoder.patch_embed.proj.weight.dtype == torch.float16
    assert sam.mask_decoder.iou_token.weight.dtype == torch.float32
    calls = rs.segmenter_calls(sam, images=2, prompts=8, points=16)
    per_image = calls["encoder"].flops / 2
    encoder = real.parameter_count(sam.image_encoder)
    assert per_image > 2 * encoder * 4096  # every weight on each of the 64 x 64 tokens, plus attention
    assert per_image == pytest.approx(5.96e12, rel=0.02)


def test_detector_at_real_size():
    with torch.device("meta"):
        assert real.parameter_count(real.build_detector()) == pytest.approx(232.3e6, rel=1e-3)
    calls = rs.detector_calls(images=2, text_tokens=4)
    assert calls["forward"].flops / 2 > 1e12 and calls["forward"].activation_bytes > 2e9


def test_clip_at_real_size():
    model = real.build_clip()
    assert real.parameter_count(model) == pytest.approx(149.6e6, rel=2e-3)
    assert any(type(m).__name__ == "QuickGELU" for m in model.modules())
    calls = rs.clip_calls(model, images=3, texts=2)
    visual = real.parameter_count(model.visual)
    assert calls["image"].flops / 3 == pytest.approx(2 * visual * 197, rel=0.1)


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    out = tmp_path_factory.mktemp("cost") / "cost.json"
    assert cost.main(["--json", str(out)]) == 0
    return json.loads(out.read_text()), cost.cost_model(cost.Settings())


def test_cost_model_json_has_each_roles_flops_per_item_and_a_lower_bound(plan):
    data, _ = plan
    assert set(data["flops_per_item"]) == set(real.ROLES)
    assert data["flops_per_item"]["segmenter"] == pytest.approx(5.96e12, rel=0.02)  # one image through SAM's encoder
    assert data["flops_per_item"]["inpaint"] == pytest.approx(0.80e12, rel=0.05)  # one UNet evaluation
    assert data["flops_per_item"]["vlm"] == pytest.approx(2 * 13.0e9, rel=0.05)  # one prefill token
    stages = {s["name"]: s for s in data["stages"]}
    assert stages["detect"]["items"] == 9 and stages["segment (SAM)"]["items"] == 9
    assert data["flops_per_image_iteration"] == pytest.approx(sum(s["flops"] for s in data["stages"]))
    h100, a100 = data["lower_bound_seconds_per_image"]["H100"], data["lower_bound_seconds_per_image"]["A100"]
    assert 0 < h100["total"] < a100["total"]


def test_readme_memory_table_is_the_cost_models(plan):
    _, model = plan
    text = (ROOT / "README.md").read_text()
    table = re.search(r"<!-- cost-model:memory -->\n(.*?)<!-- /cost-model:memory -->", text, re.S).group(1)
    assert table == cost.markdown(cost.MEMORY_HEADER, cost.memory_rows(model))
