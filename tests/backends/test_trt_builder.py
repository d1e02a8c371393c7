"""TensorRT engine building without TensorRT: a fake ``tensorrt`` module records what ``build_engine``
asks of it, for TensorRT 10 (weak typing, precision from builder flags) and TensorRT 11 (strongly
typed networks, precision from the graph: the float32 graph cast to float16 first). The cast itself
is checked on real exported graphs run by onnxruntime, and the profiles against the backends'
batch limits.
"""

from __future__ import annotations

import inspect
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="the graphs are written and cast with the 'onnx' package")
ort = pytest.importorskip("onnxruntime", reason="the cast graphs are run with onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from int_engine.backends.inpaint_sd import CUDA_MAX_BATCH, VAE_ENCODE_BATCH  # noqa: E402
from int_engine.backends.segment_sam import SamSegmenter  # noqa: E402
from int_engine.errors import ConfigError, ModelLoadError  # noqa: E402
from int_engine.export import export_models, onnx_io, trt_engine  # noqa: E402
from int_engine.export.build import axis_ranges  # noqa: E402
from int_engine.export.onnx_io import cast_model, export_onnx, float_types, write_cast_model  # noqa: E402
from int_engine.export.runtime import profile_rows  # noqa: E402

STRONGLY_TYPED = 1  # TensorRT's NetworkDefinitionCreationFlag.STRONGLY_TYPED: a bit index, not a mask


# -- a fake tensorrt ------------------------------------------------------------------------------


def fake_tensorrt(version: str, parse_ok: bool = True) -> types.ModuleType:
    """A ``tensorrt`` module with what ``build_engine`` uses; ``trt.record`` holds the calls:
    network creation flags, builder flags, the file parsed with its initializers' element types,
    profile shapes. TensorRT 11's BuilderFlag has no FP16/BF16 (touching them raises)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    record = types.SimpleNamespace(network_flags=[], builder_flags=[], parsed=[], initializer_types=[], shapes={})
    trt.record = record

    class Logger:
        WARNING = 2

        def __init__(self, severity: int) -> None:
            self.severity = severity

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = STRONGLY_TYPED

    class BuilderFlag:
        TF32 = 7

    if version.split(".")[0] in ("9", "10"):
        BuilderFlag.FP16, BuilderFlag.BF16 = 0, 13

    class OnnxParser:
        def __init__(self, network: object, logger: Logger) -> None:
            self.num_errors = 0 if parse_ok else 1

        def parse_from_file(self, path: str) -> bool:
            record.parsed.append(path)
            record.initializer_types.append({t.data_type for t in onnx.load(path).graph.initializer})
            return parse_ok

        def get_error(self, i: int) -> str:
            return "In node 3 (Resize): unsupported"

    class Profile:
        def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
            record.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Config:
        def set_flag(self, flag: int) -> None:
            record.builder_flags.append(flag)

        def add_optimization_profile(self, profile: Profile) -> int:
            return 0

    class Builder:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def create_network(self, flags: int) -> object:
            record.network_flags.append(flags)
            return object()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: object, config: Config) -> bytes:
            return b"serialized engine"

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            raise AssertionError("a CPU-only test deserialised an engine")

    for cls in (Logger, NetworkDefinitionCreationFlag, BuilderFlag, OnnxParser, Builder, Runtime):
        setattr(trt, cls.__name__, cls)
    return trt


@pytest.fixture
def install_trt(monkeypatch):
    """``install_trt(version)``: the fake as ``tensorrt`` for the test's duration."""

    def install(version: str, parse_ok: bool = True) -> types.ModuleType:
        trt = fake_tensorrt(version, parse_ok)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(trt_engine, "available", lambda: True)
        return trt

    return install


# -- a real tiny graph ----------------------------------------------------------------------------


class TinyGraph(torch.nn.Module):
    """What the engine's graphs are made of, small: a conv, an upsample (Resize and its float32
    scales), LayerNorm, a sinusoidal timestep embedding, an int64 index input (an embedding
    lookup) and an int64 output, attention."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = torch.nn.LayerNorm(8)
        self.embed = torch.nn.Embedding(10, 8)
        self.out = torch.nn.Linear(8, 8)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=gen) * 0.3

    def forward(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.nn.functional.interpolate(self.conv(x), scale_factor=2.0, mode="nearest")
        tokens = self.norm(h.flatten(2).transpose(1, 2))  # [B, 4HW, 8]
        freqs = torch.exp(-math.log(10000) * torch.arange(4, dtype=torch.float32) / 4)
        angle = t[:, None] * freqs[None]
        t_emb = torch.cat([angle.sin(), angle.cos()], dim=-1)  # [B, 8]
        e = self.embed(ids)  # [B, N, 8]
        attn = torch.softmax(tokens @ e.transpose(1, 2) / math.sqrt(8), dim=-1) @ e
        return self.out(attn + t_emb[:, None]), ids * 2


def tiny_inputs(batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((batch, 3, 8, 8)).astype(np.float32),
        "t": rng.integers(0, 1000, batch).astype(np.float32),
        "ids": rng.integers(0, 10, (batch, 5)).astype(np.int64),
    }


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    """TinyGraph exported by the engine's own exporter (dynamic batch)."""
    path = tmp_path_factory.mktemp("tiny") / "model.onnx"
    example = tuple(torch.from_numpy(v) for v in tiny_inputs().values())
    axes = {"x": {0: "batch"}, "t": {0: "batch"}, "ids": {0: "batch"}, "y": {0: "batch"}, "ids2": {0: "batch"}}
    export_onnx(TinyGraph(), example, path, ["x", "t", "ids"], ["y", "ids2"], axes)
    return path


def _elem_types(values) -> dict[str, int]:
    return {v.name: v.type.tensor_type.elem_type for v in values}


def _constant_type(node: onnx.NodeProto) -> int:
    return helper.get_attribute_value(node.attribute[0]).data_type


def _session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got.astype(np.float64) - want) / np.linalg.norm(want))


