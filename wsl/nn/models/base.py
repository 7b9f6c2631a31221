"""Shared skeleton of the graph metanetworks: encode -> message-passing layers -> readouts."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch_geometric.data import Batch

from ...graph.paramgraph import ParamGraph
from ..context import GraphContext, as_batch
from ..conv.common import activation, norm_kind
from ..encoders import GraphEncoder
from ..readout import GraphPool, IOPool, MetaOutput

OUTPUTS = ("graph", "node", "edge", "all")
READOUTS = ("nodes", "nodes+edges", "io")


class MetaNetwork(nn.Module):
    """Base class: ``model(batch)`` -> invariant ``[num_graphs, out_dim]``.

    ``model(batch, output="edge")`` gives the equivariant per-edge output ``[E, edge_out_dim]``,
    ``output="node"`` the per-node one ``[N, node_out_dim]``, ``output="all"`` a :class:`MetaOutput`.
    ``batch`` is a PyG ``Batch`` of ParamGraphs (any mix of architectures), one ParamGraph, or a list.
    Subclasses provide ``make_layer(i)``; layers are called as ``layer(h, e, ctx) -> (h, e)``.
    """

    def __init__(self, out_dim: int = 1, *, hidden_dim: int = 64, num_layers: int = 4, edge_out_dim: int = 1,
                 node_out_dim: int = 1, act: str = "relu", num_freqs: int = 6, dropout: float = 0.0,
                 norm: bool | str = True, edge_norm: bool | str = False, bidirectional: bool = True,
                 value_encoding: str = "fourier", readout: str = "nodes") -> None:
        super().__init__()
        if out_dim < 1 or hidden_dim < 1 or num_layers < 0:
            raise ValueError(f"out_dim and hidden_dim must be >= 1 and num_layers >= 0, "
                             f"got {out_dim}, {hidden_dim}, {num_layers}")
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        self.out_dim, self.hidden_dim, self.num_layers = out_dim, hidden_dim, num_layers
        self.act = activation(act)
        self.dropout, self.bidirectional = dropout, bidirectional
        self.norm, self.edge_norm = norm_kind(norm), norm_kind(edge_norm)
        self.value_encoding, self.readout_kind = value_encoding, readout
        self.encoder = self.make_encoder(num_freqs)
        self.layers = nn.ModuleList([self.make_layer(i) for i in range(num_layers)])
        self.readout = (IOPool(hidden_dim, out_dim, self.act) if readout == "io"
                        else GraphPool(hidden_dim, out_dim, self.act, edges=readout == "nodes+edges"))
        self.node_head = nn.Linear(hidden_dim, node_out_dim)
        self.edge_head = nn.Linear(hidden_dim, edge_out_dim)

    # ------------------------------------------------------------------ hooks
    def make_encoder(self, num_freqs: int) -> nn.Module:
        return GraphEncoder(self.hidden_dim, num_freqs, self.act, value_encoding=self.value_encoding)

    def make_layer(self, index: int) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def process(self, batch, ctx: GraphContext) -> tuple[Tensor, Tensor]:
        h, e = self.encoder(batch)
        for layer in self.layers:
            h, e = layer(h, e, ctx)
        return h, e

    def graph_readout(self, h: Tensor, ctx: GraphContext, e: Tensor | None = None) -> Tensor:
        return self.readout(h, ctx, e)

    # ------------------------------------------------------------------ API
    def forward(self, batch: Batch | ParamGraph | Sequence[ParamGraph], output: str = "graph"):
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        batch = as_batch(batch)
        ctx = GraphContext.from_batch(batch)
        h, e = self.process(batch, ctx)
        if output == "graph":
            return self._graph(h, e, ctx)
        if output == "node":
            return self.node_head(h)
        if output == "edge":
            return self.edge_head(e)
        return MetaOutput(self._graph(h, e, ctx), self.node_head(h), self.edge_head(e))

    def _graph(self, h: Tensor, e: Tensor, ctx: GraphContext) -> Tensor:
        # subclasses may override graph_readout(h, ctx); edge states are passed only when the readout pools them
        return self.graph_readout(h, ctx, e) if self.readout_kind != "nodes" else self.graph_readout(h, ctx)

    def extra_repr(self) -> str:
        return f"out_dim={self.out_dim}, hidden_dim={self.hidden_dim}, num_layers={self.num_layers}"
