"""Graph-level readout and writing equivariant outputs back into weights."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..graph.builder import EDGE_TYPE_ID, NODE_COL
from ..graph.paramgraph import ParamGraph
from .context import GraphContext
from .encoders import sinusoidal
from .scatter import scatter


class MetaOutput(NamedTuple):
    """All outputs of a metanetwork: invariant ``graph`` ``[G, k]``, equivariant ``node`` ``[N, k_n]`` and
    ``edge`` ``[E, k_e]`` (rows in the batch's node / edge order)."""

    graph: Tensor
    node: Tensor
    edge: Tensor


class GraphPool(nn.Module):
    """Invariant readout: per-graph mean and max of node states (and, ``edges``, the mean of edge states), then
    an MLP to ``out_dim``."""

    def __init__(self, dim: int, out_dim: int, act: type[nn.Module], reduce: tuple[str, ...] = ("mean", "max"),
                 edges: bool = False) -> None:
        super().__init__()
        self.reduce, self.edges = reduce, edges
        self.mlp = nn.Sequential(nn.Linear(dim * (len(reduce) + edges), dim), act(), nn.Linear(dim, out_dim))

    def forward(self, h: Tensor, ctx: GraphContext, e: Tensor | None = None) -> Tensor:
        pooled = [scatter(h, ctx.node_batch, ctx.num_graphs, r, counts=ctx.node_count) for r in self.reduce]
        if self.edges:
            if e is None:
                raise ValueError("GraphPool(edges=True) needs the edge states")
            pooled.append(scatter(e, ctx.edge_batch, ctx.num_graphs, "mean"))
        return self.mlp(torch.cat(pooled, dim=-1))


class IOPool(nn.Module):
    """Invariant readout from the network's own input and output neurons, which no symmetry moves (the
    convention of ScaleGMN's reference code, which reads only those neurons): each I/O node's state with an
    embedding of where it sits (input or output, its index there) goes through an MLP, inputs and outputs are
    averaged separately per graph, and a second MLP maps ``[mean over inputs, mean over outputs]`` to
    ``out_dim``. The per-position embedding lets the averages keep which neuron said what, so for one
    architecture this is as expressive as concatenating the I/O states. Hidden neurons are read only through
    what message passing carried to the I/O neurons.

    Invariance needs the I/O node states to be invariant themselves: true for permutation-equivariant
    metanetworks (I/O neurons are never permuted) and for ScaleGMN (I/O neurons have no scale / sign factor).
    """

    def __init__(self, dim: int, out_dim: int, act: type[nn.Module], pos_dim: int = 16) -> None:
        super().__init__()
        self.pos_dim = pos_dim
        self.side = nn.Embedding(2, dim)
        self.pos = nn.Linear(pos_dim, dim, bias=False)
        self.node = nn.Sequential(nn.Linear(dim, dim), act(), nn.Linear(dim, dim))
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), act(), nn.Linear(dim, out_dim))

    def forward(self, h: Tensor, ctx: GraphContext, e: Tensor | None = None) -> Tensor:
        if ctx.io is None:
            raise ValueError("IOPool needs the batch's io / io_index (build graphs with wsl.to_graph)")
        sel = (ctx.io > 0).nonzero().squeeze(1)
        side = ctx.io[sel] - 1  # 0 input, 1 output
        z = self.node(h[sel] + self.side(side) + self.pos(sinusoidal(ctx.io_index[sel].clamp(min=0), self.pos_dim)))
        key = ctx.node_batch[sel] * 2 + side
        pooled = scatter(z, key, 2 * ctx.num_graphs, "mean")
        return self.mlp(pooled.reshape(ctx.num_graphs, -1))


def _graph_slices(batch) -> list[tuple[int, int, int, int]]:
    """``(node_start, node_stop, edge_start, edge_stop)`` per graph of a batch (one entry for a single graph)."""
    if getattr(batch, "ptr", None) is None:
        return [(0, int(batch.x.shape[0]), 0, int(batch.edge_attr.shape[0]))]
    ptr = batch.ptr.tolist()
    counts = torch.bincount(batch.batch[batch.edge_index[0]], minlength=len(ptr) - 1).tolist()
    eptr = [0]
    for c in counts:
        eptr.append(eptr[-1] + c)
    return [(ptr[i], ptr[i + 1], eptr[i], eptr[i + 1]) for i in range(len(ptr) - 1)]


def parameter_edge_mask(batch) -> Tensor:
    """True for edges that carry a parameter (everything but the fixed weight-1 ``identity`` edges)."""
    return batch.edge_type.long() != EDGE_TYPE_ID["identity"]