# -- the cast ---------------------------------------------------------------------------------------


def test_float16_cast_runs_close_to_the_float32_graph(tiny_onnx, tmp_path):
    cast = write_cast_model(tiny_onnx, tmp_path / "model.float16.onnx")
    model = onnx.load(str(cast))
    onnx.checker.check_model(model, full_check=True)
    assert {t.data_type for t in model.graph.initializer} <= {TensorProto.FLOAT16, TensorProto.INT64}
    assert TensorProto.FLOAT16 in {t.data_type for t in model.graph.initializer}
    # Resize's scales must stay float32: the exporter's Constant is left as it was (TensorRT reads them as weights)
    (resize,) = [n for n in model.graph.node if n.op_type == "Resize"]
    (scales,) = [n for n in model.graph.node if resize.input[2] in n.output]
    assert scales.op_type == "Constant" and _constant_type(scales) == TensorProto.FLOAT
    # the int64 constants (shapes, axes) stay int64, the other float32 ones become float16
    before = {n.output[0]: _constant_type(n) for n in onnx.load(str(tiny_onnx)).graph.node if n.op_type == "Constant"}
    after = {n.output[0]: _constant_type(n) for n in model.graph.node if n.op_type == "Constant"}
    assert TensorProto.INT64 in before.values() and list(before.values()).count(TensorProto.FLOAT) > 1
    f16 = TensorProto.FLOAT16
    assert after == {k: f16 if t == TensorProto.FLOAT and k != resize.input[2] else t for k, t in before.items()}
    assert _elem_types(model.graph.input) == {"x": TensorProto.FLOAT16, "t": TensorProto.FLOAT16, "ids": TensorProto.INT64}
    assert _elem_types(model.graph.output) == {"y": TensorProto.FLOAT16, "ids2": TensorProto.INT64}

    session32, session16 = _session(tiny_onnx), _session(cast)
    assert [i.type for i in session16.get_inputs()] == ["tensor(float16)", "tensor(float16)", "tensor(int64)"]
    feed = tiny_inputs(batch=3, seed=1)  # not the traced batch
    want = session32.run(None, feed)
    got = session16.run(None, {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in feed.items()})
    assert got[0].dtype == np.float16 and got[1].dtype == np.int64
    assert _relative_error(got[0], want[0]) < 1e-2
    np.testing.assert_allclose(got[0].astype(np.float32), want[0], atol=2e-2 * np.abs(want[0]).max())
    np.testing.assert_array_equal(got[1], want[1])


