"""Graph Metanetwork (GMN): edge-and-node message passing over parameter graphs."""

from __future__ import annotations

from torch import nn

from ..conv.edge_mpnn import EdgeNodeConv
from .base import MetaNetwork


class GMN(MetaNetwork):
    """Graph Metanetwork (Lim et al., 2024) over :class:`~wsl.graph.ParamGraph` batches.

    Each layer updates every edge from ``[e, h_src, h_dst]`` and every node from its aggregated incoming
    (and outgoing, ``bidirectional``) edges; see :class:`~wsl.nn.conv.edge_mpnn.EdgeNodeConv`.

    >>> model = GMN(out_dim=10)                    # doctest: +SKIP
    >>> logits = model(batch)                      # [num_graphs, 10]
    >>> delta_w = model(batch, output="edge")      # [num_edges, 1], permutes with the weights

    Options: ``hidden_dim`` (64), ``num_layers`` (4), ``aggr`` ("mean" | "sum"), ``act`` ("relu"),
    ``norm`` (LayerNorm on node / edge states), ``dropout``, ``bidirectional``, ``num_freqs`` (Fourier
    features of weight values), ``edge_out_dim`` / ``node_out_dim`` (equivariant heads).
    """

    def __init__(self, out_dim: int = 1, *, aggr: str = "mean", **kwargs) -> None:
        self.aggr = aggr
        super().__init__(out_dim, **kwargs)

    def make_layer(self, index: int) -> nn.Module:
        return EdgeNodeConv(self.hidden_dim, self.act, bidirectional=self.bidirectional, aggr=self.aggr,
                            norm=self.norm, edge_norm=self.edge_norm, dropout=self.dropout, residual=self.residual)
