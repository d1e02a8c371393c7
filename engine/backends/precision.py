"""Half precision with float32 islands: the layers that lose too much in float16/bfloat16 run in
float32 inside an otherwise half-precision model.

LayerNorm (and SAM's hand-written LayerNorm2d) compute a variance: in bfloat16 (8 bits of
mantissa) the mean of squares of activations of ~1e2 loses the small differences that the
normalisation then magnifies. Detection heads turn features into logits and box coordinates
that are thresholded and compared, where a bfloat16 step of 0.4% moves boxes by pixels. Autocast
does this on CUDA for some ops (softmax, layer_norm) but not on CPU and not for hand-written norms,
so the islands are explicit: the module's parameters stay float32, its floating inputs are cast up
and its outputs cast back to the dtype its input had.
"""

from __future__ import annotations

from typing import Any

import torch


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def _enter(module: torch.nn.Module, args: tuple) -> tuple:
    first = next((a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()), None)
    module._island_dtype = first.dtype if first is not None else torch.float32
    return _cast(args, torch.float32)


def _leave(module: torch.nn.Module, args: tuple, output: Any) -> Any:
    return _cast(output, module._island_dtype)


def float32_islands(model: torch.nn.Module, kinds: tuple[type, ...] = (), names: tuple[str, ...] = ()) -> list[str]:
    """Make every submodule of ``model`` that is an instance of ``kinds``, or whose qualified name
    is in ``names``, run in float32 (see the module docstring). Returns the islands' names."""
    islands = []
    for name, module in model.named_modules():
        if name and (isinstance(module, kinds) or name in names):
            module.float()
            module.register_forward_pre_hook(_enter)
            module.register_forward_hook(_leave)
            islands.append(name)
    # an island inside an island converts twice: harmless, but keep the list to the outermost
    return [n for n in islands if not any(n.startswith(o + ".") for o in islands if o != n)]
