"""Devices without a GPU: the dtype "auto" resolves by each role's device, timers synchronise every
CUDA device the roles use, and a float32 VLM whose weights cannot fit its GPU is refused before
loading. CUDA is only ever named or monkeypatched here; nothing is allocated on it."""

from __future__ import annotations

import contextlib
import json
import shutil
import struct
from types import SimpleNamespace

import pytest
import torch

from int_engine import pipeline, trace
from int_engine.backends.llava_common import check_weights_fit, checkpoint_parameters
from int_engine.backends.vlm_hf import HFLlavaVLM
from int_engine.backends.vlm_vllm import VLLMLlavaVLM
from int_engine.config import ROLES, EngineConfig, apply_overrides
from int_engine.errors import ModelLoadError

GB = 10**9

# ---- dtype "auto" ---------------------------------------------------------------------------------


def dtypes(*overrides: str) -> dict[str, str]:
    models = apply_overrides(EngineConfig(), list(overrides)).models
    return {role: models.dtype_of(role) for role in ROLES}


def test_auto_is_float16_on_cuda_and_float32_on_cpu():
    assert EngineConfig().models.dtype == "auto"
    assert dtypes() == dict.fromkeys(ROLES, "float32")  # the default device is the CPU
    assert dtypes("models.device=cuda") == dict.fromkeys(ROLES, "float16")
    assert dtypes("models.device=cuda:1") == dict.fromkeys(ROLES, "float16")
    # per role, by the role's own device
    mixed = dtypes("models.vlm.device=cuda:0")
    assert mixed["vlm"] == "float16" and all(mixed[r] == "float32" for r in ROLES if r != "vlm")
    assert dtypes("models.device=cuda", "models.detector.device=cpu")["detector"] == "float32"


def test_an_explicit_dtype_wins_over_auto():
    assert dtypes("models.device=cuda", "models.dtype=float32") == dict.fromkeys(ROLES, "float32")
    assert dtypes("models.device=cpu", "models.dtype=bfloat16") == dict.fromkeys(ROLES, "bfloat16")
    got = dtypes("models.device=cuda", "models.vlm.dtype=float32", "models.segmenter.dtype=bfloat16")
    assert (got["vlm"], got["segmenter"], got["clip"]) == ("float32", "bfloat16", "float16")
    # a role may ask for "auto" under an explicit models.dtype
    assert dtypes("models.device=cuda", "models.dtype=float32", "models.clip.dtype=auto")["clip"] == "float16"


def test_the_detector_in_float16_keeps_float32_weights(tiny_zoo):
    """What "auto" gives GroundingDINO on CUDA: float32 weights, float16 only under autocast
    (detect_gdino.py); loaded here on the CPU with the dtype float16 asks for."""
    from int_engine.models.load import load_role

    cfg = apply_overrides(EngineConfig(), ["models.detector.dtype=float16"])
    detector = load_role(cfg.models, "detector", tiny_zoo)
    assert detector.dtype == torch.float16 and {p.dtype for p in detector.model.parameters()} == {torch.float32}


# ---- synchronising every CUDA device --------------------------------------------------------------


@pytest.fixture
def synced(monkeypatch) -> list[str]:
    """A CUDA that only records what is synchronised."""
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(str(device)))
    return calls


def test_every_cuda_device_of_the_roles_is_synchronised(synced):
    models = apply_overrides(EngineConfig(), ["models.device=cuda:0", "models.vlm.device=cuda:1"]).models
    assert models.cuda_devices == ("cuda:1", "cuda:0") and models.sync_device == "cuda"
    trace.cuda_sync(models.cuda_devices)
    assert sorted(synced) == ["cuda:0", "cuda:1"]


def test_nothing_is_synchronised_on_cpu(synced):
    models = EngineConfig().models
    assert models.cuda_devices == () and models.sync_device == "cpu"
    trace.cuda_sync(models.cuda_devices)
    trace.cuda_sync("cpu")
    assert synced == []


def test_drive_synchronises_each_device_around_each_call(synced, monkeypatch):
    models = apply_overrides(EngineConfig(), ["models.device=cuda:0", "models.vlm.device=cuda:1"]).models
    monkeypatch.setattr(pipeline, "call_range", lambda call: contextlib.nullcontext())  # no NVTX without a GPU

    def steps():
        first = yield "call 1"
        second = yield "call 2"
        return first.result + second.result

    assert pipeline.drive(steps(), None, lambda m, call: call[-1], device=models.cuda_devices) == "12"
    assert sorted(synced) == ["cuda:0"] * 4 + ["cuda:1"] * 4  # before and after each of two calls