def apply_outputs(batch, edge_values: Tensor | None = None, bias_values: Tensor | None = None, *,
                  residual: bool = True) -> list[ParamGraph]:
    """New ParamGraphs (one per graph of ``batch``) whose weights are replaced by (``residual=False``) or
    shifted by (``residual=True``) the metanetwork's equivariant outputs.

    ``edge_values`` is ``[E]`` or ``[E, 1]`` (one value per edge of the batch; identity edges are left at
    1), ``bias_values`` ``[N]`` or ``[N, 1]`` (written to the ``bias`` column). Write them back into a
    model with ``wsl.from_graph(graph, model)``. Values are detached; for a differentiable path use
    :func:`state_dicts`.
    """
    out = []
    keep = parameter_edge_mask(batch)
    specs = batch.spec if isinstance(batch.spec, (list, tuple)) else [batch.spec]
    for i, (n0, n1, e0, e1) in enumerate(_graph_slices(batch)):
        g = ParamGraph()
        g.x = batch.x[n0:n1].clone()
        g.edge_index = batch.edge_index[:, e0:e1] - n0
        for k in ("edge_type", "edge_pos", "node_type", "node_layer", "io", "io_index"):
            g[k] = batch[k][e0:e1] if k.startswith("edge") else batch[k][n0:n1]
        g.buffers = batch.get_example(i).buffers if getattr(batch, "ptr", None) is not None else batch.buffers
        g.spec = specs[i]
        w = batch.edge_attr[e0:e1].clone()
        if edge_values is not None:
            v = edge_values.detach().reshape(-1, 1)[e0:e1].to(w.dtype)
            m = keep[e0:e1]
            w[m] = (w[m] + v[m]) if residual else v[m]
        g.edge_attr = w
        if bias_values is not None:
            b = bias_values.detach().reshape(-1)[n0:n1].to(g.x.dtype)
            col = NODE_COL["bias"]
            has_bias = _bias_nodes(specs[i]).to(b.device)
            g.x[has_bias, col] = (g.x[has_bias, col] + b[has_bias]) if residual else b[has_bias]
        out.append(g)
    return out


def _bias_nodes(spec) -> Tensor:
    """Nodes whose ``bias`` column holds a real parameter (others must stay 0 for an exact inverse)."""
    mask = torch.zeros(spec.num_nodes, dtype=torch.bool)
    for t in spec.tensors.values():
        if t.kind == "nodes" and t.column == NODE_COL["bias"]:
            mask[t.atoms] = True
    return mask


def state_dicts(batch, edge_values: Tensor, bias_values: Tensor | None = None) -> list[dict[str, Tensor]]:
    """Differentiable state_dicts (one per graph) built from per-edge / per-node values of a batch.

    ``edge_values`` ``[E]`` / ``[E, 1]`` replaces every parameter edge; ``bias_values`` ``[N]`` / ``[N, 1]``
    replaces bias entries (other node columns and pass-through buffers come from the batch). Use with
    ``torch.func.functional_call(model, sd, inputs)`` to put a loss on what the edited network computes.
    """
    specs = batch.spec if isinstance(batch.spec, (list, tuple)) else [batch.spec]
    ev = edge_values.reshape(-1)
    bv = None if bias_values is None else bias_values.reshape(-1)
    out = []
    for i, (n0, _n1, e0, e1) in enumerate(_graph_slices(batch)):
        spec = specs[i]
        sd: dict[str, Tensor] = {}
        edges = ev[e0:e1]
        buffers = None
        if spec.num_passthrough:  # one example extraction per graph, not per pass-through tensor
            buffers = (batch.get_example(i) if getattr(batch, "ptr", None) is not None else batch).buffers
        for key in spec.keys:
            if key in spec.aliases:
                sd[key] = sd[spec.aliases[key]]
                continue
            t = spec.tensors[key]
            if t.kind == "edges":
                v = edges[t.offset : t.offset + t.numel]
            elif t.kind == "nodes":
                atoms = t.atoms.to(ev.device) + n0
                if t.column == NODE_COL["bias"] and bv is not None:
                    v = bv[atoms]
                else:
                    v = batch.x[atoms, t.column].to(ev.dtype)
            else:
                v = buffers[t.offset : t.offset + t.numel].to(t.dtype)
                sd[key] = v.reshape(t.shape)
                continue
            sd[key] = v.reshape(t.shape)
        out.append(sd)
    return out
