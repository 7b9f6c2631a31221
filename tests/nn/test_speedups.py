"""The optimized NG-GNN / relational-transformer / ScaleGMN layers compute what the straightforward versions did.

Each ``_Reference*`` module below is a readable, unoptimized copy of a layer as it was *before* the speed work
of issue #13 (plain ``index_select`` / ``index_add`` / ``scatter_reduce``, no fused kernels, no custom
autograd). The tests load the optimized layer's ``state_dict`` into the reference with ``strict=True`` (same
keys, so existing checkpoints still load) and compare outputs *and* gradients (inputs and every parameter)
in float64 on batches that mix MLPs, a residual CNN and a transformer.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from wsl.nn import NGGNN, RelationalTransformer, ScaleGMN
from wsl.nn.context import GraphContext
from wsl.nn.conv.scale import edge_scale_kind
from wsl.nn.scatter import scatter_extreme

from .archs import mixed_graphs


# ------------------------------------------------------------------------------------ plain reductions
def _gather(x: Tensor, index: Tensor) -> Tensor:
    return x[index]


def _sum(x: Tensor, index: Tensor, n: int) -> Tensor:
    return x.new_zeros((n, *x.shape[1:])).index_add(0, index, x)


def _extreme(x: Tensor, index: Tensor, n: int, reduce: str) -> Tensor:
    idx = index.view(-1, *([1] * (x.dim() - 1))).expand_as(x)
    return x.new_zeros((n, *x.shape[1:])).scatter_reduce(0, idx, x, reduce, include_self=False)


def _reduce(x: Tensor, index: Tensor, n: int, reduce: str, counts: Tensor, eps: float = 1e-5) -> Tensor:
    c = counts.clamp(min=1)[:, None]
    if reduce == "mean":
        return _sum(x, index, n) / c
    if reduce == "std":
        mean = _sum(x, index, n) / c
        var = (_sum(x * x, index, n) / c - mean * mean).clamp(min=0)
        return torch.sqrt(var + eps) * (counts > 0).to(x.dtype)[:, None]
    return _extreme(x, index, n, "amax" if reduce == "max" else "amin")


def _softmax(logits: Tensor, index: Tensor, n: int) -> Tensor:
    top = _extreme(logits.detach(), index, n, "amax")
    z = torch.exp(logits - top[index])
    return z / (_sum(z, index, n)[index] + 1e-16)


# ------------------------------------------------------------------------------------ shared blocks
class _RefEdgeUpdate(nn.Module):
    """``e + W_o act(W_e e + W_s h[src] + W_d h[dst])`` (parameter names as in ``conv.common.EdgeUpdate``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin_edge = nn.Linear(dim, dim)
        self.lin_node = nn.Linear(dim, 2 * dim, bias=False)
        self.lin_out = nn.Linear(dim, dim, bias=False)

    def forward(self, h: Tensor, e: Tensor, src: Tensor, dst: Tensor) -> Tensor:
        hs, hd = self.lin_node(h).chunk(2, dim=-1)
        return e + self.lin_out(torch.relu(self.lin_edge(e) + hs[src] + hd[dst]))


class _RefNodeUpdate(nn.Module):
    def __init__(self, dim: int, in_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: Tensor, inputs: Tensor) -> Tensor:
        return self.norm(h + self.mlp(inputs))


# ------------------------------------------------------------------------------------ NG-GNN (PNA)
class _ReferencePNA(nn.Module):
    """PNAConv before the speed work: FiLM messages, every aggregator and scaler, then the edge update."""

    def __init__(self, dim: int, bidirectional: bool, aggregators: tuple[str, ...], scalers: tuple[str, ...],
                 delta: float = math.log(17.0)) -> None:
        super().__init__()
        dirs = 2 if bidirectional else 1
        self.dim, self.dirs, self.aggregators, self.scalers, self.delta = dim, dirs, aggregators, scalers, delta
        self.msg_node = nn.Linear(dim, dirs * dim)
        self.film = nn.Linear(dim, dirs * 2 * dim)
        self.post = nn.ModuleList([nn.Linear(dim * len(aggregators) * len(scalers), dim) for _ in range(dirs)])
        self.node = _RefNodeUpdate(dim, dim * (1 + dirs))
        self.edge = _RefEdgeUpdate(dim)

    def _aggregate(self, msg: Tensor, index: Tensor, counts: Tensor, n: int) -> Tensor:
        agg = torch.cat([_reduce(msg, index, n, a, counts) for a in self.aggregators], dim=-1)
        logd = torch.log(counts.clamp(min=1) + 1)[:, None]
        factor = {"identity": 1.0, "amplification": logd / self.delta, "attenuation": self.delta / logd}
        return torch.cat([agg * factor[s] for s in self.scalers], dim=-1)

    def forward(self, h: Tensor, e: Tensor, ctx: GraphContext) -> tuple[Tensor, Tensor]:
        d, n = self.dim, ctx.num_nodes
        node_msg = self.msg_node(h).split(d, dim=-1)
        film = self.film(e).split(2 * d, dim=-1)
        parts = [h]
        for k, (frm, to, cnt) in enumerate([(ctx.src, ctx.dst, ctx.in_count), (ctx.dst, ctx.src, ctx.out_count)]
                                           [: self.dirs]):
            gamma, beta = film[k].split(d, dim=-1)
            msg = node_msg[k][frm] * (1 + gamma) + beta
            parts.append(self.post[k](self._aggregate(msg, to, cnt, n)))
        h = self.node(h, torch.cat(parts, dim=-1))
        return h, self.edge(h, e, ctx.src, ctx.dst)


# ------------------------------------------------------------------------------------ relational transformer
class _ReferenceAttention(nn.Module):
    """RelationalAttentionConv before the speed work: per-direction gathers, softmax over in-edges, edge update."""

    def __init__(self, dim: int, heads: int, bidirectional: bool, hops: int) -> None:
        super().__init__()
        dirs = 2 if bidirectional else 1
        self.dim, self.heads, self.hops, self.dirs = dim, heads, hops, dirs
        self.qkv = nn.Linear(dim, 3 * dim * dirs)
        self.edge_kv = nn.Linear(dim, 2 * dim * dirs, bias=False)
        self.hop_kv = nn.Embedding(max(hops - 1, 1), 2 * dim * dirs) if hops > 1 else None
        self.out = nn.Linear(dim * dirs, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.edge = _RefEdgeUpdate(dim)

    def forward(self, h: Tensor, e: Tensor, ctx: GraphContext) -> tuple[Tensor, Tensor]:
        n, d, hd = ctx.num_nodes, self.dim, self.dim // self.heads
        qkv = self.qkv(h).split(3 * d, dim=-1)
        ekv = self.edge_kv(e).split(2 * d, dim=-1)
        src, dst = ctx.src, ctx.dst
        if self.hop_kv is not None:
            (hs, hdst), length = ctx.hop_edges(self.hops)
            hkv = self.hop_kv(length - 2).split(2 * d, dim=-1)
            src, dst = torch.cat([src, hs]), torch.cat([dst, hdst])
            ekv = tuple(torch.cat([a, b]) for a, b in zip(ekv, hkv))
        outs = []
        for k in range(self.dirs):
            q, key, v = qkv[k].split(d, dim=-1)
            ek, ev = ekv[k].split(d, dim=-1)
            frm, to = (src, dst) if k == 0 else (dst, src)
            kk = (key[frm] + ek).view(-1, self.heads, hd)
            logits = (q[to].view(-1, self.heads, hd) * kk).sum(-1) / math.sqrt(hd)
            alpha = _softmax(logits, to, n)
            vv = (v[frm] + ev).view(-1, self.heads, hd) * alpha[..., None]
            outs.append(_sum(vv.reshape(-1, d), to, n))
        h = self.norm1(h + self.out(torch.cat(outs, dim=-1)))
        h = self.norm2(h + self.ffn(h))
        return h, self.edge(h, e, ctx.src, ctx.dst)


# ------------------------------------------------------------------------------------ ScaleGMN
class _RefInvariant(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.lin = nn.Linear(in_dim, out_dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.eps = eps

    def forward(self, v: Tensor, kind: Tensor) -> Tensor:
        norm = torch.sqrt((v * v).sum(-1, keepdim=True) + self.eps)
        # kinds 1 (s > 0) and 3 (any s != 0) normalize; 2 (s = ±1) and 3 symmetrize
        z = self.lin(torch.where((kind[:, None] == 1) | (kind[:, None] == 3), v / norm, v))
        return torch.relu(z + self.bias) + (kind >= 2)[:, None].to(z.dtype) * torch.relu(self.bias - z)


class _ReferenceScaleConv(nn.Module):
    """ScaleEquivariantConv before the speed work: gates from invariants, mean messages, edge update."""

    def __init__(self, dim: int, bidirectional: bool) -> None:
        super().__init__()
        self.dim = dim
        ngates, parts = (2, 3) if bidirectional else (1, 2)
        self.rho_node = _RefInvariant(dim, dim)
        self.rho_edge = _RefInvariant(dim, dim)
        self.gate_edge = nn.Linear(dim, ngates * dim)
        self.gate_node = nn.Linear(dim, 2 * ngates * dim, bias=False)
        self.msg = nn.Linear(dim, dim, bias=False)
        self.back = nn.Linear(dim, dim, bias=False) if bidirectional else None
        self.rho_joint = _RefInvariant(parts * dim, dim)
        self.update = nn.Linear(parts * dim, dim, bias=False)
        self.update_gate = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.rho_node2 = _RefInvariant(dim, dim)
        self.edge_gate_e = nn.Linear(dim, dim)
        self.edge_gate_n = nn.Linear(dim, 2 * dim, bias=False)
        self.edge_lin = nn.Linear(dim, dim, bias=False)

    def forward(self, h: Tensor, e: Tensor, ctx: GraphContext, node_ctx: Tensor, edge_ctx: Tensor,
                node_kind: Tensor, edge_kind: Tensor) -> tuple[Tensor, Tensor]:
        d, n, src, dst = self.dim, ctx.num_nodes, ctx.src, ctx.dst
        re = self.rho_edge(e, edge_kind)
        gn = self.gate_node(self.rho_node(h, node_kind)).split(d, dim=-1)
        ge = self.gate_edge(re + edge_ctx).split(d, dim=-1)
        g_fwd = 2 * torch.sigmoid(ge[0] + gn[0][src] + gn[1][dst])
        m_in = _sum(self.msg(e * h[src]) * g_fwd, dst, n) / ctx.in_count.clamp(min=1)[:, None]
        parts = [h, m_in]
        if self.back is not None:
            g_bwd = 2 * torch.sigmoid(ge[1] + gn[2][src] + gn[3][dst])
            parts.append(self.back(h) * _sum(g_bwd, src, n) / ctx.out_count.clamp(min=1)[:, None])
        joint = torch.cat(parts, dim=-1)
        gate = 2 * torch.sigmoid(self.update_gate(torch.cat([self.rho_joint(joint, node_kind), node_ctx], dim=-1)))
        h = h + self.update(joint) * gate
        a, b = self.edge_gate_n(self.rho_node2(h, node_kind)).split(d, dim=-1)
        g_edge = 2 * torch.sigmoid(self.edge_gate_e(re + edge_ctx) + a[src] + b[dst])
        return h, e + self.edge_lin(e) * g_edge


# ------------------------------------------------------------------------------------ harness
DIM = 16


@pytest.fixture(scope="module")
def ctx() -> GraphContext:
    graphs = mixed_graphs(0) + mixed_graphs(7)
    return GraphContext.from_batch(Batch.from_data_list(graphs), dtype=torch.float64)


def _randomize(module: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():  # LayerNorm / invariant biases start at 1 / 0: make every parameter count
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.4)


def _compare(layer: nn.Module, ref: nn.Module, ctx: GraphContext, *extra: Tensor, seed: int = 0) -> None:
    """Same state_dict keys; same outputs and gradients (inputs and parameters) under random cotangents."""
    layer, ref = layer.double(), ref.double()
    _randomize(layer, seed)
    assert sorted(layer.state_dict()) == sorted(ref.state_dict())
    ref.load_state_dict(layer.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(seed + 1)
    n, m = ctx.num_nodes, ctx.src.numel()
    h = torch.randn(n, DIM, generator=gen, dtype=torch.float64)
    e = torch.randn(m, DIM, generator=gen, dtype=torch.float64)
    grads = []
    for module in (layer, ref):
        hi, ei = h.clone().requires_grad_(), e.clone().requires_grad_()
        out = module(hi, ei, ctx, *extra)
        cot = torch.Generator().manual_seed(seed + 2)
        loss = sum((o * torch.randn(o.shape, generator=cot, dtype=o.dtype)).sum() for o in out)
        params = [p for _, p in sorted(module.named_parameters())]
        grads.append((out, torch.autograd.grad(loss, [hi, ei, *params])))
    (out, g), (out_ref, g_ref) = grads
    with torch.no_grad():  # inference takes shortcuts (no masks / saved tensors): same outputs
        out_nograd = layer(h, e, ctx, *extra)
    for a, b, c in zip(out, out_ref, out_nograd):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(c, b)
    names = ["h", "e"] + sorted(dict(layer.named_parameters()))
    for name, a, b in zip(names, g, g_ref):
        torch.testing.assert_close(a, b, msg=lambda s, name=name: f"gradient of {name}: {s}")


@pytest.mark.parametrize("bidirectional, aggregators, scalers", [
    (True, ("mean", "min", "max", "std"), ("identity", "amplification", "attenuation")),
    (False, ("max", "std"), ("attenuation",)),
    (True, ("min", "mean"), ("identity", "amplification")),
])
def test_pna_layer_matches_reference(ctx, bidirectional, aggregators, scalers):
    layer = NGGNN(hidden_dim=DIM, num_layers=1, bidirectional=bidirectional, aggregators=aggregators,
                  scalers=scalers).layers[0]
    ref = _ReferencePNA(DIM, bidirectional, aggregators, scalers)
    _compare(layer, ref, ctx)


@pytest.mark.parametrize("heads, bidirectional, hops", [(4, True, 1), (2, False, 1), (4, True, 3), (1, False, 2)])
def test_attention_layer_matches_reference(ctx, heads, bidirectional, hops):
    layer = RelationalTransformer(hidden_dim=DIM, num_layers=1, heads=heads, bidirectional=bidirectional,
                                  hops=hops).layers[0]
    _compare(layer, _ReferenceAttention(DIM, heads, bidirectional, hops), ctx, seed=heads + hops)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_scale_layer_matches_reference(ctx, bidirectional):
    layer = ScaleGMN(hidden_dim=DIM, num_layers=1, bidirectional=bidirectional).layers[0]
    node_kind = ctx.scale_kind()
    edge_kind = edge_scale_kind(node_kind, ctx.src, ctx.dst)
    assert set(node_kind.tolist()) >= {0, 1, 2}  # the batch exercises every invariant branch
    gen = torch.Generator().manual_seed(5)
    node_ctx = torch.randn(ctx.num_nodes, DIM, generator=gen, dtype=torch.float64)
    edge_ctx = torch.randn(ctx.src.numel(), DIM, generator=gen, dtype=torch.float64)
    _compare(layer, _ReferenceScaleConv(DIM, bidirectional), ctx, node_ctx, edge_ctx, node_kind, edge_kind)


@pytest.mark.parametrize("reduce", ["max", "min"])
def test_scatter_extreme_matches_scatter_reduce_with_ties(reduce):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 4, (200, 5), generator=gen).double() + 0.5  # many ties, none at the empty-row 0
    index = torch.randint(0, 40, (200,), generator=gen)
    index[index == 7] = 8  # row 7 receives nothing: stays 0
    cot = torch.randn(41, 5, generator=gen, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = scatter_extreme(xa, index, 41, reduce)
    out_ref = _extreme(xb, index, 41, "amax" if reduce == "max" else "amin")
    torch.testing.assert_close(out, out_ref)
    (out * cot).sum().backward()
    (out_ref * cot).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    assert out[7].eq(0).all() and out[40].eq(0).all()
