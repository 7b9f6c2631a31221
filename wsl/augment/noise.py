"""Perturbing augmentations: noise, dropout, pruning, quantization (they change the function a little).

All of them act only on learnable values (:class:`~wsl.augment.base.ParamIndex`): parameter edges and the
``bias`` node feature. Identity edges (fixed weight 1), BatchNorm running statistics and pass-through
buffers are never touched. Scales are per *tensor* (a layer's weight, a layer's bias), so a perturbation
means the same thing for a first-layer SIREN weight (``~1``) and a deep one (``~0.01``).

Reference: Shamsian et al., *Data Augmentations in Deep Weight Spaces* (2023); Schürholt et al.,
*Self-Supervised Representation Learning on Neural Network Weights* (NeurIPS 2021) for noise / dropout /
pruning-style weight augmentations.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..graph import ParamGraph
from ..graph.builder import NODE_COL, NODE_TYPE_ID
from ..graph.spec import IO_HIDDEN
from .base import (
    Generator,
    GraphTransform,
    ParamIndex,
    param_index,
    register,
    with_values,
)

_BIAS = NODE_COL["bias"]


def _values(graph: ParamGraph, idx: ParamIndex) -> tuple[Tensor, Tensor, Tensor]:
    """Learnable values as one flat vector ``[P]`` with their tensor ids, plus the parameter-edge ids."""
    eids = idx.param_edges
    v = torch.cat([graph.edge_attr[eids, 0], graph.x[idx.bias_node, _BIAS]])
    tid = torch.cat([idx.edge_tid[eids], idx.bias_tid])
    return v, tid, eids


def _write(graph: ParamGraph, idx: ParamIndex, eids: Tensor, v: Tensor) -> ParamGraph:
    edge = graph.edge_attr.clone()
    x = graph.x.clone()
    edge[eids, 0] = v[: eids.numel()].to(edge.dtype)
    x[idx.bias_node, _BIAS] = v[eids.numel():].to(x.dtype)
    return with_values(graph, edge, x)


def tensor_std(v: Tensor, tid: Tensor, num: int) -> Tensor:
    """Per-tensor standard deviation of ``v`` grouped by ``tid`` ``[num]``; tensors of one element (or
    constant tensors) use their mean absolute value instead, so they are still perturbed proportionally."""
    v = v.double()
    cnt = torch.zeros(num, dtype=torch.float64).index_add_(0, tid, torch.ones_like(v))
    s1 = torch.zeros(num, dtype=torch.float64).index_add_(0, tid, v)
    s2 = torch.zeros(num, dtype=torch.float64).index_add_(0, tid, v * v)
    mean = s1 / cnt.clamp(min=1)
    var = (s2 - cnt * mean * mean).clamp(min=0) / (cnt - 1).clamp(min=1)
    std = var.sqrt()
    mabs = torch.zeros(num, dtype=torch.float64).index_add_(0, tid, v.abs()) / cnt.clamp(min=1)
    return torch.where(std > 0, std, mabs)


@register("gaussian_noise")
class GaussianNoise(GraphTransform):
    """Add ``N(0, (sigma * std_T)^2)`` to every learnable value of tensor ``T`` (``std_T``: its own std).

    With ``relative=False`` the noise is ``N(0, sigma^2)`` everywhere.
    """

    def __init__(self, sigma: float = 0.01, relative: bool = True) -> None:
        if sigma < 0:
            raise ValueError(f"GaussianNoise: sigma must be >= 0, got {sigma}")
        self.sigma, self.relative = sigma, relative

    def forward(self, graph: ParamGraph, generator: Generator) -> ParamGraph:
        idx = param_index(graph.spec)
        v, tid, eids = _values(graph, idx)
        scale = tensor_std(v, tid, idx.num_tensors)[tid] if self.relative else torch.ones(v.numel(), dtype=torch.float64)
        noise = torch.randn(v.numel(), generator=generator, dtype=torch.float64)
        return _write(graph, idx, eids, v.double() + self.sigma * scale * noise)


@register("weight_dropout")
class WeightDropout(GraphTransform):
    """Zero each parameter edge (weight) independently with probability ``p``; biases and norm statistics
    stay. ``rescale=True`` multiplies the kept weights by ``1 / (1 - p)`` (inverted dropout)."""

    def __init__(self, p: float = 0.1, rescale: bool = False) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"WeightDropout: p must be in [0, 1), got {p}")
        self.p, self.rescale = p, rescale

    def forward(self, graph: ParamGraph, generator: Generator) -> ParamGraph:
        idx = param_index(graph.spec)
        keep = torch.rand(graph.edge_attr.shape[0], generator=generator) >= self.p
        factor = torch.where(keep | ~idx.edge_param, 1.0, 0.0).to(graph.edge_attr.dtype)
        if self.rescale:
            factor = torch.where(idx.edge_param & keep, factor / (1.0 - self.p), factor)
        return with_values(graph, graph.edge_attr * factor[:, None], graph.x.clone())


@register("neuron_dropout")
class NeuronDropout(GraphTransform):
    """Remove whole hidden neurons with probability ``p`` each: zero their incoming and outgoing parameter
    edges and their bias, so the neuron contributes nothing (for any activation). Candidates are the
    output neurons of hidden linear / conv layers (node type ``hidden``, not network outputs)."""

    def __init__(self, p: float = 0.05) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"NeuronDropout: p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, graph: ParamGraph, generator: Generator) -> ParamGraph:
        spec = graph.spec
        idx = param_index(spec)
        cand = (spec.node_type == NODE_TYPE_ID["hidden"]) & (spec.io == IO_HIDDEN)
        drop = cand & (torch.rand(spec.num_nodes, generator=generator) < self.p)
        src, dst = graph.edge_index
        hit = (drop[src] | drop[dst]) & idx.edge_param
        edge = graph.edge_attr.masked_fill(hit[:, None], 0.0)
        x = graph.x.clone()
        x[drop & idx.has_bias, _BIAS] = 0.0
        return with_values(graph, edge, x)


@register("magnitude_pruning")
class MagnitudePruning(GraphTransform):
    """Zero the smallest-magnitude weights of every weight matrix / kernel (tensors with >= 2 dims).

    The pruned fraction ``q`` is drawn uniformly from ``[min_fraction, max_fraction]`` per call and
    applied per tensor (``per_tensor=True``) or over all weight matrices at once.
    """

    def __init__(self, min_fraction: float = 0.0, max_fraction: float = 0.5, per_tensor: bool = True) -> None:
        if not 0.0 <= min_fraction <= max_fraction < 1.0:
            raise ValueError(f"MagnitudePruning: need 0 <= min_fraction <= max_fraction < 1, "
                             f"got {min_fraction}, {max_fraction}")
        self.min_fraction, self.max_fraction, self.per_tensor = min_fraction, max_fraction, per_tensor

    def forward(self, graph: ParamGraph, generator: Generator) -> ParamGraph:
        idx = param_index(graph.spec)
        q = self.min_fraction + (self.max_fraction - self.min_fraction) * float(torch.rand((), generator=generator))
        eids = torch.nonzero(idx.edge_matrix).flatten()
        if eids.numel() == 0:
            return with_values(graph, graph.edge_attr.clone(), graph.x.clone())
        mag = graph.edge_attr[eids, 0].abs()
        group = idx.edge_tid[eids] if self.per_tensor else torch.zeros_like(eids)
        # rank of every weight inside its group: sort by (group, magnitude)
        order = torch.argsort(mag.double() + group.double() * (float(mag.max()) + 1.0))
        gs = group[order]
        counts = torch.bincount(gs)
        first = torch.cumsum(counts, 0) - counts
        rank = torch.arange(order.numel()) - first[gs]
        pruned = rank < torch.floor(q * counts[gs].double()).long()
        edge = graph.edge_attr.clone()
        edge[eids[order[pruned]], 0] = 0.0
        return with_values(graph, edge, graph.x.clone())


@register("quantization")
class Quantization(GraphTransform):
    """Symmetric uniform quantization per tensor: ``w -> round(w / d) d`` with ``d = max|w| / (2^(b-1) - 1)``.

    ``bits`` is an int, or a ``(low, high)`` range from which ``b`` is drawn per call.
    """

    def __init__(self, bits: int | tuple[int, int] | list[int] = 8) -> None:
        lo, hi = (bits, bits) if isinstance(bits, int) else tuple(bits)
        if not 2 <= lo <= hi <= 32:
            raise ValueError(f"Quantization: bits must lie in [2, 32], got {bits}")
        self.bits = (int(lo), int(hi))

    def forward(self, graph: ParamGraph, generator: Generator) -> ParamGraph:
        idx = param_index(graph.spec)
        lo, hi = self.bits
        b = int(torch.randint(lo, hi + 1, (), generator=generator))
        v, tid, eids = _values(graph, idx)
        v = v.double()
        amax = torch.zeros(idx.num_tensors, dtype=torch.float64).scatter_reduce_(0, tid, v.abs(), "amax")
        step = (amax / (2 ** (b - 1) - 1)).clamp(min=torch.finfo(torch.float64).tiny)[tid]
        return _write(graph, idx, eids, torch.round(v / step) * step)
