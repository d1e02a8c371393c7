"""transformers' KV-cache internals that shared-prefix scoring (``llava_prefix``) builds on: the
only file that names them (``private_api``).

``SharedPrefixCache`` subclasses ``transformers.cache_utils.Cache`` and ``DynamicLayer`` and relies
on their per-layer protocol as transformers 5.19 has it: ``Cache(layers=...)``; a layer's
``lazy_initialization``, ``keys`` / ``values``, ``is_sliding``; the attention calling
``layer.update(key_states, value_states, ...)`` for the keys/values it reads and
``get_seq_length`` / ``get_mask_sizes`` for the mask. That protocol is documented but has changed
between releases (the layers arrived in 4.56), so it is checked by ``check_cache_api`` when the
backend loads, and pinned by tests/backends/test_private_api_shims.py.
"""

from __future__ import annotations

import inspect

import torch

from .private_api import missing

DIST = "transformers"

try:
    from transformers.cache_utils import Cache, DynamicLayer
except ImportError:  # moved or renamed: say so by name, whichever backend imports this first
    raise missing(DIST, "transformers.cache_utils.Cache / DynamicLayer") from None

# The internals used here, as tests/backends/test_private_api_shims.py checks them on the installed version.
SYMBOLS = (
    "transformers.cache_utils.Cache.__init__(layers=...)",
    "transformers.cache_utils.Cache.layers",
    "transformers.cache_utils.DynamicLayer.lazy_initialization",
    "transformers.cache_utils.DynamicLayer.update",
    "transformers.cache_utils.DynamicLayer.get_seq_length",
    "transformers.cache_utils.DynamicLayer.get_mask_sizes",
    "transformers.cache_utils.DynamicLayer.is_sliding",
)
_LAYER_MEMBERS = ("lazy_initialization", "update", "get_seq_length", "get_mask_sizes", "is_sliding")


def check_cache_api() -> None:
    """Raise ``PrivateAPIError`` when the installed transformers lacks a piece of the cache API
    ``SharedPrefixCache`` uses (``SYMBOLS``); the backend calls it at load."""
    if "layers" not in inspect.signature(Cache.__init__).parameters:
        raise missing(DIST, "transformers.cache_utils.Cache.__init__(layers=...)")
    for name in _LAYER_MEMBERS:
        if not hasattr(DynamicLayer, name):
            raise missing(DIST, f"transformers.cache_utils.DynamicLayer.{name}")


class _PrefixLayer(DynamicLayer):
    """One layer of ``SharedPrefixCache``: the prefixes' keys/values, read, never written."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, spans: list[tuple[int, slice]]) -> None:
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values, self.spans = keys, values, spans

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return _expand(self.keys, key_states, self.spans), _expand(self.values, value_states, self.spans)


class SharedPrefixCache(Cache):
    """Read-only KV cache of k prefixes for a forward of rows that continue them: ``spans`` is
    [(prefix index, slice of the rows that continue it)], the rows grouped by prefix.

    Each layer's ``update`` returns the keys/values its attention reads, [R, heads, P + q, d]:
    the prefix's P positions broadcast into each of its rows, then the rows' own q, built for
    that layer only and stored nowhere, so the cache stays the prefixes' ([k, heads, P, d] per
    layer) and nothing of the rows outlives the forward. Built on transformers' cache API
    (per-layer ``keys`` / ``values``; ``get_seq_length`` and ``get_mask_sizes`` give the mask
    P + q keys, the queries' offset P)."""

    def __init__(self, prefix: Cache, spans: list[tuple[int, slice]]) -> None:
        if any(getattr(layer, "is_sliding", False) for layer in prefix.layers):
            raise ValueError("shared-prefix scoring needs full-attention layers (set shared_prefix: false)")
        super().__init__(layers=[_PrefixLayer(layer.keys, layer.values, spans) for layer in prefix.layers])


def _expand(prefix: torch.Tensor, new: torch.Tensor, spans: list[tuple[int, slice]]) -> torch.Tensor:
    """[R, h, P + q, d]: each row's prefix ([k, h, P, d] at its index) then its own [R, h, q, d]."""
    rows, heads, q, dim = new.shape
    p = prefix.shape[-2]
    out = new.new_empty((rows, heads, p + q, dim))
    out[:, :, p:] = new
    for i, span in spans:
        out[span, :, :p] = prefix[i]
    return out
