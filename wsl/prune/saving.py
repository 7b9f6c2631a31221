"""Save and reload pruned networks without pickling modules.

A pruned network has a different architecture from the one its constructor builds, so ``torch.save(model)``
(a pickle that runs code when loaded) is the usual way people store it. Here a pruned network is stored as

* its **state_dict** — ``.safetensors``, or a ``.pt`` / ``.pth`` of plain tensors that ``torch.load(...,
  weights_only=True)`` reads — and
* a **JSON sidecar** (``<output>.json``: ``pruned.safetensors`` -> ``pruned.json``) with the original
  architecture string (``--arch``), the example input shape, every tensor's shape, every layer's widths and
  the pruning report.

:func:`load_pruned` builds the original architecture, shrinks each layer to the stored shapes (replacing its
parameters / buffers and the width attributes of convolutions, linear and normalization layers) and loads the
weights strictly; no pickled code runs. Layers whose forward reads widths from elsewhere (custom attributes)
are outside what this resizing knows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

FORMAT = "wsl-pruned/1"
SUFFIXES = (".safetensors", ".pt", ".pth")


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar next to a pruned checkpoint: ``pruned.safetensors`` -> ``pruned.json``."""
    return Path(path).with_suffix(".json")


def save_pruned(model: nn.Module, path: str | Path, *, arch: str | None = None,
                input_shape: Sequence[int] | None = None, report: Any = None,
                extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model``'s state_dict to ``path`` and the sidecar; returns the sidecar's path.

    ``arch``: how to build the *unpruned* architecture (``wsl.arch.build_arch`` syntax, e.g.
    ``"module:wsl.data.generate.cnn_arch:digits_cnn(depth=2)"``); without it, :func:`load_pruned` needs the
    module passed in. ``report``: a :class:`~wsl.prune.PruneReport` (stored as JSON).
    """
    from .structured import layer_widths

    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ValueError(f"pruned checkpoint {path} must end in {', '.join(SUFFIXES)}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(_unshare(state), str(path))
    else:
        torch.save(state, path)
    info = {"format": FORMAT, "arch": arch, "input_shape": list(input_shape) if input_shape else None,
            "shapes": {k: list(v.shape) for k, v in state.items()}, "widths": layer_widths(model),
            "report": report.to_dict() if hasattr(report, "to_dict") else report, **(extra or {})}
    side = sidecar_path(path)
    side.write_text(json.dumps(info, indent=1))
    return side


def _unshare(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """safetensors refuses tensors sharing storage (tied weights): give each its own copy."""
    seen: set[int] = set()
    out = {}
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        out[k] = v.clone() if ptr in seen else v
        if ptr != -1:
            seen.add(ptr)
    return out


def resize_(model: nn.Module, shapes: Mapping[str, Sequence[int]]) -> nn.Module:
    """Shrink (or grow) ``model`` in place so its state_dict tensors have ``shapes``; values are left
    uninitialized (load a state_dict next). Width attributes of standard layers follow the new shapes."""
    modules = dict(model.named_modules())
    for key, shape in shapes.items():
        name, _, attr = key.rpartition(".")
        m = modules.get(name)
        if m is None:
            raise KeyError(f"pruned checkpoint names {key!r}, which the architecture has no module for")
        shape = tuple(int(s) for s in shape)
        if attr in m._parameters and m._parameters[attr] is not None:
            old = m._parameters[attr]
            if tuple(old.shape) != shape:
                m._parameters[attr] = nn.Parameter(torch.empty(shape, dtype=old.dtype, device=old.device),
                                                   requires_grad=old.requires_grad)
        elif attr in m._buffers and m._buffers[attr] is not None:
            old = m._buffers[attr]
            if tuple(old.shape) != shape:
                m._buffers[attr] = torch.empty(shape, dtype=old.dtype, device=old.device)
        else:
            raise KeyError(f"pruned checkpoint names {key!r}, which is not a parameter or buffer of the architecture")
    for m in model.modules():
        _fix_widths(m)
    return model


def _fix_widths(m: nn.Module) -> None:
    if isinstance(m, nn.modules.conv._ConvNd):
        w = m.weight  # [out, in / groups, ...], transposed: [in, out / groups, ...]
        depthwise = m.groups > 1 and m.groups == m.in_channels
        if m.transposed:
            m.in_channels = w.shape[0]
            if depthwise:
                m.groups = m.in_channels
            m.out_channels = w.shape[1] * m.groups
        else:
            multiplier = m.out_channels // m.groups
            m.out_channels = w.shape[0]
            if depthwise:
                m.groups = m.out_channels // multiplier
            m.in_channels = w.shape[1] * m.groups
    elif isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        ref = m.weight if m.weight is not None else m.running_mean
        if ref is not None:
            m.num_features = ref.shape[0]
    elif isinstance(m, nn.GroupNorm) and m.weight is not None:
        m.num_channels = m.weight.shape[0]
    elif isinstance(m, nn.LayerNorm) and m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)


def load_pruned(path: str | Path, model: nn.Module | str | None = None) -> nn.Module:
    """Rebuild a network saved by :func:`save_pruned` (or ``wsl prune``) without unpickling code.

    ``model``: the unpruned architecture (a module — a copy is resized — or an ``--arch`` string); default the
    ``arch`` recorded in the sidecar. Returns the resized module in eval mode, weights loaded strictly.
    """
    from ..io import load_checkpoint

    path = Path(path)
    side = sidecar_path(path)
    if not side.is_file():
        raise FileNotFoundError(f"{path}: no sidecar {side.name} next to it (written by wsl prune / "
                                f"wsl.prune.save_pruned); it records the architecture and layer widths")
    info = json.loads(side.read_text())
    if info.get("format") != FORMAT:
        raise ValueError(f"{side}: not a wsl pruned-model sidecar (format {info.get('format')!r}, expected {FORMAT})")
    if model is None:
        model = info.get("arch")
        if not model:
            raise ValueError(f"{side} records no architecture: pass the unpruned module to load_pruned(path, model)")
    if isinstance(model, str):
        from ..arch import build_arch

        model = build_arch(model)
    else:
        import copy

        model = copy.deepcopy(model)
    state = load_checkpoint(str(path))
    shapes = {k: list(v.shape) for k, v in state.items()}
    if shapes != info["shapes"]:
        raise ValueError(f"{path} does not match its sidecar {side.name} (tensor shapes differ)")
    resize_(model, shapes)
    model.load_state_dict(state, strict=True)
    return model.eval()