def test_large_cast_graphs_keep_their_weights_beside_them(tiny_onnx, tmp_path, monkeypatch):
    # as a graph over protobuf's 2 GiB would (SAM-H's encoder, the UNet): weights in <file>.data
    small = write_cast_model(tiny_onnx, tmp_path / "small" / "model.float16.onnx")
    assert not small.with_name("model.float16.onnx.data").exists()
    monkeypatch.setattr(onnx_io, "_EXTERNAL_DATA_BYTES", 0)
    data = tmp_path / "model.float16.onnx.data"
    data.write_bytes(b"left by an earlier export" * 1000)
    large = write_cast_model(tiny_onnx, tmp_path / "model.float16.onnx")
    stored = onnx.load(str(large), load_external_data=False).graph.initializer
    assert stored and all(t.data_location == TensorProto.EXTERNAL for t in stored)  # not in the graph file
    assert 0 < data.stat().st_size < 5000  # rewritten, not appended to
    feed = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in tiny_inputs().items()}
    np.testing.assert_array_equal(_session(large).run(None, feed)[0], _session(small).run(None, feed)[0])


def test_bfloat16_cast_types(tiny_onnx):
    if "bfloat16" not in float_types():
        with pytest.raises(ModelLoadError, match="bfloat16"):
            cast_model(onnx.load(str(tiny_onnx)), "bfloat16")
        return
    model = cast_model(onnx.load(str(tiny_onnx)), "bfloat16")
    onnx.checker.check_model(model)
    assert {t.data_type for t in model.graph.initializer} <= {TensorProto.BFLOAT16, TensorProto.INT64}
    assert _elem_types(model.graph.input) == {"x": TensorProto.BFLOAT16, "t": TensorProto.BFLOAT16, "ids": TensorProto.INT64}
    weight = next(t for t in model.graph.initializer if t.data_type == TensorProto.BFLOAT16 and len(t.dims) == 4)
    original = next(t for t in onnx.load(str(tiny_onnx)).graph.initializer if t.name == weight.name)
    np.testing.assert_allclose(
        numpy_helper.to_array(weight).astype(np.float32), numpy_helper.to_array(original), rtol=2**-8, atol=0
    )


