"""Exported graphs (int_engine.export) against the eager models of the tiny zoo.

Tolerances. The ONNX graphs are float32 like the eager modules; onnxruntime's kernels sum
in another order (blocked MatMul/Conv, fused LayerNorm/GELU/attention), which moves
float32 results by ~1e-6 relative (measured: SAM encoder 3e-6, decoder 1e-7, UNet 2e-6, VAE
2e-6 absolute on outputs of size ~1). The per-graph checks use atol=rtol=1e-4: 30x that
noise, far below the O(1) error of any wrong or missing op. The whole backends are compared
on their real outputs: SAM masks must be identical (a logit within 1e-6 of SAM's 0 threshold
is needed to flip a pixel; none does here) and SD images may differ by one uint8 level
(float noise through the denoising loop may flip a rounding), never outside the mask.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="ONNX export needs the 'onnx' package (the TorchScript exporter writes through it)")
ort = pytest.importorskip("onnxruntime", reason="running ONNX graphs needs onnxruntime")

from int_engine.backends.inpaint_sd import SDInpainter  # noqa: E402
from int_engine.backends.segment_sam import SamSegmenter  # noqa: E402
from int_engine.errors import ConfigError, ModelLoadError  # noqa: E402
from int_engine.export import (  # noqa: E402
    MODULES,
    export_models,
    read_manifest,
    trt_engine,  # noqa: E402
)
from int_engine.export.onnx_io import export_onnx  # noqa: E402
from int_engine.export.onnx_sam import decoder_example, encoder_example, export_sam  # noqa: E402
from int_engine.export.onnx_sd import export_sd, sd_examples  # noqa: E402
from int_engine.export.runtime import providers_for  # noqa: E402
from int_engine.export.sam_runtime import GraphDecoder  # noqa: E402
from int_engine.export.sd_runtime import GraphUNet, GraphVae  # noqa: E402
from int_engine.models.zoo import checksum  # noqa: E402
from int_engine.protocols import SegmentRequest  # noqa: E402

TOL = dict(atol=1e-4, rtol=1e-4)
SD_OPTS = dict(size=32, steps=2, guidance_scale=7.5)


@pytest.fixture(scope="module")
def exported(tiny_zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported")
    return out, export_models(tiny_zoo, "onnx", out)


@pytest.fixture(scope="module")
def sams(tiny_zoo, exported):
    eager = SamSegmenter.load(Path(tiny_zoo) / "segmenter")
    onnx = SamSegmenter.load(Path(tiny_zoo) / "segmenter", runtime="onnx", artifacts=exported[0])
    return eager, onnx


@pytest.fixture(scope="module")
def sds(tiny_zoo, exported):
    eager = SDInpainter.load(Path(tiny_zoo) / "inpaint", **SD_OPTS)
    onnx = SDInpainter.load(Path(tiny_zoo) / "inpaint", runtime="onnx", artifacts=exported[0], **SD_OPTS)
    return eager, onnx


@pytest.fixture(scope="module")
def sessions(sams, sds):
    """The onnxruntime sessions the onnx backends opened, by module (opening one costs ~1 s)."""
    sam, sd = sams[1], sds[1]
    runners = {
        "image_encoder": sam.encoder.runner,
        "prompt_decoder": sam.decoder.runner,
        "unet": sd.pipe.unet.runner,
        "vae_encoder": sd.pipe.vae.encoder_runner,
        "vae_decoder": sd.pipe.vae.decoder_runner,
    }
    assert all(r.providers == ["CPUExecutionProvider"] for r in runners.values())
    return {m: r.session for m, r in runners.items()}


def _run(session, *args: torch.Tensor) -> list[np.ndarray]:
    return session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)})


# -- manifest -------------------------------------------------------------------------------------


def test_manifest_records_every_artifact(tiny_zoo, exported, sessions):
    out, manifest = exported
    assert read_manifest(out) == manifest == json.loads((out / "manifest.json").read_text())
    got = {(a["role"], a["module"]) for a in manifest["artifacts"]}
    assert got == {(r, m) for r, ms in MODULES.items() for m in ms}
    sums = {role: checksum(Path(tiny_zoo) / role) for role in MODULES}
    for a in manifest["artifacts"]:
        assert a["format"] == "onnx" and a["opset"] == 17 and a["dtype"] == "float32"
        assert (out / a["file"]).stat().st_size > 1000
        assert a["source"]["sha256"] == sums[a["role"]]
        assert Path(a["source"]["path"]) == (Path(tiny_zoo) / a["role"]).resolve()
        datetime.strptime(a["exported_at"], "%Y-%m-%dT%H:%M:%SZ")
        for spec in a["inputs"] + a["outputs"]:
            assert spec["name"] and spec["dtype"] == "float32" and spec["shape"]
        # the graph's own input names are the manifest's
        assert [i.name for i in sessions[a["module"]].get_inputs()] == [s["name"] for s in a["inputs"]]
        assert [o.name for o in sessions[a["module"]].get_outputs()] == [s["name"] for s in a["outputs"]]
    by = {a["module"]: a for a in manifest["artifacts"]}
    assert by["image_encoder"]["inputs"][0]["shape"] == ["batch", 3, 128, 128]
    assert by["prompt_decoder"]["inputs"][0]["shape"] == ["num_prompts", 32, 8, 8]  # one embedding per prompt
    assert by["prompt_decoder"]["inputs"][1]["shape"] == ["num_prompts", "num_points", 2]
    assert by["unet"]["inputs"][0]["shape"] == ["batch", 9, "height", "width"]
    assert by["vae_decoder"]["outputs"][0]["shape"] == ["batch", 3, "image_height", "image_width"]


def test_compile_format_writes_entries_but_no_files(tiny_zoo, exported, tmp_path):
    out = tmp_path / "compiled"
    shutil.copytree(exported[0], out)
    manifest = export_models(tiny_zoo, "compile", out, roles=("segmenter",), compile_mode="reduce-overhead")
    compiled = [a for a in manifest["artifacts"] if a["format"] == "compile"]
    assert {a["module"] for a in compiled} == set(MODULES["segmenter"])
    assert all(a["file"] is None and a["compile_options"] == {"mode": "reduce-overhead"} for a in compiled)
    assert {a["target"] for a in compiled} == {"sam.image_encoder", "PromptDecoder(sam): sam.prompt_encoder + sam.mask_decoder"}
    assert sum(a["format"] == "onnx" for a in manifest["artifacts"]) == 5  # other formats kept
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in exported[0].iterdir())


# -- graphs against eager modules -------------------------------------------------------------------


def test_sam_encoder_graph_matches_eager(sams, sessions):
    sam = sams[0].sam
    x = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(1))  # batch 3: not the traced 2
    (got,) = _run(sessions["image_encoder"], x)
    with torch.no_grad():
        want = sam.image_encoder(x)
    np.testing.assert_allclose(got, want.numpy(), **TOL)


@pytest.mark.parametrize("case", ["points", "boxes", "boxes+points", "mask"])
def test_sam_decoder_graph_matches_prompt_encoder_and_decoder(sams, sessions, case):
    """The graph against SAM's own PromptEncoder + MaskDecoder, fed as SamPredictor feeds them
    (one image's embedding for all its prompts)."""
    from int_engine.backends.sam_decode import flatten_prompts

    sam = sams[0].sam
    emb = decoder_example(sam)[0][:1]
    gen = torch.Generator().manual_seed(2)
    n = 3
    points = torch.rand(1 if case == "points" else n, 2, 2, generator=gen) * 128
    labels = torch.tensor([[1, 0]]).expand(len(points), 2)
    boxes = torch.sort(torch.rand(n, 2, 2, generator=gen) * 128, dim=1).values.reshape(n, 4)
    pts = None if case == "boxes" else (points, labels)
    bxs = None if case in ("points", "mask") else boxes
    mask = torch.randn(len(points), 1, 32, 32, generator=gen) if case == "mask" else None
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(pts, bxs, mask)
        want = sam.mask_decoder.predict_masks(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense)
    coords, labs = flatten_prompts(*(pts or (None, None)), bxs)
    m_in, has = (mask, torch.ones(1)) if mask is not None else (torch.zeros(1, 1, 32, 32), torch.zeros(1))
    got = _run(sessions["prompt_decoder"], emb.expand(len(coords), -1, -1, -1), coords, labs, m_in, has)
    for g, w in zip(got, want):
        assert g.shape == tuple(w.shape)
        np.testing.assert_allclose(g, w.numpy(), **TOL)


def test_unet_and_vae_graphs_match_eager(sds, sessions):
    pipe = sds[0].pipe
    ex = sd_examples(pipe, size=48, batch=3)  # another size and batch than the traced ones
    with torch.no_grad():
        want = {
            "unet": pipe.unet(*ex["unet"][:2], encoder_hidden_states=ex["unet"][2]).sample,
            "vae_encoder": pipe.vae.encode(*ex["vae_encoder"]).latent_dist.parameters,
            "vae_decoder": pipe.vae.decode(*ex["vae_decoder"]).sample,
        }
    for module, w in want.items():
        (got,) = _run(sessions[module], *ex[module])
        assert got.shape == tuple(w.shape)
        np.testing.assert_allclose(got, w.numpy(), **TOL)


# -- whole backends ------------------------------------------------------------------------------------


def _sam_requests() -> list[SegmentRequest]:
    rng = np.random.default_rng(3)
    reqs = []
    for h, w in [(100, 140), (128, 90), (60, 60)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        boxes = np.array([[5, 5, w // 2, h // 2], [w // 4, h // 4, w - 3, h - 3]], np.float32)
        point = np.array([[w / 3, h / 3]], np.float32)
        reqs.append(SegmentRequest(img, boxes=boxes, points=point, labels=np.array([1])))
    reqs.append(SegmentRequest(img, points=np.array([[20, 30], [50, 10]], np.float32), labels=np.array([1, 0])))
    reqs.append(SegmentRequest(img, boxes=np.array([[3, 4, 40, 50]], np.float32)))
    return reqs


def test_the_onnx_backend_does_not_keep_the_eager_encoders_weights(sams):
    """The graph replaces SAM's eager image encoder, so its weights are not held beside it."""
    eager, onnx = sams
    assert all(p.is_meta for p in onnx.sam.image_encoder.parameters())
    assert not any(p.is_meta for p in eager.sam.image_encoder.parameters())
    assert not any(p.is_meta for p in onnx.sam.mask_decoder.parameters())  # postprocessing stays real


@pytest.mark.parametrize("multimask", [False, True])
def test_sam_backend_onnx_equals_eager(sams, multimask):
    eager, onnx = sams
    assert isinstance(onnx.decoder, GraphDecoder) and onnx.runtime == "onnx"
    calls = []
    encode = onnx.encoder
    onnx.encoder = lambda x: calls.append(len(x)) or encode(x)  # prove the graph ran
    before = eager.multimask_output, onnx.multimask_output
    eager.multimask_output = onnx.multimask_output = multimask
    try:
        reqs = _sam_requests()
        want, got = eager.segment(reqs), onnx.segment(reqs)
    finally:
        onnx.encoder = encode
        eager.multimask_output, onnx.multimask_output = before
    assert sum(calls) == len(reqs)
    for w, g in zip(want, got):
        assert 0 < (w > 0.5).sum() < w.size  # SAM's probabilities, on and off the mask
        np.testing.assert_allclose(g, w, atol=1e-5)


def test_sd_backend_onnx_equals_eager(sds):
    eager, onnx = sds
    assert isinstance(onnx.pipe.unet, GraphUNet) and isinstance(onnx.pipe.vae, GraphVae)
    rng = np.random.default_rng(4)
    images, masks = [], []
    for h, w in [(40, 60), (50, 30), (32, 32)]:
        images.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        m = np.zeros((h, w), np.float32)
        m[h // 4 : h // 2 + 4, w // 4 : w // 2 + 4] = 1
        masks.append(m)
    args = (images, masks, ["sand, detailed"] * 3, ["frog"] * 3, [11, 22, 33])
    want, got = eager.inpaint(*args), onnx.inpaint(*args)
    for im, m, w, g in zip(images, masks, want, got):
        inside = m > 0.5
        assert not np.array_equal(w[inside], im[inside])  # the model did paint
        assert np.abs(g.astype(int) - w).max() <= 1
        np.testing.assert_array_equal(g[~inside], im[~inside])


# -- refusals ---------------------------------------------------------------------------------------


def test_stale_checkpoint_is_refused(tiny_zoo, exported, tmp_path):
    # Artifacts are matched to a checkpoint by content, not by path: a copy is still fresh.
    out, model = exported[0], tmp_path / "segmenter"
    shutil.copytree(Path(tiny_zoo) / "segmenter", model)
    assert SamSegmenter.load(model, runtime="onnx", artifacts=out).runtime == "onnx"
    old = checksum(model)
    arch = model / "sam_arch.json"
    arch.write_text(json.dumps(json.loads(arch.read_text())))  # same model, other bytes: another checkpoint
    new = checksum(model)
    with pytest.raises(ModelLoadError) as err:
        SamSegmenter.load(model, runtime="onnx", artifacts=out)
    msg = str(err.value)
    assert "stale" in msg and old in msg and new in msg and str(model) in msg
    assert str(out / "segmenter" / "image_encoder" / "model.onnx") in msg


def _copy_with_edited_manifest(exported, out: Path, module: str, edit) -> Path:
    """A copy of the export folder whose manifest entries of ``module`` went through ``edit``."""
    shutil.copytree(exported[0], out)
    manifest = json.loads((out / "manifest.json").read_text())
    for a in manifest["artifacts"]:
        if a["module"] == module:
            edit(a)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_manifest_checksum_mismatch_is_refused(tiny_zoo, exported, tmp_path):
    out = _copy_with_edited_manifest(exported, tmp_path / "out", "unet", lambda a: a["source"].update(sha256="0" * 64))
    with pytest.raises(ModelLoadError, match=r"inpaint/unet/model\.onnx is stale.*sha256 0{64}"):
        SDInpainter.load(Path(tiny_zoo) / "inpaint", runtime="onnx", artifacts=out, **SD_OPTS)


def test_decoder_graph_of_one_image_per_call_is_refused(tiny_zoo, exported, tmp_path):
    # as graphs exported before prompts carried their own embedding: one image per call
    out = _copy_with_edited_manifest(
        exported, tmp_path / "old", "prompt_decoder", lambda a: a["inputs"][0]["shape"].__setitem__(0, 1)
    )
    with pytest.raises(ModelLoadError, match=r"prompt_decoder/model\.onnx decodes against one image embedding.*re-export"):
        SamSegmenter.load(Path(tiny_zoo) / "segmenter", runtime="onnx", artifacts=out)


def test_bad_runtime_and_missing_artifacts(tiny_zoo, tmp_path):
    with pytest.raises(ConfigError, match="runtime must be one of"):
        SamSegmenter.load(Path(tiny_zoo) / "segmenter", runtime="tvm")
    with pytest.raises(ConfigError, match="needs artifacts"):
        SDInpainter.load(Path(tiny_zoo) / "inpaint", runtime="onnx")
    with pytest.raises(ModelLoadError, match="no export manifest"):
        SamSegmenter.load(Path(tiny_zoo) / "segmenter", runtime="onnx", artifacts=tmp_path)
    with pytest.raises(ConfigError, match="format must be one of"):
        export_models(tiny_zoo, "tflite", tmp_path)


def _provider_names(providers: list) -> list[str]:
    return [p if isinstance(p, str) else p[0] for p in providers]


def test_onnxruntime_providers_end_with_cpu():
    assert providers_for("cpu") == ["CPUExecutionProvider"]
    gpu = _provider_names(providers_for("cuda"))
    assert gpu[-1] == "CPUExecutionProvider" and set(gpu) <= set(ort.get_available_providers())


def test_onnx_runtime_on_cuda_is_cuda_then_cpu_never_onnxruntimes_tensorrt(monkeypatch):
    # as onnxruntime-gpu built with TensorRT lists them
    everything = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: everything)
    assert providers_for("cuda") == [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    assert providers_for(torch.device("cuda", 1)) == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert providers_for("cpu") == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    assert providers_for("cuda:0") == ["CPUExecutionProvider"]


# -- example inputs follow the module's device ------------------------------------------------------


def test_example_builders_take_a_device(sams, sds):
    sam, pipe = sams[0].sam, sds[0].pipe
    on_cpu = decoder_example(sam)
    assert all(t.device.type == "cpu" for t in on_cpu + encoder_example(sam))  # the module's device
    on_meta = decoder_example(sam, device="meta")
    assert all(t.is_meta for t in on_meta + encoder_example(sam, device="meta"))
    assert [t.shape for t in on_meta] == [t.shape for t in on_cpu]
    explicit = decoder_example(sam, device=torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(explicit, on_cpu))  # the same values wherever asked
    examples = sd_examples(pipe, size=32, device="meta")
    assert all(t.is_meta for ts in examples.values() for t in ts)
    assert all(t.device.type == "cpu" for ts in sd_examples(pipe, size=32).values() for t in ts)


def test_export_traces_on_the_modules_device(tiny_zoo, tmp_path, monkeypatch):
    """With the models on "meta" (standing in for "cuda": no CPU tensor can be mixed in), every
    graph is traced with examples on that device."""
    traced = {}

    def record(module, args, path, **kwargs):
        traced[Path(path).parent.name] = {t.device.type for t in args} | {p.device.type for p in module.parameters()}

    monkeypatch.setattr(torch.onnx, "export", record)
    sam = SamSegmenter.load(Path(tiny_zoo) / "segmenter").sam.to(torch.device("meta"))
    export_sam(sam, Path(tiny_zoo) / "segmenter", tmp_path)
    pipe = SDInpainter.load(Path(tiny_zoo) / "inpaint", **SD_OPTS).pipe
    pipe.unet.to("meta")
    pipe.vae.to("meta")
    export_sd(pipe, Path(tiny_zoo) / "inpaint", tmp_path, size=32)
    assert traced == {m: {"meta"} for ms in MODULES.values() for m in ms}


def test_export_onnx_refuses_examples_off_the_modules_device(tmp_path):
    module = torch.nn.Linear(2, 2).to("meta")
    with pytest.raises(ModelLoadError, match=r"module is on meta but its example inputs are not: x on cpu"):
        export_onnx(module, (torch.zeros(1, 2),), tmp_path / "m.onnx", ["x"], ["y"], {})


# -- torch.compile and TensorRT ---------------------------------------------------------------------


def test_compile_runtime_matches_eager(tiny_zoo, sams, tmp_path):
    # Dynamo's "eager" backend: graph capture of the same modules, without inductor's C++
    # code generation, which takes ~110 s for the tiny SAM on this 2-core CPU (measured).
    export_models(tiny_zoo, "compile", tmp_path, roles=("segmenter",), compile_backend="eager")
    compiled = SamSegmenter.load(Path(tiny_zoo) / "segmenter", runtime="compile", artifacts=tmp_path)
    assert isinstance(compiled.encoder, torch._dynamo.eval_frame.OptimizedModule)
    assert isinstance(compiled.decoder, torch._dynamo.eval_frame.OptimizedModule)
    reqs = _sam_requests()[:1]  # one shape: each new shape is another capture
    for w, g in zip(sams[0].segment(reqs), compiled.segment(reqs)):
        np.testing.assert_allclose(g, w, atol=1e-5)


@pytest.mark.skipif(trt_engine.available(), reason="checks the error raised where TensorRT is missing")
def test_tensorrt_export_refused_without_tensorrt(tiny_zoo, tmp_path):
    with pytest.raises(ModelLoadError, match="TensorRT is not installed"):
        export_models(tiny_zoo, "tensorrt", tmp_path)
    assert not (tmp_path / "manifest.json").exists()  # refused before exporting anything


@pytest.mark.skipif(
    not (trt_engine.available() and torch.cuda.is_available()),
    reason="TensorRT engines need the 'tensorrt' package (NVIDIA's index, unreachable here) and a CUDA GPU",
)
def test_tensorrt_engines_match_eager(tiny_zoo, sams, tmp_path):
    manifest = export_models(tiny_zoo, "tensorrt", tmp_path, roles=("segmenter",), device="cuda", precision="float32")
    assert {a["module"] for a in manifest["artifacts"] if a["format"] == "tensorrt"} == set(MODULES["segmenter"])
    trt = SamSegmenter.load(Path(tiny_zoo) / "segmenter", device="cuda", runtime="tensorrt", artifacts=tmp_path)
    reqs = _sam_requests()
    for w, g in zip(sams[0].segment(reqs), trt.segment(reqs)):
        assert np.mean((w > 0.5) != (g > 0.5)) < 1e-3  # TF32/tactic choices may flip a border pixel
        np.testing.assert_allclose(g, w, atol=1e-2)
