"""The ``modern`` lineup at real size, without weights: every role builds on meta with the published
parameter counts, its calls run at the engine's shapes, and ``--lineup modern`` writes every role."""

from __future__ import annotations

import json

import pytest
import torch

from int_engine.bench import cost_modern
from int_engine.bench import realsize_modern as rsm
from int_engine.models import real_modern as rm


def test_every_config_names_its_source():
    for role in rm.OWN:
        assert rm.modern_config(role)["source"]
    with pytest.raises(ValueError):
        rm.modern_config("detector")


def test_vlm_qwen3_vl_8b():
    model = rm.build_vlm(torch.bfloat16)
    assert rm.parameter_count(model) == pytest.approx(8.767e9, rel=1e-3)  # the model card's 8.8B (8,767,123,696)
    assert rm.parameter_count(model.model.visual) == pytest.approx(576.4e6, rel=1e-3)
    calls = rsm.vlm_calls(model, images=1, side=768, rows=2, tokens=627)
    lm = rm.parameter_count(model.model.language_model) - model.model.language_model.embed_tokens.weight.numel()
    assert calls["prefill"].flops / (2 * 627) == pytest.approx(2 * lm, rel=0.1)
    assert calls["prefill"].activation_bytes > rsm.kv_cache_bytes(model, 2 * 627)  # the cache is held
    assert calls["vision"].flops == pytest.approx(2 * rm.parameter_count(model.model.visual) * 2304, rel=0.1)


def test_inpaint_sdxl():
    parts = rm.build_inpaint()
    counts = {k: rm.parameter_count(m) for k, m in parts.items()}
    assert counts["unet"] == pytest.approx(2.567e9, rel=1e-3)  # SDXL's 2.6B UNet, 9 input channels
    assert counts["vae"] == pytest.approx(83.65e6, rel=1e-3)
    assert counts["text_encoder"] == pytest.approx(123.1e6, rel=1e-3) and counts["text_encoder_2"] == pytest.approx(
        694.7e6, rel=1e-3
    )
    calls = rsm.inpaint_calls(parts, steps=1, jobs=1)
    assert calls["unet"].activation_bytes > 0 and calls["vae_decode"].activation_bytes > calls["unet"].activation_bytes


def test_segmenter_sam21_large():
    sam = rm.build_segmenter()
    # Sam2Model is the image predictor: facebook/sam2.1-hiera-large's 224.4M less the video memory modules
    assert rm.parameter_count(sam) == pytest.approx(216.9e6, rel=1e-3)
    assert sam.vision_encoder.backbone.patch_embed.projection.weight.dtype == torch.float16
    assert sam.prompt_encoder.point_embed.weight.dtype == torch.float32
    calls = rsm.segmenter_calls(sam, images=1, prompts=2, points=4)
    assert calls["encoder"].flops > 2 * rm.parameter_count(sam.vision_encoder) * 256 * 256 / 16


def test_concept_sam3():
    sam3 = rm.build_concept()
    assert rm.parameter_count(sam3) == pytest.approx(840.4e6, rel=1e-3)  # the published ~0.85B (848M with its tracker)
    assert next(sam3.parameters()).dtype == torch.float32
    assert rsm.concept_calls(sam3, images=1)["vision"].activation_bytes > 0


def test_the_modern_cost_json_has_every_role(tmp_path, capsys):
    out = tmp_path / "modern.json"
    assert cost_modern.main(["--json", str(out)]) == 0
    data = json.loads(out.read_text())
    for key in ("parameters", "weights_bytes", "activations"):
        assert set(data[key]) == set(rm.ROLES)
    assert data["activations"]["concept"]["parts"]["heads"] == cost_modern.NOT_MEASURED
    printed = capsys.readouterr().out
    assert "| all five |" in printed and all(f"| {role} |" in printed for role in rm.ROLES)
