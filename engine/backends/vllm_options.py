"""The vLLM backend's options: every ``vllm.EngineArgs`` field, typed for the config check, and
the engine's memory bounds.

Memory on CUDA. vLLM takes ``gpu_memory_utilization`` of the whole GPU up front (weights,
activations, then the KV cache fills the rest of its share), and it is loaded before the other
roles, so its default share, 0.9, would leave them 8 GB of an 80 GB GPU. What they need in
float16 (weights: parameters x 2 B; activations at their CUDA pass bounds):

- SD2-inpainting: UNet 865M (1.73 GB) + text encoder 354M (0.71 GB) + VAE 84M (0.17 GB) =
  2.6 GB; 8 jobs per pass = 16 UNet rows with guidance at ~0.6 GB each, ~10 GB (``inpaint_sd``).
- SAM ViT-H: 636M = 1.3 GB (2.5 GB is the float32 file); ~2-3 GB for 4 images at 1024 px.
- GroundingDINO Swin-T: 172M = 0.35 GB (0.7 GB in float32); ~1 GB for 16 views.
- CLIP ViT-B/16: 150M = 0.3 GB; small activations.

That is 4.6 GB of weights (6.1 GB at the float32 sizes) and ~14 GB of activations, ~19-20 GB
with the CUDA context (~0.5 GB) before the allocator's fragmentation. So on CUDA the default share
is 0.5 (``CUDA_GPU_MEMORY_UTILIZATION``), 40 GB of 80: LLaVA-1.5-13B's weights 26.7 GB and ~2 GB
of activations and CUDA graphs leave ~11 GB of KV cache, at 2 x 40 layers x 5120 x 2 B = 800 KiB
a token ~13.4k tokens (~21 rows of 620 tokens; rows about one view share its 576 image tokens
through the prefix cache); the other 40 GB hold the other roles twice over. Lower it first (0.4)
if another role runs out of memory. On CPU the KV cache is a fixed size instead (below).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import operator
import types
import typing
from typing import Any

import torch

# This backend's defaults for vllm.EngineArgs fields; every other field keeps vLLM's default.
# Prefix caching shares a view's image and prompt across its candidates' scoring requests.
ENGINE_DEFAULTS: dict[str, Any] = {"enable_prefix_caching": True, "enforce_eager": False, "seed": 0}
# EngineArgs fields that load sets itself from the role's config, never from its options.
SET_BY_LOAD = ("model", "tokenizer", "dtype")
# The option types when vLLM cannot be imported (the config check still names them; load then
# fails for want of vLLM). With vLLM, ``engine_option_types`` reads every field off EngineArgs.
FALLBACK_OPTION_TYPES: dict[str, Any] = {
    "max_model_len": int | None,
    "gpu_memory_utilization": float | None,
    "kv_cache_memory_bytes": int | None,
    "enable_prefix_caching": bool | None,
    "max_num_seqs": int | None,
    "max_num_batched_tokens": int | None,
    "block_size": int | None,
    "enforce_eager": bool,
    "seed": int,
    "tensor_parallel_size": int,
    "quantization": str | None,
    "limit_mm_per_prompt": dict,
    "cpu_offload_gb": float,
    "compilation_config": int | dict,
}
# Kinds taken beyond the EngineArgs annotation: LLM() takes a compilation mode number, and
# a None share is this backend's default one (engine_kwargs).
EXTRA_KINDS: dict[str, tuple[type, ...]] = {"compilation_config": (int,), "gpu_memory_utilization": (type(None),)}
# vLLM's share of a CUDA GPU when neither it nor kv_cache_memory_bytes is given: the module
# docstring's arithmetic (LLaVA-1.5-13B and the other four roles on one 80 GB GPU).
CUDA_GPU_MEMORY_UTILIZATION = 0.5
# On CPU, gpu_memory_utilization is a share of the NUMA node's RAM *minus this whole process's
# resident memory*, so with the other roles' models loaded in the same process it can leave
# nothing for the KV cache and fail. A fixed KV cache size is predictable instead: 1 GiB holds
# ~1000 tokens of LLaVA-1.5-7B in float32, one request; raise it for real batches.
CPU_KV_CACHE_BYTES = 1 << 30


def engine_kwargs(device: str, options: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments ``vllm.LLM`` gets besides the model, tokenizer and dtype: the
    options over ``ENGINE_DEFAULTS``, None dropped (vLLM's default), and where neither
    ``gpu_memory_utilization`` nor ``kv_cache_memory_bytes`` is given, the KV cache's bound:
    ``CUDA_GPU_MEMORY_UTILIZATION`` of a CUDA GPU, ``CPU_KV_CACHE_BYTES`` on CPU."""
    engine = ENGINE_DEFAULTS | options
    if engine.get("gpu_memory_utilization") is None and engine.get("kv_cache_memory_bytes") is None:
        kind = torch.device(device).type
        if kind == "cuda":
            engine["gpu_memory_utilization"] = CUDA_GPU_MEMORY_UTILIZATION
        elif kind == "cpu":
            engine["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    return {k: v for k, v in engine.items() if v is not None}


@functools.cache
def engine_option_types() -> dict[str, Any]:
    """Every ``vllm.EngineArgs`` field a config may set, name -> the kind the config check
    takes (``option_kind``): the installed vLLM's own list, so that a field it has is allowed
    and one it lacks is refused with the closest name. Private fields and ``SET_BY_LOAD`` are
    left out; the ``FALLBACK_OPTION_TYPES`` names come first (they lead the "allowed:" list of
    the check's message). Without an importable vLLM: ``FALLBACK_OPTION_TYPES``.
    """
    try:
        from vllm.engine import arg_utils
    except Exception:  # noqa: BLE001 - not installed, or broken: load says which; the check must still work
        return dict(FALLBACK_OPTION_TYPES)
    namespace = vars(arg_utils)
    kinds = {
        # a field whose default is None takes None whatever its annotation says (max_model_len: int = None)
        f.name: option_kind(f.type, namespace, EXTRA_KINDS.get(f.name, ()) + ((type(None),) if f.default is None else ()))
        for f in dataclasses.fields(arg_utils.EngineArgs)
        if f.init and not f.name.startswith("_") and f.name not in SET_BY_LOAD
    }
    first = [name for name in FALLBACK_OPTION_TYPES if name in kinds]
    return {name: kinds[name] for name in first + [n for n in kinds if n not in first]}


# Annotation names a string annotation may use for the kinds a YAML value can have.
_NAMED_KINDS: dict[str, Any] = {
    "None": type(None),
    "bool": bool,
    "int": int,
    "float": float,
    "str": str,
    "Any": Any,
    "dict": dict,
    "Mapping": dict,
    "list": list,
    "set": list,
    "tuple": list,
    "Sequence": list,
}


def option_kind(annotation: Any, namespace: dict[str, Any], extra: tuple[type, ...] = ()) -> Any:
    """An EngineArgs annotation as a kind the config check knows (``int_engine.models.load``):
    bool, int, float, str, dict, list, None or a union of them, where a ``Literal`` is its
    values' type, an Enum int (its values) or str (vLLM converts a member's name), a vLLM
    config class a dict (vLLM builds it from one), and alternatives no YAML value can be (a
    callable, a class, a torch.dtype, a name this module cannot resolve) are left out; ``Any``
    where nothing is left: vLLM itself then checks the value when the engine starts.
    """
    kinds: list[Any] = []
    for alternative in _alternatives(annotation, namespace):
        kind = _yaml_kind(alternative)
        if kind is Any:
            return Any
        if kind is not None and kind not in kinds:
            kinds.append(kind)
    kinds += [k for k in extra if k not in kinds]
    if not kinds:
        return Any
    return functools.reduce(operator.or_, kinds)  # int | None, as the backends' signatures write it


def _alternatives(annotation: Any, namespace: dict[str, Any]) -> list[Any]:
    """The flattened alternatives of a union, Optional or Literal (a Literal gives its values'
    types); a string annotation (a forward reference) split at its top-level ``|``."""
    if isinstance(annotation, str):
        return [alt for part in _split_union(annotation) for alt in _alternatives(_resolve(part, namespace), namespace)]
    origin = typing.get_origin(annotation)
    if origin is typing.Union or isinstance(annotation, types.UnionType):
        return [alt for arg in typing.get_args(annotation) for alt in _alternatives(arg, namespace)]
    if origin is typing.Literal:
        return [type(value) for value in typing.get_args(annotation)]
    return [annotation]


def _split_union(text: str) -> list[str]:
    """``"dict[str, int | str] | Foo | None"`` -> ``["dict[str, int | str]", "Foo", "None"]``."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "|" and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    return parts + [text[start:].strip()]


def _resolve(name: str, namespace: dict[str, Any]) -> Any:
    """One alternative of a string annotation: a known kind by its base name (``dict[...]`` is
    dict), else the name in vLLM's module, else None (not resolvable here: left out)."""
    base = name.split("[", 1)[0].strip().removeprefix("typing.")
    if base in _NAMED_KINDS:
        return _NAMED_KINDS[base]
    return namespace.get(base)


def _yaml_kind(annotation: Any) -> Any:
    """The config kind of one non-union alternative, or None if no YAML value can be one."""
    if annotation is None:  # an unresolved name
        return None
    if annotation is Any or annotation in (type(None), bool, int, float, str):
        return annotation
    origin = typing.get_origin(annotation) or annotation
    if not isinstance(origin, type):
        return None
    if issubclass(origin, dict) or origin.__name__ == "Mapping":
        return dict
    if issubclass(origin, (list, set, frozenset, tuple)) or origin.__name__ == "Sequence":
        return list
    if issubclass(origin, enum.Enum):
        return int if all(isinstance(member.value, int) for member in origin) else str
    if dataclasses.is_dataclass(origin) or hasattr(origin, "model_fields"):
        return dict  # a vLLM config class: EngineArgs builds it from a dict
    return None
