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
    ``norm`` / ``edge_norm`` (``"batch"``, ``"layer"`` or ``"none"`` on node / edge states), ``value_encoding``
    (``"sine"``: learned ``sin(vA + b)`` features of the standardized values; ``"fourier"``: fixed octaves,
    ``num_freqs`` of them), ``residual``, ``readout`` (``"nodes"`` | ``"nodes+edges"``), ``dropout``,
    ``bidirectional``, ``edge_out_dim`` / ``node_out_dim`` (equivariant heads).

    Defaults (``value_encoding="sine"``, ``norm="batch"``, ``edge_norm="batch"``) are what learned on the
    benchmark-convention INR zoo (independent initialization per INR, ``data=digits_inr_bench``; hidden 32,
    4 layers, 6 epochs, test accuracy): LayerNorm on nodes and no edge normalization with fixed Fourier
    features 19.1 %; BatchNorm on nodes and edges 35.0 %; plus learned sine features 44.0 %; the GMN
    authors' reference EdgeMPNN at the same width, depth and budget 14.7 % (README, "Benchmark-convention
    zoo"). Batch statistics are per-feature over every node / edge of the batch, so they are invariant to
    the networks' symmetries; in ``eval()`` the running statistics are used.
    """

    def __init__(self, out_dim: int = 1, *, aggr: str = "mean", residual: bool = True, value_encoding: str = "sine",
                 norm: bool | str = "batch", edge_norm: bool | str = "batch", **kwargs) -> None:
        self.aggr, self.residual = aggr, residual
        super().__init__(out_dim, value_encoding=value_encoding, norm=norm, edge_norm=edge_norm, **kwargs)

    def make_layer(self, index: int) -> nn.Module:
        return EdgeNodeConv(self.hidden_dim, self.act, bidirectional=self.bidirectional, aggr=self.aggr,
                            norm=self.norm, edge_norm=self.edge_norm, dropout=self.dropout, residual=self.residual)
