"""Neural Graphs layer: PNA aggregation (mean / min / max / std with degree scalers) of FiLM-modulated
messages, followed by an edge update."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..context import GraphContext
from ..scatter import gather, scatter
from .common import EdgeUpdate, NodeUpdate

AGGREGATORS = ("mean", "min", "max", "std")
SCALERS = ("identity", "amplification", "attenuation")


class PNAConv(nn.Module):
    """One NG-GNN layer.

    Message along ``j -> i``: ``m = gamma(e_ji) * W h_j + beta(e_ji)`` (FiLM: the weight modulates what the
    source neuron sends). Each node aggregates its incoming messages with every aggregator, multiplies by
    every degree scaler (``log(d+1)/delta``, ``delta/log(d+1)``), and is updated from the concatenation;
    ``bidirectional`` adds the same over outgoing edges with separate weights. Then edges are updated from
    ``[e, h_src, h_dst]``. ``delta`` is PNA's average ``log(degree + 1)``; it only sets the scalers' scale.
    """

    def __init__(self, dim: int, act: type[nn.Module], *, bidirectional: bool = True,
                 aggregators: tuple[str, ...] = AGGREGATORS, scalers: tuple[str, ...] = SCALERS,
                 delta: float = math.log(17.0), norm: bool = True, edge_norm: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        bad = [a for a in aggregators if a not in AGGREGATORS] + [s for s in scalers if s not in SCALERS]
        if bad:
            raise ValueError(f"unknown PNA aggregator / scaler {bad}; aggregators: {AGGREGATORS}, scalers: {SCALERS}")
        self.dim = dim
        self.aggregators, self.scalers, self.delta = tuple(aggregators), tuple(scalers), delta
        self.bidirectional = bidirectional
        dirs = 2 if bidirectional else 1
        self.msg_node = nn.Linear(dim, dirs * dim)
        self.film = nn.Linear(dim, dirs * 2 * dim)
        agg_dim = dim * len(aggregators) * len(scalers)
        self.post = nn.ModuleList([nn.Linear(agg_dim, dim) for _ in range(dirs)])
        self.node = NodeUpdate(dim, dim * (1 + dirs), act, norm, dropout)
        self.edge = EdgeUpdate(dim, act, edge_norm, dropout)

    def _aggregate(self, msg: Tensor, index: Tensor, counts: Tensor, n: int) -> Tensor:
        outs = [scatter(msg, index, n, a, counts=counts) for a in self.aggregators]
        agg = torch.cat(outs, dim=-1)
        logd = torch.log(counts.clamp(min=1) + 1)[:, None]
        scaled = []
        for s in self.scalers:
            if s == "identity":
                scaled.append(agg)
            elif s == "amplification":
                scaled.append(agg * (logd / self.delta))
            else:
                scaled.append(agg * (self.delta / logd))
        return torch.cat(scaled, dim=-1)

    def forward(self, h: Tensor, e: Tensor, ctx: GraphContext) -> tuple[Tensor, Tensor]:
        n, d = ctx.num_nodes, self.dim
        node_msg = self.msg_node(h).split(d, dim=-1)
        film = self.film(e).split(2 * d, dim=-1)
        parts = [h]
        # forward direction: messages from sources into targets
        gamma, beta = film[0].split(d, dim=-1)
        msg = gather(node_msg[0], ctx.src) * (1 + gamma) + beta
        parts.append(self.post[0](self._aggregate(msg, ctx.dst, ctx.in_count, n)))
        if self.bidirectional:
            gamma, beta = film[1].split(d, dim=-1)
            msg = gather(node_msg[1], ctx.dst) * (1 + gamma) + beta
            parts.append(self.post[1](self._aggregate(msg, ctx.src, ctx.out_count, n)))
        h = self.node(h, torch.cat(parts, dim=-1))
        return h, self.edge(h, e, ctx.src, ctx.dst)
