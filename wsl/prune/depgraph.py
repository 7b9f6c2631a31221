"""Dependency groups of structured pruning (torch-pruning's DepGraph) and their group-L2 norms.

Removing output channel ``c`` of a convolution also removes input channel ``c`` of every layer that reads it,
entry ``c`` of a BatchNorm after it, and — through residual sums — the same channel of every layer tied to that
stream. torch-pruning's :class:`DependencyGraph` (Fang et al., *DepGraph*, CVPR 2023) finds these couplings by
tracing; a **group** is one such set of coupled layer dimensions, and its ``c``-th **channel** is one unit of
structured pruning.

This module maps each group once onto slices of the model's *state_dict* (:class:`ChannelGroup`), so that the
group-L2 norm of every channel — the square root of the sum of squares of all coupled weights, the quantity
``tp.importance.GroupMagnitudeImportance(p=2)`` ranks channels by — can be computed *differentiably* from any
state_dict of the architecture (:meth:`ChannelGroup.norms`, :func:`group_sparsity`), e.g. one written by a
metanetwork through :func:`wsl.nn.state_dicts`. The slices mirror torch-pruning's importance exactly (conv /
linear output rows, input columns with grouped-conv repeats, BatchNorm / LayerNorm scales; biases excluded, as
there by default; depthwise convolutions, which that importance skips, are skipped too); :func:`group_norms`
computes the same norms with torch-pruning itself.

Layers whose outputs are the model's outputs (found from :func:`wsl.trace`'s output neurons) are never pruned.

torch-pruning is an optional dependency (``pip install torch-pruning``), imported when first needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


def require_torch_pruning() -> Any:
    """The ``torch_pruning`` module, or an ImportError that says how to install it."""
    try:
        import torch_pruning
    except ImportError as e:
        raise ImportError("structured pruning (wsl.prune, wsl prune) needs torch-pruning: pip install torch-pruning "
                          "(or pip install -e '.[dev]')") from e
    return torch_pruning


def example_args(model: nn.Module, example_inputs: Any = None) -> tuple:
    """Positional example inputs as a tuple (a tensor, a tuple, or ``None``: guessed as :func:`wsl.trace` does)."""
    from ..graph.inputs import as_inputs

    args, kwargs = as_inputs(example_inputs, model)
    if kwargs:
        raise ValueError("structured pruning takes positional example inputs (a tensor or a tuple of tensors), "
                         "not keyword inputs")
    return args


def output_layers(model: nn.Module, example_inputs: Any = None) -> list[nn.Module]:
    """Modules holding a parameter tensor that writes the model's output neurons (their output channels must be
    kept): found from the traced :class:`~wsl.graph.NetworkSpec` (``io == output``), for any architecture
    :func:`wsl.trace` converts."""
    from ..graph.convert import trace
    from ..graph.spec import IO_OUTPUT

    spec = trace(model, example_args(model, example_inputs))
    out = spec.io == IO_OUTPUT
    names: list[str] = []
    for key, t in spec.tensors.items():
        if t.kind == "edges":
            hit = bool(out[spec.edge_index[1, t.offset : t.offset + t.numel]].any())
        elif t.kind == "nodes":
            hit = bool(out[t.atoms].any())
        else:
            continue
        name = key.rsplit(".", 1)[0] if "." in key else ""
        if hit and name not in names:
            names.append(name)
    return [model.get_submodule(n) for n in names]


@dataclass(frozen=True)
class Slice:
    """Part of one state-dict tensor that belongs to a group: ``idxs`` along the pruned dimension, each
    contributing to root channel ``root[j]``. ``kind``: ``"out"`` (rows of a conv / linear weight), ``"in"``
    (its input columns), ``"scale"`` (a norm layer's affine weight)."""

    key: str
    kind: str
    idxs: Tensor
    root: Tensor
    transposed: bool = False
    repeat: int = 1  # grouped convolution (not depthwise): per-group input importance repeated, as torch-pruning

    def squares(self, weight: Tensor) -> Tensor:
        """Sum of squares of the coupled weights for each entry of ``idxs`` (differentiable)."""
        if self.kind == "out":
            w = weight.transpose(0, 1) if self.transposed else weight
            return w.index_select(0, self.idxs.to(w.device)).flatten(1).pow(2).sum(1)
        if self.kind == "in":
            w = weight.flatten(1) if self.transposed else weight.transpose(0, 1).flatten(1)
            s = w.pow(2).sum(1)
            if self.repeat > 1:
                s = s.repeat(self.repeat)
            return s.index_select(0, self.idxs.to(s.device))
        return weight.index_select(0, self.idxs.to(weight.device)).pow(2)

    def masked(self, weight: Tensor, keep: Tensor) -> Tensor:
        """``weight`` with the entries of dropped root channels (``keep[root] == 0``) zeroed (differentiable in
        ``weight``). Grouped-convolution inputs (``repeat > 1``) are left as they are."""
        if self.repeat > 1:
            return weight
        dim = 0 if self.kind in ("out", "scale") else 1
        if self.transposed and self.kind in ("out", "in"):
            dim = 1 - dim
        mult = torch.ones(weight.shape[dim], dtype=weight.dtype, device=weight.device)
        mult = mult.index_copy(0, self.idxs.to(weight.device), keep.to(weight)[self.root.to(weight.device)])
        shape = [1] * weight.dim()
        shape[dim] = -1
        return weight * mult.view(shape)


@dataclass(frozen=True)
class ChannelGroup:
    """One DepGraph group: ``size`` coupled channels, rooted at layer ``root`` (whose output channels they are).

    ``layers`` lists the coupled ``(module name, "out" | "in" | "scale", indices)``; ``slices`` locate the
    weights of each channel in a state_dict. ``reference`` holds the group-L2 norms torch-pruning computed on
    the weights the group was built from (see :func:`group_norms`).
    """

    root: str
    size: int
    slices: tuple[Slice, ...]
    layers: tuple[tuple[str, str, tuple[int, ...]], ...]
    reference: Tensor | None = field(default=None, compare=False)

    def norms(self, state_dict: Mapping[str, Tensor], eps: float = 0.0) -> Tensor:
        """Group-L2 norm of every channel ``[size]``, from ``state_dict`` (differentiable; ``eps`` inside the
        square root keeps the gradient finite at an all-zero channel)."""
        total: Tensor | None = None
        for s in self.slices:
            w = state_dict[s.key]
            part = torch.zeros(self.size, dtype=w.dtype, device=w.device).index_add(
                0, s.root.to(w.device), s.squares(w))
            total = part if total is None else total + part
        if total is None:
            raise ValueError(f"group rooted at {self.root!r} has no weights to measure")
        return (total + eps).sqrt()

    def drop(self, state_dict: Mapping[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
        """A copy of ``state_dict`` with the weights of the channels where ``keep`` is 0 zeroed: the function of
        the network with those channels removed (every consumer's input weights are in the group)."""
        out = dict(state_dict)
        for s in self.slices:
            out[s.key] = s.masked(out[s.key], keep)
        return out


def group_sparsity(state_dict: Mapping[str, Tensor], groups: Sequence[ChannelGroup], *, alpha: float = 1.0,
                   eps: float = 1e-12) -> Tensor:
    """The group-lasso regularizer: sum over groups and channels of the group-L2 norms (differentiable).

    ``alpha > 1`` weights each channel's norm by ``alpha ** ((max - norm) / (max - min))`` within its group
    (weights detached, from 1 for the strongest channel to ``alpha`` for the weakest) — DepGraph's polarizing
    sparse-training weights (``tp.pruner.GroupNormPruner.regularize``), which push the channels structured
    pruning will remove towards zero harder than the ones it keeps. ``alpha=1`` is the plain group lasso.
    """
    if not groups:
        raise ValueError("no prunable channel groups (every layer is an output layer or ignored)")
    total: Tensor | None = None
    for g in groups:
        n = g.norms(state_dict, eps)
        if alpha != 1.0 and n.numel() > 1:
            d = n.detach()
            span = (d.max() - d.min()).clamp(min=1e-12)
            n = n * torch.pow(torch.as_tensor(float(alpha), dtype=n.dtype, device=n.device), (d.max() - d) / span)
        total = n.sum() if total is None else total + n.sum()
    return total  # type: ignore[return-value]


def drop_lowest(state_dict: Mapping[str, Tensor], groups: Sequence[ChannelGroup],
                counts: Sequence[int]) -> dict[str, Tensor]:
    """``state_dict`` with ``counts[i]`` channels of group ``i`` zeroed, chosen as iterative group-L2 pruning
    chooses them: one channel per group per round, the lowest-norm one under the weights left when the round
    starts (removing a channel changes the norms of channels whose layers it feeds). Differentiable in the weights
    that stay; the result computes what the pruned network computes (up to how :func:`prune` spreads the rounds
    over its steps)."""
    sd = dict(state_dict)
    keeps = [torch.ones(g.size) for g in groups]
    for r in range(max(counts, default=0)):
        live = [(g, keep) for g, k, keep in zip(groups, counts, keeps) if r < k]
        with torch.no_grad():  # every group ranks on the weights as the round starts, as torch-pruning's step
            norms = [g.norms(sd).detach().cpu().double() for g, _ in live]
        for (g, keep), n in zip(live, norms):
            n[keep == 0] = float("inf")
            keep[int(n.argmin())] = 0.0
        for g, keep in live:
            sd = g.drop(sd, keep)
    return sd


def _importance(p: int = 2, **kw: Any) -> Any:
    tp = require_torch_pruning()
    return tp.importance.GroupMagnitudeImportance(p=p, **kw)


def _root_types() -> list[type]:
    tp = require_torch_pruning()
    return [tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR]


def _slice_of(tp: Any, dep: Any, idxs: Sequence[int], root: Sequence[int], key: str) -> Slice | None:
    """The :class:`Slice` of one group member, exactly the weights ``GroupMagnitudeImportance`` reads."""
    layer, fn = dep.layer, dep.pruning_fn
    F = tp.pruner.function
    idx = torch.as_tensor(list(idxs), dtype=torch.long)
    rt = torch.as_tensor(list(root), dtype=torch.long)
    transposed = bool(getattr(layer, "transposed", False))
    if fn in (F.prune_conv_out_channels, F.prune_linear_out_channels):
        return Slice(key, "out", idx, rt, transposed)
    if fn in (F.prune_conv_in_channels, F.prune_linear_in_channels):
        groups = getattr(layer, "groups", 1)
        repeat = groups if (fn == F.prune_conv_in_channels and groups not in (1, layer.in_channels)) else 1
        return Slice(key, "in", idx, rt, transposed, repeat)
    if fn == F.prune_batchnorm_out_channels:
        return Slice(key, "scale", idx, rt) if layer.affine else None
    if fn == F.prune_layernorm_out_channels:
        return Slice(key, "scale", idx, rt) if layer.elementwise_affine else None
    return None


def _groups(model: nn.Module, args: tuple, ignored: Sequence[nn.Module]) -> tuple[Any, list[Any]]:
    tp = require_torch_pruning()
    with torch.enable_grad():  # DepGraph traces through autograd
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=args)
    return dg, list(dg.get_all_groups(ignored_layers=list(ignored), root_module_types=_root_types()))


def channel_groups(model: nn.Module, example_inputs: Any = None, *,
                   ignored_layers: Sequence[nn.Module] | None = None) -> list[ChannelGroup]:
    """The prunable DepGraph groups of ``model`` mapped onto its state_dict (see :class:`ChannelGroup`).

    ``ignored_layers``: modules whose output channels are kept (default: :func:`output_layers`). Each group's
    ``reference`` is torch-pruning's own group-L2 norm of the model's current weights.
    """
    tp = require_torch_pruning()
    was = model.training
    model.eval()
    try:
        args = example_args(model, example_inputs)
        ignored = output_layers(model, args) if ignored_layers is None else list(ignored_layers)
        dg, raw = _groups(model, args, ignored)
        names = {m: n for n, m in model.named_modules()}
        imp = _importance(2, group_reduction="sum", normalizer=None)
        targets = tuple(imp.target_types)
        out = []
        for group in raw:
            slices, layers = [], []
            for item in group:
                dep, idxs = item.dep, item.idxs
                layer = dep.layer
                if not isinstance(layer, nn.Module) or layer not in names or not isinstance(layer, targets):
                    continue
                root = item.root_idxs
                if any(r is None for r in root):
                    continue
                name = names[layer]
                key = f"{name}.weight" if name else "weight"
                s = _slice_of(tp, dep, [int(i) for i in idxs], [int(r) for r in root], key)
                if s is None:
                    continue
                slices.append(s)
                layers.append((name, s.kind, tuple(int(i) for i in idxs)))
            if not slices:
                continue
            root_layer = group[0].dep.target.module
            size = int(dg.get_out_channels(root_layer))
            ref = imp(group)  # sized like the group's first member: longer when that one is expanded (flatten)
            out.append(ChannelGroup(names.get(root_layer, "?"), size, tuple(slices), tuple(layers),
                                    ref[:size].sqrt().detach().clone() if ref is not None else None))
        return out
    finally:
        model.train(was)


def group_norms(model: nn.Module, example_inputs: Any = None, *,
                ignored_layers: Sequence[nn.Module] | None = None) -> list[dict[str, Any]]:
    """Every prunable group of ``model`` with its channels' group-L2 norms, as torch-pruning computes them
    (``GroupMagnitudeImportance(p=2)``, summed over the coupled layers, square-rooted).

    Returns one dict per group: ``root`` (the layer whose output channels the group is), ``layers`` (coupled
    ``(module name, "out" | "in" | "scale", channel indices)``) and ``norms`` (a ``[channels]`` tensor).
    """
    return [{"root": g.root, "layers": list(g.layers), "norms": g.reference}
            for g in channel_groups(model, example_inputs, ignored_layers=ignored_layers)]
