"""Scale- and sign-equivariant message passing (ScaleGMN).

Besides permutations, networks with positively homogeneous activations (ReLU family) are invariant to
``W_in -> s W_in, b -> s b, W_out -> W_out / s`` per hidden neuron (``s > 0``), and networks with odd
activations (tanh, sin) to the same with ``s = ±1``. The spec records per neuron which kind applies
(``spec.symmetry.scale_kind``: 0 none, 1 positive scale, 2 sign flip). These layers keep

* node states ``h_i`` that transform as ``h_i -> s_i h_i`` (every channel times the neuron's factor),
* edge states ``e_ji`` (edge ``j -> i``) that transform as ``e_ji -> (s_i / s_j) e_ji``,

and never let a non-linearity touch them directly: linear maps *without bias* preserve the transformation,
and every non-linear effect is a multiplication by a gate computed from *invariants* (:class:`ScaleInvariant`).
The message ``e_ji * h_j`` transforms with ``s_i`` (the weight times what its source neuron holds), so
forward message passing composes equivariantly, exactly like the network's own forward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..context import GraphContext
from ..scatter import gather, scatter


def edge_scale_kind(node_kind: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """Kind of the factor ``s_dst / s_src`` of each edge: 0 when both ends are unscaled, 1 when only
    positive factors are involved, 2 (any nonzero real) as soon as a sign flip is."""
    a, b = node_kind[src], node_kind[dst]
    return torch.where((a == 2) | (b == 2), 2, torch.maximum(a, b))


def _gate(z: Tensor) -> Tensor:
    """Bounded positive gate in ``(0, 2)``, 1 at ``z = 0`` (messages pass at full strength from the start)."""
    return 2 * torch.sigmoid(z)


class ScaleInvariant(nn.Module):
    """``rho(v)``: a feature of ``v`` invariant to ``v -> s v`` for the kind of ``s``.

    kind 0 (no symmetry): ``act(W v + b)``; kind 1 (``s > 0``): ``act(W v/|v| + b)``; kind 2 (any nonzero
    ``s``, including sign flips): ``act(W v/|v| + b) + act(-W v/|v| + b)`` (symmetrized).
    """

    def __init__(self, in_dim: int, out_dim: int, act: type[nn.Module], eps: float = 1e-12) -> None:
        super().__init__()
        self.lin = nn.Linear(in_dim, out_dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.act = act()
        self.eps = eps

    def forward(self, v: Tensor, kind: Tensor) -> Tensor:
        norm = torch.sqrt((v * v).sum(-1, keepdim=True) + self.eps)
        vhat = torch.where(kind[:, None] > 0, v / norm, v)
        z = self.lin(vhat)
        out = self.act(z + self.bias)
        return out + (kind == 2)[:, None].to(out.dtype) * self.act(self.bias - z)


class ScaleEquivariantConv(nn.Module):
    """One ScaleGMN layer (``bidirectional`` = ScaleGMN-B).

    * forward message into ``i``: ``m_ji = A(e_ji * h_j) * g_ji`` with ``g`` a gate from invariants of
      ``e_ji``, ``h_j``, ``h_i`` and the edge's structure; aggregated by mean (transforms with ``s_i``);
    * backward (bidirectional): ``B(h_j) * mean_i g'_ji`` over ``j``'s outgoing edges (transforms with ``s_j``);
    * node update ``h_i += U([h_i, m_in, m_out]) * gate(rho([h_i, m_in, m_out]), context_i)`` — the joint
      invariant keeps the *relative* size of a neuron's state and its messages;
    * edge update ``e_ji += C(e_ji) * gate(rho(e_ji), rho(h_j), rho(h_i), structure)``.
    Gates are bounded to ``(0, 2)``, so states grow at most linearly per layer.
    """

    def __init__(self, dim: int, act: type[nn.Module], *, bidirectional: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.bidirectional = bidirectional
        self.rho_node = ScaleInvariant(dim, dim, act)
        self.rho_edge = ScaleInvariant(dim, dim, act)
        ngates = 2 if bidirectional else 1
        self.gate_edge = nn.Linear(dim, ngates * dim)
        self.gate_node = nn.Linear(dim, 2 * ngates * dim, bias=False)
        self.msg = nn.Linear(dim, dim, bias=False)
        self.back = nn.Linear(dim, dim, bias=False) if bidirectional else None
        parts = 3 if bidirectional else 2
        self.rho_joint = ScaleInvariant(parts * dim, dim, act)
        self.update = nn.Linear(parts * dim, dim, bias=False)
        self.update_gate = nn.Sequential(nn.Linear(2 * dim, dim), act(), nn.Linear(dim, dim))
        self.rho_node2 = ScaleInvariant(dim, dim, act)
        self.edge_gate_e = nn.Linear(dim, dim)
        self.edge_gate_n = nn.Linear(dim, 2 * dim, bias=False)
        self.edge_lin = nn.Linear(dim, dim, bias=False)

    def forward(self, h: Tensor, e: Tensor, ctx: GraphContext, node_ctx: Tensor, edge_ctx: Tensor,
                node_kind: Tensor, edge_kind: Tensor) -> tuple[Tensor, Tensor]:
        d, n, src, dst = self.dim, ctx.num_nodes, ctx.src, ctx.dst
        # ---- messages
        r = self.rho_node(h, node_kind)
        re = self.rho_edge(e, edge_kind)
        gn = self.gate_node(r).split(d, dim=-1)
        ge = self.gate_edge(re + edge_ctx).split(d, dim=-1)
        g_fwd = _gate(ge[0] + gather(gn[0], src) + gather(gn[1], dst))
        m_in = scatter(self.msg(e * gather(h, src)) * g_fwd, dst, n, "sum") / ctx.in_count.clamp(min=1)[:, None]
        parts = [h, m_in]
        if self.back is not None:
            g_bwd = _gate(ge[1] + gather(gn[2], src) + gather(gn[3], dst))
            g_bwd = scatter(g_bwd, src, n, "sum") / ctx.out_count.clamp(min=1)[:, None]
            parts.append(self.back(h) * g_bwd)
        # ---- node update
        joint = torch.cat(parts, dim=-1)
        gate = _gate(self.update_gate(torch.cat([self.rho_joint(joint, node_kind), node_ctx], dim=-1)))
        h = h + self.update(joint) * gate
        # ---- edge update
        r = self.rho_node2(h, node_kind)
        a, b = self.edge_gate_n(r).split(d, dim=-1)
        g_edge = _gate(self.edge_gate_e(re + edge_ctx) + gather(a, src) + gather(b, dst))
        e = e + self.edge_lin(e) * g_edge
        return h, e
