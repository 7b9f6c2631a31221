"""Neural Graphs layer: PNA aggregation (mean / min / max / std with degree scalers) of FiLM-modulated
messages, followed by an edge update.

Speed notes (issue #13). Edges outnumber nodes 10-20x in parameter graphs, so a layer costs what it does per
edge. The FiLM message and all four aggregators of one direction run as one autograd node
(:class:`_FilmAggregate`): the ``mean`` and ``std`` share one edge sum, ``max`` / ``min`` keep a boolean mask
of the winning entries instead of re-gathering with an ``[E, d]`` index in backward, and the backward builds
the message gradient once, from node-level coefficients (``mean`` and ``std`` reduce to ``A[to] + B[to] * msg``).
``gamma`` / ``beta`` are two ``[E, d]`` matmuls rather than slices of one ``[E, 4d]`` output, so no
wide edge tensor is allocated or concatenated in backward.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..context import GraphContext
from ..scatter import as_float, extreme_with_mask
from .common import EdgeUpdate, NodeUpdate

AGGREGATORS = ("mean", "min", "max", "std")
SCALERS = ("identity", "amplification", "attenuation")
STD_EPS = 1e-5


class _FilmAggregate(torch.autograd.Function):
    """``msg = x[frm] * (e W_g^T + b_g1) + (e W_b^T + b_b)`` reduced into ``to`` by each aggregator, concatenated.

    Shapes: ``x`` ``[N, d]``, ``e`` ``[E, d]``, ``w_g`` / ``w_b`` ``[d, d]``, ``b_g1`` / ``b_b`` ``[d]``,
    ``frm`` / ``to`` ``[E]``, ``counts`` ``[N]`` (edges per ``to`` row) -> ``[N, d * len(aggregators)]``.
    ``std`` is ``sqrt(var + 1e-5)`` of the population variance (0 for rows without edges); ``max`` / ``min``
    split the gradient among ties. The FiLM matmuls live inside so that the message is built in the
    ``beta`` buffer and the edge-state gradient is accumulated by ``addmm_``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, e: Tensor, w_g: Tensor, b_g1: Tensor, w_b: Tensor, b_b: Tensor,  # type: ignore[override]
                frm: Tensor, to: Tensor, counts: Tensor, n: int, aggregators: tuple[str, ...]) -> Tensor:
        gamma1 = torch.addmm(b_g1, e, w_g.t())
        xg = x.index_select(0, frm)
        msg = torch.addmm(b_b, e, w_b.t()).addcmul_(xg, gamma1)
        d = msg.shape[1]
        c = counts.clamp(min=1)[:, None].to(msg.dtype)
        outs: dict[str, Tensor] = {}
        saved: dict[str, Tensor] = {}
        if "mean" in aggregators or "std" in aggregators:
            outs["mean"] = mean = msg.new_zeros((n, d)).index_add_(0, to, msg).div_(c)
        if "std" in aggregators:
            var_raw = msg.new_zeros((n, d)).index_add_(0, to, msg * msg).div_(c).sub_(mean * mean)
            sd = var_raw.clamp(min=0).add_(STD_EPS).sqrt_()
            outs["std"] = sd * (counts > 0).to(msg.dtype)[:, None]
            saved.update(mean=mean, var_raw=var_raw, sd=sd)
        for a in ("max", "min"):
            if a in aggregators:
                # no masks kept when nothing needs gradients (inference)
                outs[a], hit, ties = extreme_with_mask(msg, to, n, a, mask=any(ctx.needs_input_grad),
                                                       counts=counts)
                if hit is not None:
                    saved[f"{a}_hit"] = hit
                if ties is not None:
                    saved[f"{a}_ties"] = ties
        ctx.aggregators, ctx.n, ctx.keys = aggregators, n, list(saved)
        ctx.save_for_backward(xg, gamma1, msg if "std" in aggregators else None, frm, to, counts, x, e, w_g,
                              w_b, *saved.values())
        return torch.cat([outs[a] for a in aggregators], dim=-1)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        xg, gamma1, msg, frm, to, counts, x, e, w_g, w_b, *rest = ctx.saved_tensors
        saved = dict(zip(ctx.keys, rest))
        grads = dict(zip(ctx.aggregators, grad.split(gamma1.shape[1], dim=-1)))
        c = counts.clamp(min=1)[:, None].to(grad.dtype)
        # d msg = A[to] + B[to] * msg (mean, std) + sum over max / min of G[to] * hit
        a_coef = grads["mean"] / c if "mean" in grads else None
        b_coef = None
        if "std" in grads:
            pos = (counts > 0).to(grad.dtype)[:, None] * (saved["var_raw"] >= 0).to(grad.dtype)
            g_var = grads["std"] * pos / (2 * saved["sd"])
            b_coef = 2 * g_var / c
            a_std = -saved["mean"] * b_coef
            a_coef = a_std if a_coef is None else a_coef + a_std
        gm = None
        if a_coef is not None:
            gm = a_coef.index_select(0, to)
        if b_coef is not None:
            gm.addcmul_(b_coef.index_select(0, to), msg)
        for a in ("max", "min"):
            if a in grads:
                g = grads[a] / saved[f"{a}_ties"] if f"{a}_ties" in saved else grads[a]
                hit = as_float(saved[f"{a}_hit"], grad.dtype)
                gm = g.index_select(0, to).mul_(hit) if gm is None else gm.addcmul_(g.index_select(0, to), hit)
        need = ctx.needs_input_grad
        g_x = x.new_zeros(x.shape).index_add_(0, frm, gm * gamma1) if need[0] else None
        g_gamma = gm * xg
        g_e = torch.mm(g_gamma, w_g).addmm_(gm, w_b) if need[1] else None
        g_wg = g_gamma.t() @ e if need[2] else None
        g_bg = g_gamma.sum(0) if need[3] else None
        g_wb = gm.t() @ e if need[4] else None
        g_bb = gm.sum(0) if need[5] else None
        return g_x, g_e, g_wg, g_bg, g_wb, g_bb, None, None, None, None, None


