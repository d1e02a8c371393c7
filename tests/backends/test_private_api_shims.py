"""Pinned libraries' private names in the package (engine/, kernels/, bench/): PRIVATE_NAMES lists
every one and the only files it may appear in (its one guarded shim); for the backends' and
kernels' libraries, the installed library is the version constraints.txt pins, and the shim fails
loudly, naming the name and the version, when the name is gone.

- open_clip: ``VisionTransformer._embeds`` / ``_pool`` (no public equivalent), only in
  ``backends/open_clip_shim.py``, checked at load.
- transformers: the KV-cache layer protocol ``SharedPrefixCache`` subclasses (``cache_utils``'s
  ``Cache(layers=)``, ``DynamicLayer.lazy_initialization`` ...), only in ``backends/hf_cache_shim.py``,
  checked at load with ``shared_prefix``.
- diffusers ``_encode_vae_image``, Triton ``tl.standard._elementwise_max`` / ``_elementwise_min`` /
  ``_sum_combine``, segment-anything ``_pe_encoding``: nowhere, replaced by public APIs
  (``masked_image_latents=`` / ``latents=``, our own ``@triton.jit`` combine functions,
  ``forward_with_coords``), whose presence is pinned here too.
- Ray: ``ray.init(_temp_dir=, _node_ip_address=)`` and
  ``ray.serve._private.replica.add_port_to_grpc_server``, only in ``service/ray_runtime.py``; its
  version and behaviour tests are tests/service/test_ray_runtime.py.
- uvicorn: its HTTP protocols' ``cycle`` and the cycle's ``response_complete`` / ``more_body``
  (``service/server.header_limited`` bounds the headers' time and size; uvicorn has no setting
  for either), only in ``service/server.py``; pinned below.
- starlette ``Request._body``: nowhere (the multipart form is parsed from a public
  ``Request(scope, receive)``).
"""

from __future__ import annotations

import inspect
import re
from importlib import metadata
from pathlib import Path

import pytest
import torch
from pins import pinned

from int_engine.backends import hf_cache_shim, open_clip_shim, private_api
from int_engine.backends.private_api import PrivateAPIError
from int_engine.errors import ModelLoadError

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("engine", "kernels", "bench")  # the package's source folders
OPEN_CLIP_SHIM = "engine/backends/open_clip_shim.py"
HF_CACHE_SHIM = "engine/backends/hf_cache_shim.py"
RAY_SHIM = "engine/service/ray_runtime.py"
UVICORN_SHIM = "engine/service/server.py"
# Private name (a regular expression over the source text) -> the only files that may hold it.
# Add an entry for every private name of another library the engine comes to use, with its shim.
PRIVATE_NAMES: dict[str, set[str]] = {
    r"\b_encode_vae_image\b": set(),  # diffusers: masked_image_latents= / latents= instead
    r"\b_elementwise_max\b": set(),  # triton.language.standard: our own @triton.jit combine functions
    r"\b_elementwise_min\b": set(),
    r"\b_sum_combine\b": set(),
    r"\b_pe_encoding\b": set(),  # segment-anything: PositionEmbeddingRandom.forward_with_coords
    r"\b_embeds\b": {OPEN_CLIP_SHIM},  # open_clip VisionTransformer
    r"\b_pool\b": {OPEN_CLIP_SHIM},
    r"\bcache_utils\b": {HF_CACHE_SHIM},  # transformers' KV-cache internals
    r"\bDynamicLayer\b": {HF_CACHE_SHIM},
    r"\blazy_initialization\b": {HF_CACHE_SHIM},
    r"\b_temp_dir\b": {RAY_SHIM},  # ray.init's private keywords
    r"\b_node_ip_address\b": {RAY_SHIM},
    r"\badd_port_to_grpc_server\b": {RAY_SHIM},  # ray.serve._private.replica
    r"\._body\b": set(),  # starlette's Request._body
    r"\.cycle\b": {UVICORN_SHIM},  # uvicorn's HTTP protocols: the request being answered
    r"\.response_complete\b": {UVICORN_SHIM},
    r"\.more_body\b": {UVICORN_SHIM},
}


