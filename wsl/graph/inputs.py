"""Example inputs for tracing when the user gives none: standard guesses, checked before they are used.

A guess comes from the module's HF config or its first layer (an image batch for a CNN, token ids for a
language model, a feature vector or a sequence for a linear / attention stem). Each candidate is checked by a
forward pass on the ``meta`` device (shapes only, no arithmetic; a real forward on zeros where an op has no meta
kernel), so a LeNet whose ``Flatten -> Linear`` needs 28x28 or 32x32 images is still converted without
``example_inputs``, and a model no guess fits gets a :class:`ConversionError` naming the shapes tried and how to
pass an input, instead of its own shape error from deep inside the forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from .builder import ConversionError

IMAGE_SIZES = {1: (256, 1024, 64, 16), 2: (224, 32, 28, 64, 96, 299, 8), 3: (16, 8, 32)}
_CONVS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}


def candidate_inputs(module: nn.Module) -> list[tuple]:
    """Plausible example inputs for ``module``, most likely first (not checked)."""
    cfg = getattr(module, "config", None)
    if cfg is not None and hasattr(cfg, "model_type"):
        main = getattr(module, "main_input_name", "input_ids")
        if main == "pixel_values":
            size = getattr(cfg, "image_size", 224)
            size = size if isinstance(size, int) else size[0]
            return [(torch.zeros(1, getattr(cfg, "num_channels", 3), size, size),)]
        return [(torch.zeros(1, 8, dtype=torch.long),)]
    for m in module.modules():
        if isinstance(m, nn.Embedding):
            return [(torch.zeros(1, 8, dtype=torch.long),)]
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nd = _CONVS.get(type(m), len(m.kernel_size))
            return [(torch.zeros((1, m.in_channels) + (size,) * nd),) for size in IMAGE_SIZES[nd]]
        if isinstance(m, nn.Linear):
            return [(torch.zeros(1, m.in_features),), (torch.zeros(1, 4, m.in_features),)]
        if isinstance(m, nn.MultiheadAttention):
            return [(torch.zeros(1, 4, m.embed_dim),)]
    return []


def _forward(module: nn.Module, args: tuple, device: str | None) -> None:
    if device == "meta":
        state = {k: torch.empty_like(v, device="meta") for k, v in module.state_dict(keep_vars=True).items()}
        args = tree_map(lambda t: torch.empty_like(t, device="meta") if isinstance(t, Tensor) else t, args)
        torch.func.functional_call(module, state, args, strict=False, tie_weights=True)
    else:
        module(*args)


def runs(module: nn.Module, args: tuple) -> Exception | None:
    """``None`` when ``module(*args)`` runs (checked on meta tensors, else for real), else the error it raised.
    The module is evaluated in eval mode and left in the modes it had."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        with torch.no_grad():
            try:
                _forward(module, args, "meta")
                return None
            except Exception:  # noqa: BLE001  no meta kernel, data-dependent code, or a real shape error
                pass
            try:
                _forward(module, args, None)
                return None
            except Exception as e:  # noqa: BLE001  reported to the user with the shapes tried
                return e
    finally:
        for m, t in modes.items():
            m.training = t


def _describe(args: tuple) -> str:
    parts = [f"{tuple(t.shape)}" + ("" if t.is_floating_point() else f" {str(t.dtype).replace('torch.', '')}")
             for t in args if isinstance(t, Tensor)]
    return ", ".join(parts) if len(parts) != 1 else parts[0]


def default_inputs(module: nn.Module) -> tuple:
    """The first of :func:`candidate_inputs` that ``module`` runs on; a :class:`ConversionError` naming the
    shapes tried (and the model's own error for the first) when none does."""
    name = type(module).__name__
    candidates = candidate_inputs(module)
    hint = ("pass example_inputs=(torch.randn(...),) to wsl.to_graph / wsl.trace, or --input-shape N,C,H,W "
            "on the command line")
    if not candidates:
        raise ConversionError(f"cannot guess an example input for {name} (no Linear, convolution, embedding or "
                              f"attention layer to read a shape from): {hint}")
    first: Exception | None = None
    for args in candidates:
        err = runs(module, args)
        if err is None:
            return args
        first = first or err
    tried = "; ".join(_describe(a) for a in candidates)
    cause = str(first).strip().splitlines()[0] if first is not None and str(first).strip() else type(first).__name__
    raise ConversionError(f"cannot guess an example input for {name}: none of the shapes tried runs ({tried}); "
                          f"with the first, the model raised {type(first).__name__}: {cause[:300]}. "
                          f"{hint[0].upper()}{hint[1:]}")


def as_inputs(example_inputs: Any, module: nn.Module) -> tuple[tuple, dict]:
    """``(args, kwargs)`` from a tensor, a tuple of positional inputs, a dict of keyword inputs, or ``None``
    (guessed by :func:`default_inputs`)."""
    if example_inputs is None:
        example_inputs = default_inputs(module)
    if isinstance(example_inputs, Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    return tuple(example_inputs), {}