class PNAConv(nn.Module):
    """One NG-GNN layer.

    Message along ``j -> i``: ``m = gamma(e_ji) * W h_j + beta(e_ji)`` (FiLM: the weight modulates what the
    source neuron sends). Each node aggregates its incoming messages with every aggregator, multiplies by
    every degree scaler (``log(d+1)/delta``, ``delta/log(d+1)``), and is updated from the concatenation;
    ``bidirectional`` adds the same over outgoing edges with separate weights. Then edges are updated from
    ``[e, h_src, h_dst]``. ``delta`` is PNA's average ``log(degree + 1)``; it only sets the scalers' scale.

    Shapes: ``h`` ``[N, d]``, ``e`` ``[E, d]`` -> ``(h' [N, d], e' [E, d])``.
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

    def _scale(self, agg: Tensor, counts: Tensor) -> Tensor:
        """``[N, k] -> [N, k * len(scalers)]``: the aggregates times every degree scaler (node level)."""
        logd = torch.log(counts.clamp(min=1) + 1)[:, None]
        factor = {"identity": None, "amplification": logd / self.delta, "attenuation": self.delta / logd}
        return torch.cat([agg if factor[s] is None else agg * factor[s] for s in self.scalers], dim=-1)

    def _direction(self, node_msg: Tensor, e: Tensor, frm: Tensor, to: Tensor, counts: Tensor, n: int,
                   k: int) -> Tensor:
        """Aggregated FiLM messages of direction ``k`` (0: along edges, 1: against them), ``[N, d * #aggr]``.
        ``1 + gamma`` is folded into gamma's bias."""
        d, w, b = self.dim, self.film.weight, self.film.bias
        g0, b0 = 2 * k * d, 2 * k * d + d
        return _FilmAggregate.apply(node_msg[:, k * d : (k + 1) * d], e, w[g0:b0], b[g0:b0] + 1, w[b0 : b0 + d],
                                    b[b0 : b0 + d], frm, to, counts, n, self.aggregators)

    def forward(self, h: Tensor, e: Tensor, ctx: GraphContext) -> tuple[Tensor, Tensor]:
        n = ctx.num_nodes
        node_msg = self.msg_node(h)
        parts = [h]
        directions = [(ctx.src, ctx.dst, ctx.in_count), (ctx.dst, ctx.src, ctx.out_count)]
        for k in range(2 if self.bidirectional else 1):
            frm, to, cnt = directions[k]
            agg = self._direction(node_msg, e, frm, to, cnt, n, k)
            parts.append(self.post[k](self._scale(agg, cnt)))
        h = self.node(h, torch.cat(parts, dim=-1))
        return h, self.edge(h, e, ctx.src, ctx.dst)