def source_files() -> list[Path]:
    return sorted(p for folder in SCANNED for p in (ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("pattern", list(PRIVATE_NAMES))
def test_each_private_name_lives_only_in_its_shim(pattern):
    found = {str(p.relative_to(ROOT)) for p in source_files() if re.search(pattern, p.read_text(encoding="utf-8"))}
    allowed = PRIVATE_NAMES[pattern]
    assert found <= allowed, f"{pattern} outside its shim: {sorted(found - allowed)} (allowed: {sorted(allowed) or 'nowhere'})"
    assert found == allowed, f"{pattern} no longer in {sorted(allowed - found)}: update PRIVATE_NAMES"


@pytest.mark.parametrize("dist", sorted(private_api.PINNED))
def test_each_shimmed_library_is_the_version_constraints_txt_pins(dist):
    installed = metadata.version(dist)
    assert private_api.PINNED[dist] == pinned(dist), f"private_api.PINNED[{dist!r}] differs from constraints.txt"
    assert installed == pinned(dist), (
        f"{dist} {installed} is installed, constraints.txt pins {pinned(dist)}: check each private name its shim "
        "uses still exists and means the same (this file), then move both pins"
    )
    assert private_api.installed_version(dist) == installed


def test_the_error_names_the_symbol_and_both_versions():
    err = private_api.missing("open_clip_torch", "open_clip.transformer.VisionTransformer._pool")
    message = str(err)
    assert isinstance(err, PrivateAPIError)
    assert (
        f"open_clip_torch {metadata.version('open_clip_torch')} has no open_clip.transformer.VisionTransformer._pool" in message
    )
    assert "open_clip_torch==3.3.0" in message
    assert private_api.installed_version("no-such-distribution-int-engine") == "not installed"


# ---- open_clip ------------------------------------------------------------------------------


def resolve(dotted: str):
    """The object a dotted name such as ``open_clip.transformer.VisionTransformer._pool`` names."""
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def tiny_vit():
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(image_size=16, patch_size=8, width=16, layers=2, heads=2, mlp_ratio=2.0, output_dim=8).eval()


@pytest.mark.parametrize("symbol", open_clip_shim.SYMBOLS)
def test_open_clip_still_has_each_private_symbol(symbol):
    assert callable(resolve(symbol)), f"open_clip_torch {metadata.version('open_clip_torch')}: {symbol} is gone"


def test_open_clip_forward_is_still_embeds_blocks_pool_proj():
    """What surgery_forward relies on: the tower's forward is the shim's two steps around the blocks."""
    visual = tiny_vit()
    open_clip_shim.check_vit(visual)
    pixels = torch.randn(3, 3, 16, 16)
    with torch.inference_mode():
        x = open_clip_shim.vit_embeds(visual, pixels)
        assert x.shape == (3, 1 + 2 * 2, 16)
        pooled, _ = open_clip_shim.vit_pool(visual, visual.transformer(x))
        torch.testing.assert_close(pooled @ visual.proj, visual(pixels))


def test_open_clip_shim_fails_loudly_once_a_symbol_is_gone(monkeypatch, tiny_model):
    from open_clip.transformer import VisionTransformer

    from int_engine.backends.clip_open import OpenClipModel

    clip_dir = tiny_model("clip")
    visual = tiny_vit()
    monkeypatch.delattr(VisionTransformer, "_pool")
    version = re.escape(metadata.version("open_clip_torch"))
    with pytest.raises(
        PrivateAPIError, match=rf"open_clip_torch {version} has no open_clip\.transformer\.VisionTransformer\._pool"
    ):
        open_clip_shim.check_vit(visual)
    with pytest.raises(PrivateAPIError, match=r"VisionTransformer\._pool"):
        open_clip_shim.vit_pool(visual, torch.zeros(1, 5, 16))
    with pytest.raises(ModelLoadError, match=rf"clip: cannot load .*{re.escape(str(clip_dir))}.*VisionTransformer\._pool"):
        OpenClipModel.load(clip_dir)  # at load, not in the first forward pass


# ---- transformers -----------------------------------------------------------------------------


def test_transformers_still_has_the_cache_api_the_shim_uses():
    from transformers.cache_utils import Cache, DynamicLayer

    hf_cache_shim.check_cache_api()
    assert "layers" in inspect.signature(Cache.__init__).parameters
    for symbol in hf_cache_shim.SYMBOLS:
        owner, _, member = symbol.split("(")[0].rpartition(".")
        cls = {"transformers.cache_utils.Cache": Cache, "transformers.cache_utils.DynamicLayer": DynamicLayer}[owner]
        assert member == "layers" or hasattr(cls, member), f"transformers {metadata.version('transformers')}: {symbol} is gone"
    layer = DynamicLayer()
    keys = torch.zeros(2, 1, 3, 4)
    layer.lazy_initialization(keys, keys)
    assert layer.get_seq_length() == 0 and layer.is_sliding is False
    layer.keys = keys
    assert layer.get_seq_length() == 3 and layer.get_mask_sizes(2) == (5, 0)  # what SharedPrefixCache's mask reads


def test_transformers_shim_fails_loudly_once_the_api_is_gone(monkeypatch, tmp_path):
    from transformers.cache_utils import Cache

    from int_engine.backends.vlm_hf import HFLlavaVLM

    version = re.escape(metadata.version("transformers"))
    monkeypatch.setattr(hf_cache_shim, "DynamicLayer", type("DynamicLayer", (), {}))
    with pytest.raises(
        PrivateAPIError, match=rf"transformers {version} has no transformers\.cache_utils\.DynamicLayer\.lazy_initialization"
    ):
        hf_cache_shim.check_cache_api()
    monkeypatch.undo()
    monkeypatch.setattr(Cache, "__init__", lambda self, *args: None)
    with pytest.raises(PrivateAPIError, match=r"Cache\.__init__\(layers=\.\.\.\)"):
        hf_cache_shim.check_cache_api()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        (tmp_path / name).write_text("{}")
    with pytest.raises(ModelLoadError, match=rf"vlm: cannot load .*{re.escape(str(tmp_path))} with shared_prefix: transformers"):
        HFLlavaVLM.load(tmp_path)  # checked before any weight is read


# ---- the public APIs that replaced private names ------------------------------------------------


def test_the_public_replacements_exist():
    from diffusers import StableDiffusionInpaintPipeline
    from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom

    params = inspect.signature(StableDiffusionInpaintPipeline.__call__).parameters
    assert {"masked_image_latents", "latents", "generator"} <= set(params)  # inpaint_sd.prepared_latents
    assert list(inspect.signature(PositionEmbeddingRandom.forward_with_coords).parameters) == [
        "self",
        "coords_input",
        "image_size",
    ]
    assert pinned("diffusers") == metadata.version("diffusers") and pinned("segment-anything") == metadata.version(
        "segment-anything"
    )


def test_the_kernel_reduces_with_its_own_combine_functions():
    import importlib

    mf = importlib.import_module("int_engine.kernels.mine_fused")
    if mf.triton is None:
        pytest.skip("triton is not installed")
    assert {f.fn.__module__ for f in (mf._MAX, mf._MIN, mf._SUM)} == {"int_engine.kernels.mine_fused"}


def test_uvicorn_is_the_pinned_version_with_the_internals_header_limited_uses():
    from uvicorn.protocols.http import h11_impl, httptools_impl

    assert metadata.version("uvicorn") == pinned("uvicorn"), "uvicorn moved: check service/server.header_limited"
    for module, protocol in ((h11_impl, "H11Protocol"), (httptools_impl, "HttpToolsProtocol")):
        cycle = inspect.signature(module.RequestResponseCycle.__init__).parameters
        source = inspect.getsource(module.RequestResponseCycle) + inspect.getsource(getattr(module, protocol))
        assert "self.cycle" in source, f"{module.__name__}.{protocol} has no .cycle"
        assert "self.response_complete" in source and "self.more_body" in source, module.__name__
        assert "scope" in cycle, module.__name__
