"""Canonical scales: remove the positive-scale and sign-flip part of a network's symmetry group.

A neuron ``v`` of a set followed by a positively homogeneous activation (ReLU, LeakyReLU) can be scaled by any
``c > 0`` (incoming weights and bias times ``c``, outgoing weights divided by ``c``); one followed by an odd
activation (tanh, sin) can be flipped (``c = -1``). :func:`canonical_scales` picks, for every such neuron,
the factor that brings it to a canonical form:

* positive scale: the incoming weights and bias get unit Euclidean norm;
* sign flip: the sum of the incoming weights and bias becomes non-negative.

Sets are processed in creation order (a topological order), so a set's incoming weights are already canonical
in their sources when its own factor is chosen. Both rules are equivariant: for ``b = P S a`` (``P`` a
permutation, ``S`` scale / sign factors of the group), ``canon(b) = P canon(a)`` up to float rounding, so
matching canonical graphs by permutations alone recovers the whole group element
(:func:`wsl.align.weight_matching`, :func:`wsl.align.activation_matching`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..graph import ParamGraph, SymmetryElement
from ..graph.builder import NODE_COL
from ..graph.symmetry import POSITIVE


def canonical_scales(graph: ParamGraph) -> Tensor | None:
    """Per-node factors ``f`` [N] (float64) with ``graph.apply_symmetry(SymmetryElement(identity, f))``
    canonical; ``None`` when the network has no scale / sign symmetry."""
    spec = graph.spec
    kind = spec.symmetry.scale_kind
    if not bool((kind > 0).any()):
        return None
    src, dst = graph.edge_index
    order = torch.argsort(dst, stable=True)
    dst_sorted = dst[order]
    e = graph.edge_attr[:, 0].double()
    bias = graph.x[:, NODE_COL["bias"]].double()
    f = torch.ones(spec.num_nodes, dtype=torch.float64)
    for s in spec.sets:
        k = int(kind[s.start]) if s.size else 0
        if not k:
            continue
        lo, hi = s.start, s.start + s.size
        a, b = int(torch.searchsorted(dst_sorted, lo)), int(torch.searchsorted(dst_sorted, hi))
        idx = order[a:b]
        vals = e[idx] / f[src[idx]]  # this set's own factor is still 1
        rows = dst[idx] - lo
        if k == POSITIVE:
            sq = torch.zeros(s.size, dtype=torch.float64).index_add_(0, rows, vals * vals) + bias[lo:hi] ** 2
            norm = sq.sqrt()
            f[lo:hi] = torch.where(norm > 0, 1.0 / norm.clamp(min=1e-300), torch.ones_like(norm))
        else:
            key = torch.zeros(s.size, dtype=torch.float64).index_add_(0, rows, vals) + bias[lo:hi]
            f[lo:hi] = torch.where(key < 0, -1.0, 1.0).to(torch.float64)
    return f


def compose(perm: Tensor, fa: Tensor | None, fb: Tensor | None) -> SymmetryElement:
    """The element taking ``b`` to ``a`` when ``perm`` matches ``canon(b)`` to ``canon(a)``: scale ``b`` to
    canonical (``fb``), permute, then undo ``a``'s canonical factors (``1 / fa``, in ``a``'s labelling)."""
    if fa is None and fb is None:
        return SymmetryElement(perm.clone())
    n = perm.numel()
    fa = fa if fa is not None else torch.ones(n, dtype=torch.float64)
    fb = fb if fb is not None else torch.ones(n, dtype=torch.float64)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    return SymmetryElement(perm.clone(), fb * (1.0 / fa)[inv])  # scales act in b's (old) labelling


def canonicalize(graph: ParamGraph) -> tuple[Tensor | None, ParamGraph]:
    """``(factors, canonical graph)``; the graph itself when there is nothing to canonicalize."""
    f = canonical_scales(graph)
    if f is None:
        return None, graph
    return f, graph.apply_symmetry(SymmetryElement(torch.arange(graph.spec.num_nodes), f))
