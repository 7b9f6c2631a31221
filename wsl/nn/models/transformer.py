"""Sparse relational transformer over parameter graphs (the NG-T idea without its N^2 cost)."""

from __future__ import annotations

from torch import nn

from ..conv.attention import RelationalAttentionConv
from .base import MetaNetwork


class RelationalTransformer(MetaNetwork):
    """Relational transformer: multi-head attention along graph edges (and, with ``hops=k``, between
    nodes up to ``k`` edges apart), conditioned on edge states, with edge updates; see
    :class:`~wsl.nn.conv.attention.RelationalAttentionConv`. Memory is linear in the number of edges.

    Options beyond :class:`~wsl.nn.models.base.MetaNetwork`'s: ``heads`` (4), ``hops`` (1).
    """

    def __init__(self, out_dim: int = 1, *, heads: int = 4, hops: int = 1, **kwargs) -> None:
        if hops < 1:
            raise ValueError(f"hops must be >= 1, got {hops}")
        self.heads, self.hops = heads, hops
        super().__init__(out_dim, **kwargs)

    def make_layer(self, index: int) -> nn.Module:
        return RelationalAttentionConv(self.hidden_dim, self.act, heads=self.heads, bidirectional=self.bidirectional,
                                       hops=self.hops, norm=self.norm, edge_norm=self.edge_norm, dropout=self.dropout)
