"""Neural Graphs GNN (NG-GNN): PNA aggregation with FiLM edge modulation and edge updates."""

from __future__ import annotations

import math

from torch import nn

from ..conv.pna import AGGREGATORS, SCALERS, PNAConv
from .base import MetaNetwork


class NGGNN(MetaNetwork):
    """NG-GNN (Kofinas et al., 2024): PNA message passing (mean / min / max / std aggregators, identity /
    amplification / attenuation degree scalers) with FiLM-modulated messages and edge updates; see
    :class:`~wsl.nn.conv.pna.PNAConv`. Sparse over edges, so it runs on any mix of architectures.

    Options beyond :class:`~wsl.nn.models.base.MetaNetwork`'s: ``aggregators``, ``scalers``, ``delta``
    (average ``log(degree + 1)`` of the data, scales the degree scalers).
    """

    def __init__(self, out_dim: int = 1, *, aggregators: tuple[str, ...] = AGGREGATORS,
                 scalers: tuple[str, ...] = SCALERS, delta: float = math.log(17.0), **kwargs) -> None:
        self.aggregators, self.scalers, self.delta = tuple(aggregators), tuple(scalers), delta
        super().__init__(out_dim, **kwargs)

    def make_layer(self, index: int) -> nn.Module:
        return PNAConv(self.hidden_dim, self.act, bidirectional=self.bidirectional, aggregators=self.aggregators,
                       scalers=self.scalers, delta=self.delta, norm=self.norm, edge_norm=self.edge_norm, dropout=self.dropout)
