"""Backend options are checked against the backend's ``load`` before anything is loaded: a
misspelt key or a value of the wrong type is a one-line ConfigError, for every backend."""

import importlib.util
import inspect
import re
import types
import typing
from pathlib import Path

import pytest

from int_engine.config import ModelsConfig, RoleConfig
from int_engine.errors import ConfigError
from int_engine.models.load import (
    BACKENDS,
    COMMON_PARAMS,
    backend_class,
    backend_options,
    check_options,
    load_models,
    load_role,
)

PAIRS = sorted(BACKENDS)
# One value of each kind an option may be declared with.
SAMPLES = {
    int: 2,
    float: 1.5,
    bool: True,
    str: "x",
    Path: "x",
    type(None): None,
    # the vllm backend's options are vllm.EngineArgs fields: mappings and lists among them
    dict: {},
    list: [],
}
# Every file any **options backend's require_files looks for, empty: enough to reach its option check.
STUB_FILES = ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json", "vocab.txt")


def config(role: str, backend: str, **options) -> ModelsConfig:
    """The default models config with ``role`` played by ``backend`` with ``options``."""
    cfg = ModelsConfig()
    setattr(cfg, role, RoleConfig(backend, options=options))
    return cfg


def kinds(expected) -> tuple:
    """``int | None`` -> (int, NoneType); ``int`` -> (int,)."""
    union = isinstance(expected, types.UnionType) or typing.get_origin(expected) is typing.Union
    return typing.get_args(expected) if union else (expected,)


def misspell(name: str) -> str:
    """``batch_size`` -> ``bach_size``: one letter dropped from the middle."""
    return name[: len(name) // 2] + name[len(name) // 2 + 1 :]


def takes_kwargs(cls: type) -> bool:
    """Whether the backend's ``load`` takes ``**options`` (and so declares them by a hook)."""
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls.load).parameters.values())


@pytest.mark.parametrize("role,backend", PAIRS)
def test_a_misspelt_option_is_refused_naming_it_and_the_closest(role, backend):
    allowed = backend_options(backend_class(role, backend))
    name = max(allowed, key=len)
    with pytest.raises(ConfigError) as err:
        check_options(config(role, backend, **{misspell(name): 1}))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"models.{role}.options: unknown option {misspell(name)!r}")
    assert f"(did you mean {name!r}?)" in msg and msg.endswith("allowed: " + ", ".join(allowed))


@pytest.mark.parametrize("role,backend", PAIRS)
def test_a_value_of_the_wrong_type_is_refused_naming_key_and_type(role, backend):
    allowed = backend_options(backend_class(role, backend))
    name = next(n for n, t in allowed.items() if str not in kinds(t))
    with pytest.raises(ConfigError, match=rf"^models\.{role}\.options\.{name}: expected .*got str 'eight'$"):
        check_options(config(role, backend, **{name: "eight"}))


@pytest.mark.parametrize("role,backend", PAIRS)
def test_every_option_of_every_declared_kind_is_allowed(role, backend):
    for name, expected in backend_options(backend_class(role, backend)).items():
        for kind in kinds(expected):
            check_options(config(role, backend, **{name: SAMPLES[kind]}))


@pytest.mark.parametrize("role,backend", PAIRS)
def test_the_allowed_options_are_those_load_takes(role, backend, tmp_path):
    """Signature backends: exactly load's parameters, and its defaults pass. ``**options``
    backends: load itself refuses a stray option but none of those its hook declares."""
    cls = backend_class(role, backend)
    allowed = backend_options(cls)
    if not takes_kwargs(cls):
        params = {n: p for n, p in inspect.signature(cls.load).parameters.items() if n not in COMMON_PARAMS}
        assert list(allowed) == list(params)
        check_options(config(role, backend, **{n: p.default for n, p in params.items()}))
        return
    for f in STUB_FILES:
        (tmp_path / f).touch()
    with pytest.raises(ConfigError, match="zz_stray") as err:
        cls.load(tmp_path, **{name: None for name in allowed}, zz_stray=1)
    assert not [n for n in allowed if re.search(rf"\b{n}\b", str(err.value))]


def test_bools_are_not_ints_ints_are_floats_and_none_only_where_optional():
    with pytest.raises(ConfigError, match="batch_size: expected int, got bool True"):
        check_options(config("segmenter", "sam", batch_size=True))
    check_options(config("inpaint", "telea", radius=3))
    check_options(config("inpaint", "sd", size=None, guidance_scale=3))
    with pytest.raises(ConfigError, match="steps: expected int, got NoneType None"):
        check_options(config("inpaint", "sd", steps=None))


def test_bad_options_fail_before_any_model_is_loaded(tmp_path):
    # clip is loaded last and no model exists: only a check before loading can name the option.
    cfg = config("clip", "open_clip", bach_size=8)
    for load in (lambda: load_models(cfg, tmp_path / "nowhere"), lambda: load_role(cfg, "clip", tmp_path)):
        with pytest.raises(ConfigError, match="models.clip.options: unknown option 'bach_size'"):
            load()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_vllm_options_are_the_installed_engine_args():
    """vllm's options are read off the installed vllm.EngineArgs: its fields are allowed and
    typed from their annotations; a misspelt one is the same one-line error."""
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs

    allowed = backend_options(backend_class("vlm", "vllm"))
    fields = {f.name for f in dataclasses.fields(EngineArgs) if not f.name.startswith("_")}
    ours = {"multiprocessing", "chat_format"}
    assert set(allowed) == fields - {"model", "tokenizer", "dtype"} | ours
    check_options(
        config(
            "vlm",
            "vllm",
            tensor_parallel_size=2,
            quantization="awq",
            cpu_offload_gb=4,
            limit_mm_per_prompt={"image": 1},
            compilation_config={"mode": 0},
            gpu_memory_utilization=0.5,
        )
    )
    with pytest.raises(ConfigError, match=r"^models\.vlm\.options\.tensor_parallel_size: expected int, got str 'two'$"):
        check_options(config("vlm", "vllm", tensor_parallel_size="two"))
    with pytest.raises(
        ConfigError,
        match=r"^models\.vlm\.options: unknown option 'tensor_paralel_size' \(did you mean 'tensor_parallel_size'\?\)",
    ):
        check_options(config("vlm", "vllm", tensor_paralel_size=2))
    with pytest.raises(ConfigError, match="unknown option 'model'"):  # the role's path is the model
        check_options(config("vlm", "vllm", model="/elsewhere"))


def test_a_kwargs_backend_without_the_hook_is_a_programming_error():
    class Loose:
        @classmethod
        def load(cls, path, device="cpu", dtype="float32", **options): ...

    with pytest.raises(TypeError, match="option_types"):
        backend_options(Loose)
