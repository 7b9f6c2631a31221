"""From the graph's parameter nodes to the model's tensors: matching, grouping, tiling, normalization.

What ppuda's GHN-2 does between its decoders and the model (the GHN-3 keeps the matching and the grouping):

* **Matching** (:func:`layered_parameters`, :func:`match`): a parameter node named ``<module>.weight`` /
  ``<module>.bias`` (any other name gets ``.weight`` appended) is matched once to that module's tensor; a
  norm layer's node (its weight) also carries its bias. Nodes that match nothing (pooling ops, names the
  graph construction mangled) still encode their shape but predict nothing. Model tensors no node matched
  are not predicted (the reference sets those modules' ``weight`` / ``bias`` to ``None``; wsl leaves them
  alone and lists them).
* **Grouping** (:func:`group_key`): each matched tensor gets a key; nodes with the same key are decoded in
  one batch, keys in first-seen order, nodes in graph order. Each channel size ``c`` becomes
  ``n = min(c, max)``, then ``n / 3 * 4`` when divisible by 3, then ``max`` when ``n >= max / 2``. 1-D
  tensors: ``(n_out, 0)`` (``(n_out, -1)`` for the last node: the classification bias); the classification
  weight (second-to-last node): ``(n_out, n_in)``; other 2-D: ``(n_out, n_in, 1, 1)``; 4-D:
  ``(n_out, n_in, kh, kw)`` (spatial sizes as they are).
* **Tiling** (:func:`tile_corner`): the predicted block is cropped from its top-left corner (first output /
  input channels, first rows / columns; 1-D from the first input channel and pixel), then repeated along
  output and input channels to cover the target and cropped to it. Kernels are never tiled spatially: a
  kernel larger than the block (7x7 from 3x3 slots) is an error, as in the reference.
* **Normalization** (:func:`normalize`, ``weight_norm=True``): weights of 2 or more dimensions are scaled by
  ``sqrt(beta / fan_in)`` with ``fan_in = numel / out`` and ``beta = 1`` for depthwise (``in == 1``) or
  ``kh < kw`` kernels, else 2 (layers followed by a ReLU); norm weights become ``2 sigmoid(p / 2)`` (in
  ``[0, 2]``), biases ``tanh(p / 5)`` (in ``[-1, 1]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..hub import HypernetError
from .graph import NORM_TYPES, ParamNode


@dataclass
class Target:
    """A tensor of the model the GHN can predict: ``name`` (the reference's key: ``<module>.weight`` /
    ``<module>.bias``), the owning ``module``, ``is_w`` (weight / bias) and its ``shape``."""

    name: str
    module: nn.Module
    is_w: bool
    shape: tuple[int, ...]

    @property
    def module_name(self) -> str:
        return self.name.rsplit(".", 1)[0]


def layered_parameters(model: nn.Module) -> dict[str, Target]:
    """ppuda's ``named_layered_modules`` for a single-cell model: every module's ``weight`` and ``bias``
    (tensors that are not ``None``), keyed ``<module>.weight`` / ``<module>.bias``, in module order."""
    if getattr(model, "_n_cells", 1) != 1:
        raise HypernetError("ppuda's DeepNets-1M Network (several cells) is not supported; wsl predicts "
                            "parameters for ordinary single-cell modules")
    out: dict[str, Target] = {}
    for mname, m in model.named_modules():
        for attr, is_w in (("weight", True), ("bias", False)):
            t = getattr(m, attr, None)
            if isinstance(t, torch.Tensor):
                out[f"{mname}.{attr}"] = Target(f"{mname}.{attr}", m, is_w, tuple(t.shape))
    return out


@dataclass
class Assignment:
    """A matched node: its ``target``, grouping ``key`` and position ``slot`` in its group's batch."""

    node: ParamNode
    target: Target
    key: tuple[int, ...]
    slot: int


def _fit(n: int, limit: int) -> int:
    n = min(n, limit)
    if n % 3 == 0:
        n = n // 3 * 4  # multiples of 4 suit the decoder
    return limit if n >= limit / 2 else n


