"""Sparse relational transformer layer: multi-head attention restricted to graph edges (plus, optionally,
k-hop neighbours), conditioned on edge states; no nodes x nodes tensor anywhere."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..context import GraphContext
from ..scatter import gather, scatter
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
        """Attention of every ``to`` node over its ``frm`` neighbours; ``ek`` / ``ev`` (fresh ``[E', d]``
        tensors) are overwritten with ``k[frm] + ek`` / ``v[frm] + ev``. Returns ``[N, d]``."""
        hd = self.dim // self.heads
        kk = ek.add_(gather(k, frm)).view(-1, self.heads, hd)
        logits = (gather(q, to).view(-1, self.heads, hd) * kk).sum(-1) / math.sqrt(hd)
        alpha = _softmax(logits, to, n)
        vv = ev.add_(gather(v, frm)).view(-1, self.heads, hd) * alpha[..., None]
        return scatter(vv.view(-1, self.dim), to, n, "sum")

    def _edge_kv(self, e: Tensor, ctx: GraphContext, direction: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(ek, ev, frm, to)`` of one direction. ``ek`` / ``ev`` are two ``[E, d]`` matmuls with rows of
        ``edge_kv`` (not slices of one ``[E, 2d * dirs]`` output: no wide edge tensor, no concatenation of
        its gradient); with ``hops > 1`` the hop pairs' embeddings are appended."""
        d, w = self.dim, self.edge_kv.weight
        o = 2 * d * direction
        ek, ev = F.linear(e, w[o : o + d]), F.linear(e, w[o + d : o + 2 * d])
        src, dst = ctx.src, ctx.dst
        if self.hop_kv is not None:
            (hs, hdst), length = ctx.hop_edges(self.hops)
            hkv = self.hop_kv(length - 2)
            ek = torch.cat([ek, hkv[:, o : o + d]])
            ev = torch.cat([ev, hkv[:, o + d : o + 2 * d]])
            src, dst = ctx.cached(f"hop_src{self.hops}", lambda: torch.cat([ctx.src, hs])), \
                ctx.cached(f"hop_dst{self.hops}", lambda: torch.cat([ctx.dst, hdst]))
        return (ek, ev, src, dst) if direction == 0 else (ek, ev, dst, src)

    def forward(self, h: Tensor, e: Tensor, ctx: GraphContext) -> tuple[Tensor, Tensor]:
        n, d = ctx.num_nodes, self.dim
        qkv = self.qkv(h)
        outs = []
        for direction in range(self.dirs):
            o = 3 * d * direction
            q, k, v = qkv[:, o : o + d], qkv[:, o + d : o + 2 * d], qkv[:, o + 2 * d : o + 3 * d]
            ek, ev, frm, to = self._edge_kv(e, ctx, direction)
            outs.append(self._attend(q, k, v, ek, ev, frm, to, n))
        h = self.norm1(h + self.drop(self.out(torch.cat(outs, dim=-1))))
        h = self.norm2(h + self.drop(self.ffn(h)))
        return h, self.edge(h, e, ctx.src, ctx.dst)


def _softmax(logits: Tensor, index: Tensor, n: int) -> Tensor:
    """Softmax of ``logits`` ``[E, heads]`` over the entries sharing ``index`` (what
    :func:`~wsl.nn.scatter.segment_softmax` computes; the shift is always torch's native ``amax``, which
    beats torch-scatter's kernel on CPU, and the normalizer is divided in place)."""
    top = logits.detach().new_zeros((n, logits.shape[1])).scatter_reduce_(
        0, index[:, None].expand_as(logits), logits.detach(), "amax", include_self=False)
    z = torch.exp(logits - top.index_select(0, index))
    return z / (z.new_zeros((n, z.shape[1])).index_add_(0, index, z).index_select(0, index) + 1e-16)