def _handmade_graph() -> onnx.ModelProto:
    """x float [1, 1, 2, 2], n int64 [1] -> y = Resize(Resize(x, computed scales) * Constant(value_floats)
    + Cast(n), constant unit scales), ones = ConstantOfShape(shape of y); plus an initializer beyond
    float16's range."""
    nodes = [
        helper.make_node("Mul", ["scale_base", "scale_two"], ["scales"]),
        helper.make_node("Resize", ["x", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Constant", [], ["half"], value_floats=[0.5]),
        helper.make_node("Mul", ["up", "half"], ["scaled"]),
        helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["scaled", "nf"], ["sum"]),
        helper.make_node("Max", ["sum", "floor"], ["floored"]),
        helper.make_node("Resize", ["floored", "", "unit_scales"], ["y"], mode="nearest"),
        helper.make_node("Shape", ["y"], ["shape"]),
        helper.make_node("ConstantOfShape", ["shape"], ["ones"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
    ]
    graph = helper.make_graph(
        nodes,
        "handmade",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2]),
            helper.make_tensor_value_info("n", TensorProto.INT64, [1]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4]),
            helper.make_tensor_value_info("ones", TensorProto.FLOAT, [1, 1, 4, 4]),
        ],
        [
            numpy_helper.from_array(np.array([1, 1, 1, 1], np.float32), "scale_base"),
            numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scale_two"),
            numpy_helper.from_array(np.array([1, 1, 1, 1], np.float32), "unit_scales"),
            numpy_helper.from_array(np.array([-1e9], np.float32), "floor"),
            numpy_helper.from_array(np.array([-1e9, -np.inf, 7e4, 3.0], np.float32), "unused_limits"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_cast_rewrites_constants_casts_and_keeps_ints():
    model = cast_model(_handmade_graph(), "float16")
    onnx.checker.check_model(model, full_check=True)
    nodes = {n.output[0]: n for n in model.graph.node}
    initializers = {t.name: t for t in model.graph.initializer}
    assert nodes["nf"].attribute[0].i == TensorProto.FLOAT16  # Cast(to=float) now casts to float16
    half = helper.get_attribute_value(nodes["half"].attribute[0])
    assert nodes["half"].attribute[0].name == "value" and half.data_type == TensorProto.FLOAT16
    assert helper.get_attribute_value(nodes["ones"].attribute[0]).data_type == TensorProto.FLOAT16
    limits = numpy_helper.to_array(initializers["unused_limits"])
    # clamped to float16's range, not overflowed to -inf; a real -inf stays one
    np.testing.assert_array_equal(limits, np.array([-65504, -np.inf, 65504, 3], np.float16))
    assert _elem_types(model.graph.input)["n"] == TensorProto.INT64
    # Resize's scales are float32 only: computed ones (in float16 now) are cast back, constant ones stay
    assert initializers["scale_two"].data_type == TensorProto.FLOAT16
    (back,) = [n for n in model.graph.node if n.op_type == "Cast" and list(n.input) == ["scales"]]
    assert back.attribute[0].i == TensorProto.FLOAT and nodes["up"].input[2] == back.output[0]
    assert initializers["unit_scales"].data_type == TensorProto.FLOAT and nodes["y"].input[2] == "unit_scales"

    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    y, ones = _session_of(model).run(None, {"x": x.astype(np.float16), "n": np.array([3], np.int64)})
    assert y.dtype == np.float16 and ones.dtype == np.float16
    np.testing.assert_array_equal(y, np.repeat(np.repeat(x * 0.5 + 3, 2, axis=2), 2, axis=3).astype(np.float16))
    np.testing.assert_array_equal(ones, np.ones((1, 1, 4, 4), np.float16))


def _session_of(model: onnx.ModelProto):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_cast_refuses_what_it_cannot_cast(tiny_onnx):
    with pytest.raises(ModelLoadError, match="cannot cast an ONNX graph to 'float8'"):
        cast_model(onnx.load(str(tiny_onnx)), "float8")
    model = _handmade_graph()
    model.graph.node.append(helper.make_node("DequantizeLinear", ["n", "scales"], ["dq"]))
    with pytest.raises(ModelLoadError, match="DequantizeLinear"):
        cast_model(model, "float16")
    model = _handmade_graph()
    model.graph.node.append(helper.make_node("Hypothetical", ["x"], ["h"], dtype=TensorProto.FLOAT))
    with pytest.raises(ModelLoadError, match="Hypothetical node.*'dtype' attribute asks for float32"):
        cast_model(model, "float16")


# -- build_engine on TensorRT 10 and 11 ---------------------------------------------------------------

SHAPES = {"x": ((1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8)), "t": ((1,), (2,), (4,)), "ids": ((1, 5), (2, 5), (4, 5))}


@pytest.mark.parametrize("precision, flag", [("float16", 0), ("bfloat16", 13), ("float32", None)])
def test_tensorrt_10_builds_weakly_typed_with_a_precision_flag(install_trt, tiny_onnx, tmp_path, precision, flag):
    trt = install_trt("10.8.0.43")
    built = trt_engine.build_engine(tiny_onnx, tmp_path / "model.plan", SHAPES, precision)
    assert trt.record.network_flags == [0]
    assert trt.record.builder_flags == ([] if flag is None else [flag])
    assert trt.record.parsed == [str(tiny_onnx)]  # the float32 graph itself
    assert trt.record.initializer_types == [{TensorProto.FLOAT}]
    assert trt.record.shapes == SHAPES
    assert (tmp_path / "model.plan").read_bytes() == b"serialized engine"
    assert built == {"tensorrt": "10.8.0.43", "strongly_typed": False, "parsed": tiny_onnx}


def test_tensorrt_11_builds_strongly_typed_from_a_float16_graph(install_trt, tiny_onnx, tmp_path):
    trt = install_trt("11.0.0")
    engine = tmp_path / "engine" / "model.float16.plan"
    built = trt_engine.build_engine(tiny_onnx, engine, SHAPES, "float16")
    assert trt.record.network_flags == [1 << STRONGLY_TYPED]
    assert trt.record.builder_flags == []  # FP16/BF16 are gone: precision is the graph's
    (parsed,) = trt.record.parsed
    assert Path(parsed) == tiny_onnx.with_name("model.float16.onnx") == built["parsed"]
    assert trt.record.initializer_types == [{TensorProto.FLOAT16}]
    assert _elem_types(onnx.load(parsed).graph.input)["x"] == TensorProto.FLOAT16
    assert built["strongly_typed"] and engine.read_bytes() == b"serialized engine"


def test_tensorrt_11_float32_parses_the_exported_graph(install_trt, tiny_onnx, tmp_path):
    trt = install_trt("11.2.1")
    trt_engine.build_engine(tiny_onnx, tmp_path / "model.plan", SHAPES, "float32")
    assert trt.record.network_flags == [1 << STRONGLY_TYPED] and trt.record.builder_flags == []
    assert trt.record.parsed == [str(tiny_onnx)]


def test_build_engine_errors(install_trt, tiny_onnx, tmp_path):
    install_trt("9.3.0")
    with pytest.raises(ModelLoadError, match="TensorRT 9.3.0 is too old"):
        trt_engine.build_engine(tiny_onnx, tmp_path / "a.plan", SHAPES)
    install_trt("nightly")
    with pytest.raises(ModelLoadError, match="cannot read TensorRT's version from 'nightly'"):
        trt_engine.build_engine(tiny_onnx, tmp_path / "a.plan", SHAPES)
    install_trt("10.8.0", parse_ok=False)
    with pytest.raises(ModelLoadError, match=r"cannot parse .*model\.onnx: In node 3 \(Resize\)"):
        trt_engine.build_engine(tiny_onnx, tmp_path / "a.plan", SHAPES)
    install_trt("10.8.0")
    with pytest.raises(ConfigError, match="precision must be one of"):
        trt_engine.build_engine(tiny_onnx, tmp_path / "a.plan", SHAPES, "int8")
    assert not (tmp_path / "a.plan").exists()


def test_trt_runner_needs_cuda(install_trt, tmp_path):
    install_trt("10.8.0")
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        trt_engine.TrtRunner(tmp_path / "model.plan", device="cpu")


# -- profiles ---------------------------------------------------------------------------------------


def test_split_rows_cuts_the_batch_and_keeps_broadcast_inputs_whole():
    inputs = {"sample": torch.arange(10).reshape(5, 2), "timestep": torch.tensor([7.0]), "scalar": torch.tensor(1.0)}
    pieces = trt_engine.split_rows(inputs, 2)
    assert [len(p["sample"]) for p in pieces] == [2, 2, 1]
    assert torch.equal(torch.cat([p["sample"] for p in pieces]), inputs["sample"])
    assert all(p["timestep"] is inputs["timestep"] and p["scalar"] is inputs["scalar"] for p in pieces)
    per_row = {"sample": torch.zeros(5, 2), "timestep": torch.arange(5.0)}
    assert [p["timestep"].tolist() for p in trt_engine.split_rows(per_row, 3)] == [[0, 1, 2], [3, 4]]
    assert trt_engine.split_rows(inputs, None) == [inputs] == trt_engine.split_rows(inputs, 5)


def test_axis_ranges_follow_the_backends_batch_limits():
    params = inspect.signature(SamSegmenter.load).parameters
    table = axis_ranges()
    assert table["image_encoder"]["batch"] == (1, params["batch_size"].default, params["batch_size"].default) == (1, 4, 4)
    assert table["prompt_decoder"]["num_prompts"][2] == params["decode_batch"].default == 64
    assert table["unet"]["batch"][2] == table["unet"]["timestep_batch"][2] == 2 * CUDA_MAX_BATCH
    assert table["vae_encoder"]["batch"][2] == VAE_ENCODE_BATCH and table["vae_decoder"]["batch"][2] == CUDA_MAX_BATCH

    table = axis_ranges(sam_batch_size=2, sam_decode_batch=16, inpaint_batch=3, overrides={"unet": {"height": (32, 64, 96)}})
    assert table["image_encoder"]["batch"] == (1, 2, 2)
    assert table["prompt_decoder"]["num_prompts"] == (1, 16, 16) and table["prompt_decoder"]["mask_batch"] == (1, 1, 16)
    assert table["unet"]["batch"] == (1, 6, 6) and table["unet"]["height"] == (32, 64, 96)
    assert table["vae_encoder"]["batch"] == (1, 3, 3) and table["vae_decoder"]["batch"] == (1, 3, 3)
    with pytest.raises(ConfigError, match="sam_batch_size .* >= 1"):
        axis_ranges(sam_batch_size=0)
    with pytest.raises(ConfigError, match="unknown module 'text_encoder'"):
        axis_ranges(overrides={"text_encoder": {"batch": (1, 1, 1)}})
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        axis_ranges(overrides={"unet": {"batch": (1, 8, 4)}})


@pytest.fixture(scope="module")
def trt_export(tiny_zoo, tmp_path_factory):
    """Both roles exported with format tensorrt through a fake TensorRT 11 (float16)."""
    mp = pytest.MonkeyPatch()
    trt = fake_tensorrt("11.0.0")
    mp.setitem(sys.modules, "tensorrt", trt)
    mp.setattr(trt_engine, "available", lambda: True)
    out = tmp_path_factory.mktemp("trt")
    try:
        manifest = export_models(tiny_zoo, "tensorrt", out)
    finally:
        mp.undo()
    return out, manifest, trt.record


def test_tensorrt_export_profiles_are_the_backends_batches(trt_export):
    out, manifest, record = trt_export
    assert json.loads((out / "manifest.json").read_text()) == manifest
    engines = {a["module"]: a for a in manifest["artifacts"] if a["format"] == "tensorrt"}
    assert set(engines) == {"image_encoder", "prompt_decoder", "unet", "vae_encoder", "vae_decoder"}
    enc, dec, unet = engines["image_encoder"], engines["prompt_decoder"], engines["unet"]
    params = inspect.signature(SamSegmenter.load).parameters
    sam_batch = params["batch_size"].default
    assert enc["profile"]["images"] == [[1, 3, 128, 128], [sam_batch, 3, 128, 128], [sam_batch, 3, 128, 128]]
    assert enc["axis_ranges"] == {"batch": [1, sam_batch, sam_batch]}
    assert dec["profile"]["image_embeddings"][2][0] == params["decode_batch"].default
    assert dec["profile"]["point_coords"][2][:2] == [64, 16]
    assert unet["profile"]["sample"][2][0] == unet["profile"]["encoder_hidden_states"][2][0] == 2 * CUDA_MAX_BATCH
    assert unet["profile"]["sample"][0][2:] == unet["profile"]["sample"][2][2:]  # spatial axes at the traced size
    assert {m: profile_rows(e) for m, e in engines.items()} == {
        "image_encoder": sam_batch,
        "prompt_decoder": 64,
        "unet": 2 * CUDA_MAX_BATCH,
        "vae_encoder": VAE_ENCODE_BATCH,
        "vae_decoder": CUDA_MAX_BATCH,
    }
    for e in engines.values():
        assert e["tensorrt"] == "11.0.0" and e["strongly_typed"] and e["dtype"] == "float16"
        assert e["parsed_onnx"] == e["onnx"].replace("model.onnx", "model.float16.onnx")
        assert (out / e["file"]).read_bytes() == b"serialized engine"
    assert record.initializer_types and all(TensorProto.FLOAT not in t for t in record.initializer_types)
    assert sorted(Path(p).relative_to(out).as_posix() for p in record.parsed) == sorted(
        e["parsed_onnx"] for e in engines.values()
    )


def test_float16_unet_graph_runs_close_to_float32(trt_export):
    out, manifest, _ = trt_export
    unet = next(a for a in manifest["artifacts"] if a["format"] == "tensorrt" and a["module"] == "unet")
    rng = np.random.default_rng(5)
    feed = {n: rng.standard_normal(s).astype(np.float32) for n, s in unet["example_shapes"].items()}
    feed["timestep"] = np.array([981.0], np.float32)
    (want,) = _session(out / unet["onnx"]).run(None, feed)
    (got,) = _session(out / unet["parsed_onnx"]).run(None, {k: v.astype(np.float16) for k, v in feed.items()})
    assert got.dtype == np.float16 and _relative_error(got, want) < 1e-2


def test_tensorrt_export_batch_arguments(tiny_zoo, install_trt, tmp_path):
    install_trt("10.8.0")
    manifest = export_models(
        tiny_zoo, "tensorrt", tmp_path, roles=("inpaint",), max_batch=3, ranges={"vae_decoder": {"batch": (1, 1, 2)}}
    )
    engines = {a["module"]: a for a in manifest["artifacts"] if a["format"] == "tensorrt"}
    assert engines["unet"]["profile"]["sample"][2][0] == 6  # two rows a job
    assert engines["vae_encoder"]["axis_ranges"]["batch"] == [1, 3, 3]
    assert engines["vae_decoder"]["profile"]["latents"][2][0] == 2
    assert all(not e["strongly_typed"] and e["parsed_onnx"] == e["onnx"] for e in engines.values())
