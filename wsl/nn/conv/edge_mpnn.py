"""Graph Metanetwork layer: edge update from ``[source, target, edge]``, node update from aggregated edges."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..context import GraphContext
from ..scatter import scatter
from .common import EdgeUpdate, NodeUpdate


class EdgeNodeConv(nn.Module):
    """One GMN layer.

    1. every edge is updated from itself and its two end neurons (:class:`EdgeUpdate`);
    2. every node aggregates its updated incoming edges (and, ``bidirectional``, its outgoing ones: a
       neuron's role is defined by both the weights that feed it and the weights it feeds) and is updated
       from ``[h, in-aggregate, out-aggregate]``.

    ``aggr`` is ``"mean"`` (default; stable across widths) or ``"sum"``.
    """

    def __init__(self, dim: int, act: type[nn.Module], *, bidirectional: bool = True, aggr: str = "mean",
                 norm: bool | str = True, edge_norm: bool | str = False,
                 dropout: float = 0.0, residual: bool = True) -> None:
        super().__init__()
        if aggr not in ("mean", "sum"):
            raise ValueError(f"EdgeNodeConv aggr must be 'mean' or 'sum', got {aggr!r}")
        self.aggr = aggr
        self.bidirectional = bidirectional
        self.edge = EdgeUpdate(dim, act, edge_norm, dropout, residual)
        self.node = NodeUpdate(dim, dim * (3 if bidirectional else 2), act, norm, dropout, residual)

    def _agg(self, e: Tensor, index: Tensor, counts: Tensor, n: int) -> Tensor:
        s = scatter(e, index, n, "sum")
        return s / counts.clamp(min=1)[:, None] if self.aggr == "mean" else s

    def forward(self, h: Tensor, e: Tensor, ctx: GraphContext) -> tuple[Tensor, Tensor]:
        e = self.edge(h, e, ctx.src, ctx.dst)
        parts = [h, self._agg(e, ctx.dst, ctx.in_count, ctx.num_nodes)]
        if self.bidirectional:
            parts.append(self._agg(e, ctx.src, ctx.out_count, ctx.num_nodes))
        return self.node(h, torch.cat(parts, dim=-1)), e