# ---- a float32 VLM that cannot fit ----------------------------------------------------------------


def test_float32_13b_llava_is_refused_at_vllms_share_of_an_80_gb_gpu():
    params = 13_351_494_656  # LLaVA-1.5-13B (see test_the_checks_count_the_13b_checkpoint)
    with pytest.raises(ModelLoadError) as info:
        check_weights_fit(params, "float32", 80 * GB, share=0.5)
    assert "13.35e9 parameters x 4 bytes = 53.4 GB > 0.5 x 80.0 GB" in str(info.value)
    check_weights_fit(params, "float16", 80 * GB, share=0.5)  # 26.7 GB <= 40 GB
    check_weights_fit(params, "bfloat16", 80 * GB, share=0.5)
    check_weights_fit(params, "float32", 80 * GB, share=1.0)  # the whole GPU: 53.4 GB <= 80 GB
    check_weights_fit(params, "float32", 80 * GB, share=0.5, gpus=2)  # 26.7 GB a GPU
    with pytest.raises(ModelLoadError, match=r"53.4 GB / 2 GPUs = 26.7 GB > 0.3 x 80.0 GB"):
        check_weights_fit(params, "float32", 80 * GB, share=0.3, gpus=2)


def test_parameters_are_read_off_the_safetensors_headers(tiny_zoo):
    model = HFLlavaVLM.load(tiny_zoo / "vlm").model
    assert checkpoint_parameters(tiny_zoo / "vlm") == sum(p.numel() for p in model.parameters())


def header_only_13b(tiny_zoo, tmp_path):
    """The tiny zoo's LLaVA directory with LLaVA-1.5-13B's weight shapes in a safetensors header and
    no weights: enough for the check, which reads headers only, and for nothing else."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    text = LlamaConfig(vocab_size=32064, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40)
    vision = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14
    )
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(LlavaConfig(text_config=text, vision_config=vision, vision_feature_layer=-2))
    header, offset = {}, 0
    for name, tensor in model.state_dict().items():
        size = tensor.numel() * 2
        header[name] = {"dtype": "F16", "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    out = tmp_path / "llava-13b"
    shutil.copytree(tiny_zoo / "vlm", out)
    raw = json.dumps(header).encode()
    (out / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    return out


def test_the_checks_count_the_13b_checkpoint(tiny_zoo, tmp_path):
    assert checkpoint_parameters(header_only_13b(tiny_zoo, tmp_path)) == 13_351_494_656


def fake_gpu(monkeypatch, total_gb: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=total_gb * GB))


def test_the_transformers_backend_refuses_what_its_gpu_cannot_hold(tiny_zoo, tmp_path, monkeypatch):
    """float32 13B on an (imagined) 50 GB GPU, all of which this backend may use: refused with the
    arithmetic before any weight is read (the file has none). On 80 GB, or in float16, the check
    passes and what stops the load is the absent weights."""
    path = header_only_13b(tiny_zoo, tmp_path)
    fake_gpu(monkeypatch, 50)
    with pytest.raises(ModelLoadError, match=r"13.35e9 parameters x 4 bytes = 53.4 GB > 1 x 50.0 GB"):
        HFLlavaVLM.load(path, device="cuda", dtype="float32")
    for total, dtype in ((80, "float32"), (50, "float16")):
        fake_gpu(monkeypatch, total)
        with pytest.raises(ModelLoadError) as info:
            HFLlavaVLM.load(path, device="cuda:0", dtype=dtype)
        assert "cannot load" in str(info.value) and "parameters x" not in str(info.value)


def test_the_vllm_backend_refuses_what_its_share_cannot_hold(tiny_zoo, tmp_path, monkeypatch):
    """vLLM takes its ``gpu_memory_utilization`` share, 0.5 by default on CUDA: before vLLM is
    imported or started."""
    path = header_only_13b(tiny_zoo, tmp_path)
    fake_gpu(monkeypatch, 80)
    with pytest.raises(ModelLoadError, match=r"13.35e9 parameters x 4 bytes = 53.4 GB > 0.5 x 80.0 GB"):
        VLLMLlavaVLM.load(path, device="cuda:0", dtype="float32")
    with pytest.raises(ModelLoadError, match=r"53.4 GB / 2 GPUs = 26.7 GB > 0.3 x 80.0 GB"):
        VLLMLlavaVLM.load(path, device="cuda", dtype="float32", gpu_memory_utilization=0.3, tensor_parallel_size=2)