def group_key(shape: Sequence[int], max_shape: Sequence[int], *, last_weight: bool, last_bias: bool
              ) -> tuple[int, ...]:
    """The decoding group of a tensor of ``shape`` (module docstring)."""
    s = tuple(int(v) for v in shape)
    if len(s) == 1:
        return (_fit(s[0], max_shape[0]), -1 if last_bias else 0)
    if last_weight:
        return (_fit(s[0], max_shape[0]), _fit(s[1], max_shape[1]))
    if len(s) == 2:
        return (_fit(s[0], max_shape[0]), _fit(s[1], max_shape[1]), 1, 1)
    if len(s) == 4:
        return (_fit(s[0], max_shape[0]), _fit(s[1], max_shape[1]), s[2], s[3])
    raise HypernetError(f"the GHN-2 predicts 1-, 2- and 4-D tensors; got shape {s} (the reference handles 3-D "
                        "ones only for its own positional encodings)")


def match(param_nodes: Sequence[ParamNode], targets: dict[str, Target], max_shape: Sequence[int]
          ) -> tuple[list[Assignment], dict[tuple[int, ...], list[int]], list[tuple[int, ...] | None]]:
    """``(assignments, groups key -> node indices, shape per parameter node)`` (module docstring)."""
    targets = dict(targets)
    assignments, groups, shapes = [], {}, []
    for node in param_nodes:
        name = node.name if node.name.endswith((".weight", ".bias", "in_proj_weight", "in_proj_bias")) \
            else node.name + ".weight"
        target = targets.pop(name, None)
        if target is None:
            shapes.append(node.shape)
            continue
        shapes.append(target.shape)
        key = group_key(target.shape, max_shape, last_weight=node.last_weight, last_bias=node.last_bias)
        group = groups.setdefault(key, [])
        assignments.append(Assignment(node, target, key, len(group)))
        group.append(node.index)
    return assignments, groups, shapes


def tile_corner(w: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Fit a predicted block to ``shape``: crop from the corner, repeat over channels, crop (docstring)."""
    t = tuple(int(v) for v in shape)
    if len(t) == 1 and w.dim() >= 2:
        w = w[:min(t[0], w.shape[0]), 0] if w.dim() == 2 else w[:min(t[0], w.shape[0]), 0, 0, 0]
    elif len(t) == 2 and w.dim() > 2:
        w = w[:min(t[0], w.shape[0]), :min(t[1], w.shape[1]), 0, 0]
    elif len(t) == 4 and w.dim() == 4:
        w = w[tuple(slice(0, min(a, b)) for a, b in zip(t, w.shape))]
    if w.dim() != len(t):
        raise HypernetError(f"a predicted block of shape {tuple(w.shape)} cannot fill a tensor of shape {t} "
                            "(the reference fails here too)")
    if t[0] > w.shape[0]:
        w = w.repeat((math.ceil(t[0] / w.shape[0]),) + (1,) * (w.dim() - 1))[:t[0]]
    if len(t) > 1 and t[1] > w.shape[1]:
        w = w.repeat((1, math.ceil(t[1] / w.shape[1])) + (1,) * (w.dim() - 2))[:, :t[1]]
    w = w[tuple(slice(0, n) for n in t)]
    if tuple(w.shape) != t:
        raise HypernetError(f"the GHN-2 predicted a {tuple(w.shape)} block for a tensor of shape {t}: its "
                            "kernels are never tiled spatially, so kernels larger than its spatial slots "
                            "cannot be predicted (ppuda's GHN-2 fails on this model too)")
    return w


def normalize(p: torch.Tensor, is_w: bool) -> torch.Tensor:
    """The reference's per-tensor scaling of predicted values (module docstring)."""
    if p.dim() > 1:
        sz = p.shape
        if len(sz) > 2 and sz[2] >= 11 and sz[0] == 1:
            raise HypernetError(f"a {tuple(sz)} tensor is treated by the reference as a positional encoding, "
                                "which wsl's GHN-2 does not support")
        beta = 1.0 if len(sz) > 2 and (sz[1] == 1 or sz[2] < sz[3]) else 2.0
        return p * (beta / p[0].numel()) ** 0.5
    return 2 * torch.sigmoid(0.5 * p) if is_w else torch.tanh(0.2 * p)


def is_norm(module: nn.Module) -> bool:
    return type(module) in NORM_TYPES
