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
* **GHN-3** (ghn3's ``GHN3``): the matching also reaches ``MultiheadAttention.in_proj_weight / in_proj_bias``
  and torchvision's ViT ``pos_embedding`` (:func:`layered_parameters3`), a tensor may be matched by more than
  one node (nothing is popped; the last write wins), 3-D ``(1, t, c)`` tensors group as ``(1, c, s, s)`` with
  ``s = floor(sqrt(t))`` (:func:`group_key3`), and :func:`tile_centred` crops kernels from the block's
  centre (see there).
* **Normalization** (:func:`normalize`, ``weight_norm=True``): weights of 2 or more dimensions are scaled by
  ``sqrt(beta / fan_in)`` with ``fan_in = numel / out`` and ``beta = 1`` for depthwise (``in == 1``) or
  ``kh < kw`` kernels, else 2 (layers followed by a ReLU); norm weights become ``2 sigmoid(p / 2)`` (in
  ``[0, 2]``), biases ``tanh(p / 5)`` (in ``[-1, 1]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

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


def normalize(p: torch.Tensor, is_w: bool, *, positional: bool = False) -> torch.Tensor:
    """The reference's per-tensor scaling of predicted values (module docstring). A tensor of 3 or more
    dimensions with one output and a third size >= 11 is a positional encoding to the reference: the GHN-3
    (``positional=True``) leaves it unscaled, the GHN-2 does not support it."""
    if p.dim() > 1:
        sz = p.shape
        if len(sz) > 2 and sz[2] >= 11 and sz[0] == 1:
            if positional:
                return p
            raise HypernetError(f"a {tuple(sz)} tensor is treated by the reference as a positional encoding, "
                                "which wsl's GHN-2 does not support")
        beta = 1.0 if len(sz) > 2 and (sz[1] == 1 or sz[2] < sz[3]) else 2.0
        return p * (beta / p[0].numel()) ** 0.5
    return 2 * torch.sigmoid(0.5 * p) if is_w else torch.tanh(0.2 * p)


def is_norm(module: nn.Module) -> bool:
    return type(module) in NORM_TYPES


# ------------------------------------------------------------------------------------------- GHN-3
@dataclass
class Target3:
    """A tensor the GHN-3 can predict: ``key`` (the reference's name, e.g. ``encoder.pos_embedding.weight``),
    ``module`` (its name ``prefix``), the attribute it is written to, whether it is a weight, its shape."""

    key: str
    module: nn.Module = field(repr=False)
    prefix: str
    attr: str
    is_w: bool
    shape: tuple[int, ...]

    def param(self, attr: str | None = None) -> str:
        """The model's parameter name of ``attr`` (default: this tensor's) of the module."""
        a = attr or self.attr
        return f"{self.prefix}.{a}" if self.prefix else a


def layered_parameters3(model: nn.Module) -> dict[str, Target3]:
    """ppuda's ``named_layered_modules`` as ghn3 uses it: per module, one weight (``layer_scale``, else
    ``in_proj_weight``, else ``pos_embedding``, else ``weight``; keys ``.layer_scale``, ``.in_proj_weight``,
    ``.pos_embedding.weight``, ``.weight``) and one bias (``in_proj_bias``, else ``bias``). Keys drop a leading
    ``module.``, and a model with a ``module`` submodule is read through it (the reference's handling of
    ``DataParallel``)."""
    if getattr(model, "_n_cells", 1) != 1:
        raise HypernetError("ppuda's DeepNets-1M Network (several cells) is not supported; wsl predicts "
                            "parameters for ordinary single-cell modules")
    out: dict[str, Target3] = {}
    wrapped = isinstance(getattr(model, "module", None), nn.Module)  # DataParallel & co: the reference unwraps
    for mname, m in (model.module if wrapped else model).named_modules():
        prefix = ("module." if wrapped else "") + mname  # the name in the model
        mname = mname.split(".", 1)[1] if mname.startswith("module.") else mname  # the name in the key
        w_attr = next((a for a in ("layer_scale", "in_proj_weight", "pos_embedding", "weight")
                       if isinstance(getattr(m, a, None), torch.Tensor)), None)
        b_attr = next((a for a in ("in_proj_bias", "bias") if isinstance(getattr(m, a, None), torch.Tensor)), None)
        for attr, is_w in ((w_attr, True), (b_attr, False)):
            if attr is not None:
                key = mname + {"layer_scale": ".layer_scale", "in_proj_weight": ".in_proj_weight",
                               "pos_embedding": ".pos_embedding.weight", "in_proj_bias": ".in_proj_bias"}.get(
                                   attr, "." + attr)
                out[key] = Target3(key, m, prefix, attr, is_w, tuple(getattr(m, attr).shape))
    return out


def group_key3(shape: Sequence[int], max_shape: Sequence[int], *, last_weight: bool, last_bias: bool
               ) -> tuple[int, ...]:
    """:func:`group_key`, plus the GHN-3's 3-D tensors: ``(1, t, c)`` -> ``(1, c, s, s)``, other 3-D ones
    fitted per dimension."""
    s = tuple(int(v) for v in shape)
    if len(s) == 3 and not last_weight:
        if s[0] == 1 and min(s[1:]) > 1:
            side = math.floor(s[1] ** 0.5)
            return (1, s[2], side, side)
        return tuple(_fit(v, m) for v, m in zip(s, max_shape[:3]))
    return group_key(s, max_shape, last_weight=last_weight, last_bias=last_bias)


def match3(param_nodes: Sequence[ParamNode], targets: dict[str, Target3], max_shape: Sequence[int]
           ) -> tuple[list[tuple[ParamNode, Target3, tuple[int, ...], int]], dict[tuple[int, ...], list[int]],
                      list[tuple[int, ...] | None]]:
    """``(assignments (node, target, key, slot), groups key -> node indices, shape per parameter node)``: the
    GHN-3's matching (names as :func:`match`; DeepNets-1M's ``to_qkv`` / ``to_out`` also tried as
    ``attn.to_qkv`` / ``attn.to_out``)."""
    assignments, groups, shapes = [], {}, []
    for node in param_nodes:
        name = node.name if node.name.endswith((".weight", ".bias", "in_proj_weight", "in_proj_bias")) \
            else node.name + ".weight"
        target = targets.get(name) or targets.get(name.replace("to_qkv", "attn.to_qkv").replace("to_out", "attn.to_out"))
        if target is None:
            shapes.append(node.shape)
            continue
        shapes.append(target.shape)
        key = group_key3(target.shape, max_shape, last_weight=node.last_weight, last_bias=node.last_bias)
        group = groups.setdefault(key, [])
        assignments.append((node, target, key, len(group)))
        group.append(node.index)
    return assignments, groups, shapes


def _centre(n: int, size: int) -> slice:
    """The reference's centred window of ``size`` in an axis of ``n`` (Python slicing, so a window larger
    than the axis wraps its start around, as there)."""
    c = n // 2
    return slice(c - size // 2, c + math.ceil(size / 2))


def tile_centred(w: torch.Tensor, shape: Sequence[int], *, corner: bool = False,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Fit a predicted block to ``shape`` as ghn3's ``_tile_params`` does: crop (kernels from the spatial
    centre, or the corner with ``corner=True`` (a GHN-2); 1-D and 2-D targets from a 4-D block take its centre
    pixel), repeat over output and input channels, crop again. A positional embedding ``(1, t, c)`` predicted
    as ``(1, c, s, s)`` is flattened to ``(1, s^2, c)`` and gets a class token drawn from N(0, 0.02^2) with
    ``generator`` (the reference draws from torch's global generator) in front."""
    t, s = tuple(int(v) for v in shape), tuple(w.shape)
    if len(t) == 1:
        w = w[:min(t[0], s[0])] if len(s) == 1 else w[:min(t[0], s[0]), 0] if len(s) == 2 else \
            w[:min(t[0], s[0]), 0, s[-2] // 2, s[-1] // 2]
    elif len(t) == 2:
        if len(s) == 2:
            w = w[:min(t[0], s[0]), :min(t[1], s[1])]
        elif len(s) > 2:
            w = w[:min(t[0], s[0]), :min(t[1], s[1]), s[-2] // 2, s[-1] // 2]
    elif len(t) == 3:
        if len(s) == 3:
            w = w[:min(t[0], s[0]), :min(t[1], s[1]), :min(t[2], s[2])]
        elif len(s) > 3:
            w = w.reshape(*s[:2], -1).permute(0, 2, 1)
            w = w[:min(t[0], w.shape[0]), :min(t[1], w.shape[1]), :min(t[2], w.shape[2])]
            dev = w.device if generator is None else generator.device
            token = torch.normal(0.0, 0.02, size=(1, 1, w.shape[2]), generator=generator, device=dev).to(w.device)
            w = torch.cat((token, w), dim=1)
    elif len(s) > 2:
        h, v = (min(t[2], s[2]), min(t[3], s[3]) if len(s) > 3 else 1)
        w = w[:min(t[0], s[0]), :min(t[1], s[1]), :h, :v] if corner else \
            w[:min(t[0], s[0]), :min(t[1], s[1]), _centre(s[-2], h), _centre(s[-1], v)]
    else:
        w = w[:min(t[0], s[0]), :min(t[1], s[1])].unsqueeze(2).unsqueeze(3)
    s = tuple(w.shape)
    if len(s) != len(t) or (len(t) == 3 and (t[0] > s[0] or t[1] > s[1])):  # (the reference's 3-D tiling breaks)
        raise HypernetError(f"a predicted block of shape {tuple(w.shape)} cannot fill a tensor of shape {t} "
                            "(the reference fails here too)")
    if t[0] > s[0]:
        w = w.repeat((math.ceil(t[0] / s[0]),) + (1,) * (w.dim() - 1))[:t[0]]
    if len(t) > 1 and t[1] > s[1]:
        w = w.repeat((1, math.ceil(t[1] / s[1])) + (1,) * (w.dim() - 2))[:, :t[1]]
    elif len(t) == 3 and t[2] > s[2]:
        w = w.repeat((1, 1, math.ceil(t[2] / s[2])))[:, :, :t[2]]
    if len(t) < 4 or corner:
        w = w[tuple(slice(0, n) for n in t)]
    else:
        w = w[:t[0], :t[1], _centre(w.shape[-2], t[2]), _centre(w.shape[-1], t[3])]
    if tuple(w.shape) != t:
        raise HypernetError(f"the GHN-3 predicted a {tuple(w.shape)} block for a tensor of shape {t} (kernels are "
                            "resized only when both sides exceed its slots; ghn3 fails on this model too)")
    return w
