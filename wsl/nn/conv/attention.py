"""Sparse relational transformer layer: multi-head attention restricted to graph edges (plus, optionally,
k-hop neighbours), conditioned on edge states; no nodes x nodes tensor anywhere.

Speed notes (issue #13): one direction of attention is one autograd node (:class:`_EdgeAttention`). The
edge terms enter through the matmul's accumulator (``k[frm] + e W_k^T`` is one ``addmm_`` into the gathered
keys, likewise values), so no ``[E, 2d * dirs]`` projection is allocated, split or concatenated in
backward; the softmax shift uses torch's native ``amax``; the backward reuses the saved gathered queries,
keys and values and writes the edge-state gradient with two accumulating matmuls.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..context import GraphContext
from .common import EdgeUpdate, norm_layer


class _EdgeAttention(torch.autograd.Function):
    """``out_i = sum_j alpha_jih (v_j + W_v e_ji)_h`` with ``alpha = softmax_j(q_ih . (k_j + W_k e_ji)_h / sqrt(d_h))``
    over the pairs ``(frm -> to)``; pairs past the first ``E`` (``k``-hop pairs) use ``extra_k`` / ``extra_v``
    instead of ``W e``.

    Shapes: ``q`` / ``k`` / ``v`` ``[N, d]``, ``e`` ``[E, d]``, ``w_k`` / ``w_v`` ``[d, d]``, ``extra_k`` /
    ``extra_v`` ``[E2, d]`` or None, ``frm`` / ``to`` ``[E + E2]`` -> ``[N, d]``.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, e: Tensor, w_k: Tensor, w_v: Tensor,  # type: ignore[override]
                extra_k: Tensor | None, extra_v: Tensor | None, frm: Tensor, to: Tensor, n: int,
                heads: int) -> Tensor:
        m, d = e.shape[0], q.shape[1]
        hd = d // heads
        kk = k.index_select(0, frm)
        kk[:m].addmm_(e, w_k.t())
        vs = v.index_select(0, frm)
        vs[:m].addmm_(e, w_v.t())
        if extra_k is not None:
            kk[m:].add_(extra_k)
            vs[m:].add_(extra_v)
        qg = q.index_select(0, to)
        logits = (qg.view(-1, heads, hd) * kk.view(-1, heads, hd)).sum(-1).div_(math.sqrt(hd))
        alpha = _softmax(logits, to, n)
        out = q.new_zeros((n, d)).index_add_(0, to, (vs.view(-1, heads, hd) * alpha[..., None]).view(-1, d))
        ctx.n, ctx.heads = n, heads
        ctx.has_extra = extra_k is not None
        ctx.save_for_backward(qg, kk, vs, alpha, e, w_k, w_v, frm, to)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        qg, kk, vs, alpha, e, w_k, w_v, frm, to = ctx.saved_tensors
        n, heads, m, d = ctx.n, ctx.heads, e.shape[0], qg.shape[1]
        hd = d // heads
        g_vs = grad.index_select(0, to).view(-1, heads, hd)
        g_alpha = (g_vs * vs.view(-1, heads, hd)).sum(-1)
        g_vs = g_vs.mul_(alpha[..., None]).view(-1, d)
        # softmax: d logit = alpha * (d alpha - sum over the segment of alpha * d alpha)
        pa = alpha * g_alpha
        g_logit = pa.sub_(alpha * pa.new_zeros((n, heads)).index_add_(0, to, pa).index_select(0, to))
        g_logit = g_logit.div_(math.sqrt(hd))[..., None]
        g_kk = (qg.view(-1, heads, hd) * g_logit).view(-1, d)
        g_qg = (kk.view(-1, heads, hd) * g_logit).view(-1, d)
        g_q = qg.new_zeros((n, d)).index_add_(0, to, g_qg)
        g_k = qg.new_zeros((n, d)).index_add_(0, frm, g_kk)
        g_v = qg.new_zeros((n, d)).index_add_(0, frm, g_vs)
        g_e = g_wk = g_wv = None
        if ctx.needs_input_grad[3]:
            g_e = torch.mm(g_kk[:m], w_k).addmm_(g_vs[:m], w_v)
        if ctx.needs_input_grad[4]:
            g_wk = g_kk[:m].t() @ e
        if ctx.needs_input_grad[5]:
            g_wv = g_vs[:m].t() @ e
        g_xk = g_kk[m:] if ctx.has_extra else None
        g_xv = g_vs[m:] if ctx.has_extra else None
        return g_q, g_k, g_v, g_e, g_wk, g_wv, g_xk, g_xv, None, None, None, None



class RelationalAttentionConv(nn.Module):
    """One relational-transformer block.

    Node ``i`` attends over the sources ``j`` of its incoming edges with logits
    ``q_i . (k_j + k(e_ji)) / sqrt(d_head)`` and values ``v_j + v(e_ji)`` (the edge state enters both, as in
    NG-T's relational attention); ``bidirectional`` adds attention over outgoing edges. With ``hops > 1``
    the neighbourhood also contains nodes ``2..hops`` edges away, whose relation is a learned embedding of
    the path length. Then a feed-forward block on nodes and an edge update from ``[e, h_src, h_dst]``.

    Shapes: ``h`` ``[N, d]``, ``e`` ``[E, d]`` -> ``(h' [N, d], e' [E, d])``.
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

    def forward(self, h: Tensor, e: Tensor, ctx: GraphContext) -> tuple[Tensor, Tensor]:
        n, d = ctx.num_nodes, self.dim
        qkv, w = self.qkv(h), self.edge_kv.weight
        pairs = (ctx.src, ctx.dst)
        hop_kv = None
        if self.hop_kv is not None:
            (hs, hdst), length = ctx.hop_edges(self.hops)
            hop_kv = self.hop_kv(length - 2)
            pairs = ctx.cached(f"hop_pairs{self.hops}", lambda: (torch.cat([ctx.src, hs]), torch.cat([ctx.dst, hdst])))
        outs = []
        for direction in range(self.dirs):
            o, r = 3 * d * direction, 2 * d * direction
            q, k, v = qkv[:, o : o + d], qkv[:, o + d : o + 2 * d], qkv[:, o + 2 * d : o + 3 * d]
            extra_k = hop_kv[:, r : r + d] if hop_kv is not None else None
            extra_v = hop_kv[:, r + d : r + 2 * d] if hop_kv is not None else None
            frm, to = pairs if direction == 0 else pairs[::-1]
            outs.append(_EdgeAttention.apply(q, k, v, e, w[r : r + d], w[r + d : r + 2 * d], extra_k, extra_v,
                                             frm, to, n, self.heads))
        h = self.norm1(h + self.drop(self.out(torch.cat(outs, dim=-1))))
        h = self.norm2(h + self.drop(self.ffn(h)))
        return h, self.edge(h, e, ctx.src, ctx.dst)


def _softmax(logits: Tensor, index: Tensor, n: int) -> Tensor:
    """Softmax of ``logits`` ``[E, heads]`` over the entries sharing ``index``, as
    :func:`~wsl.nn.scatter.segment_softmax` computes it, without autograd (called inside
    :class:`_EdgeAttention`); the shift is torch's native ``amax`` (faster than torch-scatter's on CPU)."""
    top = logits.new_zeros((n, logits.shape[1])).scatter_reduce_(
        0, index[:, None].expand_as(logits), logits, "amax", include_self=False)
    z = torch.exp(logits - top.index_select(0, index))
    return z.div_(z.new_zeros((n, z.shape[1])).index_add_(0, index, z).index_select(0, index).add_(1e-16))
