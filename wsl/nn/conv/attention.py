"""Sparse relational transformer layer: multi-head attention restricted to graph edges (plus, optionally,
k-hop neighbours), conditioned on edge states; no nodes x nodes tensor anywhere."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..context import GraphContext
from ..scatter import gather, scatter, segment_softmax
from .common import EdgeUpdate, norm_layer


class RelationalAttentionConv(nn.Module):
    """One relational-transformer block.

    Node ``i`` attends over the sources ``j`` of its incoming edges with logits
    ``q_i . (k_j + k(e_ji)) / sqrt(d_head)`` and values ``v_j + v(e_ji)`` (the edge state enters both, as in
    NG-T's relational attention); ``bidirectional`` adds attention over outgoing edges. With ``hops > 1``
    the neighbourhood also contains nodes ``2..hops`` edges away, whose relation is a learned embedding of
    the path length. Then a feed-forward block on nodes and an edge update from ``[e, h_src, h_dst]``.
    """

    def __init__(self, dim: int, act: type[nn.Module], *, heads: int = 4, bidirectional: bool = True,
                 hops: int = 1, norm: bool = True, edge_norm: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden_dim {dim} is not divisible by heads={heads}")
        self.dim, self.heads, self.hops = dim, heads, hops
        self.bidirectional = bidirectional
        dirs = 2 if bidirectional else 1
        self.dirs = dirs
        self.qkv = nn.Linear(dim, 3 * dim * dirs)
        self.edge_kv = nn.Linear(dim, 2 * dim * dirs, bias=False)
        self.hop_kv = nn.Embedding(max(hops - 1, 1), 2 * dim * dirs) if hops > 1 else None
        self.out = nn.Linear(dim * dirs, dim)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.norm1 = norm_layer(dim, norm)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), act(), nn.Linear(2 * dim, dim))
        self.norm2 = norm_layer(dim, norm)
        self.edge = EdgeUpdate(dim, act, edge_norm, dropout)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, ek: Tensor, ev: Tensor, frm: Tensor, to: Tensor,
                n: int) -> Tensor:
        hd = self.dim // self.heads
        kk = (gather(k, frm) + ek).view(-1, self.heads, hd)
        logits = (gather(q, to).view(-1, self.heads, hd) * kk).sum(-1) / math.sqrt(hd)
        alpha = segment_softmax(logits, to, n)
        vv = (gather(v, frm) + ev).view(-1, self.heads, hd) * alpha[..., None]
        return scatter(vv.view(-1, self.dim), to, n, "sum")

    def forward(self, h: Tensor, e: Tensor, ctx: GraphContext) -> tuple[Tensor, Tensor]:
        n, d = ctx.num_nodes, self.dim
        qkv = self.qkv(h).split(3 * d, dim=-1)
        ekv = self.edge_kv(e).split(2 * d, dim=-1)
        src, dst = ctx.src, ctx.dst
        if self.hop_kv is not None:
            (hs, hdst), length = ctx.hop_edges(self.hops)
            hkv = self.hop_kv(length - 2).split(2 * d, dim=-1)
            src, dst = torch.cat([src, hs]), torch.cat([dst, hdst])
            ekv = tuple(torch.cat([a, b]) for a, b in zip(ekv, hkv))
        outs = []
        for direction in range(self.dirs):
            q, k, v = qkv[direction].split(d, dim=-1)
            ek, ev = ekv[direction].split(d, dim=-1)
            frm, to = (src, dst) if direction == 0 else (dst, src)
            outs.append(self._attend(q, k, v, ek, ev, frm, to, n))
        h = self.norm1(h + self.drop(self.out(torch.cat(outs, dim=-1))))
        h = self.norm2(h + self.drop(self.ffn(h)))
        return h, self.edge(h, e, ctx.src, ctx.dst)
