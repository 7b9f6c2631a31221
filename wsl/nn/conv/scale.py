"""Scale- and sign-equivariant message passing (ScaleGMN).

Besides permutations, networks with positively homogeneous activations (ReLU family) are invariant to
``W_in -> s W_in, b -> s b, W_out -> W_out / s`` per hidden neuron (``s > 0``), and networks with odd
activations (tanh, sin) to the same with ``s = ±1``. The spec records per neuron which kind applies
(``spec.symmetry.scale_kind``: 0 none, 1 positive scale, 2 sign flip; an edge's factor ``s_i / s_j`` can
also be any nonzero real, kind 3, between a scaled and a sign-flipped neuron). These layers keep

* node states ``h_i`` that transform as ``h_i -> s_i h_i`` (every channel times the neuron's factor),
* edge states ``e_ji`` (edge ``j -> i``) that transform as ``e_ji -> (s_i / s_j) e_ji``,

and never let a non-linearity touch them directly: linear maps *without bias* preserve the transformation,
and every non-linear effect is a multiplication by a gate computed from *invariants* (:class:`ScaleInvariant`).
The message ``e_ji * h_j`` transforms with ``s_i`` (the weight times what its source neuron holds), so
forward message passing composes equivariantly, exactly like the network's own forward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..context import GraphContext


def edge_scale_kind(node_kind: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """Kind of the factor ``s_dst / s_src`` of each edge: 0 when both ends are unscaled, 1 when only
    positive factors are involved, 2 when only sign flips are (the factor is ±1), 3 (any nonzero real) when
    one end is scaled and the other sign-flipped."""
    a, b = node_kind[src], node_kind[dst]
    sign = (a == 2) | (b == 2)
    return torch.where(sign, torch.where((a == 1) | (b == 1), 3, 2), torch.maximum(a, b))


def _gate(z: Tensor) -> Tensor:
    """Bounded positive gate in ``(0, 2)``, 1 at ``z = 0`` (messages pass at full strength from the start)."""
    return 2 * torch.sigmoid(z)


def _half_gate(a: Tensor, x: Tensor, y: Tensor, src: Tensor, dst: Tensor) -> Tensor:
    """``sigmoid(a + x[src] + y[dst])``, ``[E, d]``: half of :func:`_gate` of an edge term ``a`` (a fresh
    tensor, overwritten) plus two gathered node terms. The factor 2 is applied where the gate is used
    (``2 * (m * s)`` is exactly ``m * (2 * s)`` in floating point) so it costs no edge-level pass."""
    return torch.sigmoid_(a.add_(x.index_select(0, src)).add_(y.index_select(0, dst)))


class ScaleInvariant(nn.Module):
    """``rho(v)``: a feature of ``v`` invariant to ``v -> s v`` for the kind of ``s``.

    kind 0 (no symmetry): ``act(W v + b)``; kind 1 (``s > 0``): ``act(W v/|v| + b)``; kind 2 (``s = ±1``):
    ``act(W v + b) + act(-W v + b)`` (symmetrized; the magnitude of ``v`` is invariant and kept, as in the
    reference ScaleGMN's ``rho(x) + rho(-x)``); kind 3 (any nonzero ``s``): both, ``act(W v/|v| + b) +
    act(-W v/|v| + b)``. ``|v|`` is ``sqrt(|v|^2 + eps)``. ``W (v / |v|)`` is computed as ``(W v) / |v|``
    (the linear map has no bias), so no normalized copy of ``v`` is materialized.

    Shapes: ``v`` ``[M, in_dim]``, ``kind`` ``[M]`` -> ``[M, out_dim]``.
    """

    def __init__(self, in_dim: int, out_dim: int, act: type[nn.Module], eps: float = 1e-12) -> None:
        super().__init__()
        self.lin = nn.Linear(in_dim, out_dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.act = act()
        self.eps = eps

    def forward(self, v: Tensor, kind: Tensor) -> Tensor:
        sumsq = torch.linalg.vector_norm(v, dim=-1, keepdim=True).square()
        inv = torch.where(((kind == 1) | (kind == 3))[:, None], torch.rsqrt(sumsq + self.eps), 1.0)
        z = self.lin(v) * inv
        return torch.addcmul(self.act(z + self.bias), (kind >= 2)[:, None].to(z.dtype), self.act(self.bias - z))


class ScaleEquivariantConv(nn.Module):
    """One ScaleGMN layer (``bidirectional`` = ScaleGMN-B).

    * forward message into ``i``: ``m_ji = A(e_ji * h_j) * g_ji`` with ``g`` a gate from invariants of
      ``e_ji``, ``h_j``, ``h_i`` and the edge's structure; aggregated by mean (transforms with ``s_i``);
    * backward (bidirectional): ``B(h_j) * mean_i g'_ji`` over ``j``'s outgoing edges (transforms with ``s_j``);
    * node update ``h_i += U([h_i, m_in, m_out]) * gate(rho([h_i, m_in, m_out]), context_i)`` — the joint
      invariant keeps the *relative* size of a neuron's state and its messages;
    * edge update ``e_ji += C(e_ji) * gate(rho(e_ji), rho(h_j), rho(h_i), structure)``.
    Gates are bounded to ``(0, 2)``, so states grow at most linearly per layer.

    Edge-level work is kept to ``[E, d]`` tensors: the edge invariant plus context is formed once and feeds
    both edge gates, each gate's linear map is a ``[E, d]`` matmul with rows of ``gate_edge`` (no ``[E, 2d]``
    output to split), gates are summed in place, and their factor 2 is applied after the edge sums.

    Shapes: ``h`` ``[N, d]``, ``e`` ``[E, d]``, ``node_ctx`` ``[N, d]``, ``edge_ctx`` ``[E, d]``, ``node_kind``
    ``[N]``, ``edge_kind`` ``[E]`` -> ``(h' [N, d], e' [E, d])``.
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

    def _edge_gate_term(self, u: Tensor, k: int) -> Tensor:
        """Row block ``k`` of ``gate_edge(u)``, ``[E, d]``."""
        d = self.dim
        return F.linear(u, self.gate_edge.weight[k * d : (k + 1) * d], self.gate_edge.bias[k * d : (k + 1) * d])

    def forward(self, h: Tensor, e: Tensor, ctx: GraphContext, node_ctx: Tensor, edge_ctx: Tensor,
                node_kind: Tensor, edge_kind: Tensor) -> tuple[Tensor, Tensor]:
        d, n, src, dst = self.dim, ctx.num_nodes, ctx.src, ctx.dst
        # ---- messages
        gn = self.gate_node(self.rho_node(h, node_kind)).split(d, dim=-1)
        u = self.rho_edge(e, edge_kind).add_(edge_ctx)  # invariant edge features, shared by all edge gates
        s_fwd = _half_gate(self._edge_gate_term(u, 0), gn[0], gn[1], src, dst)
        m = self.msg(e * h.index_select(0, src)) * s_fwd  # not in place: mul_ would clone m for backward
        m_in = m.new_zeros((n, d)).index_add_(0, dst, m).mul_(2) / ctx.in_count.clamp(min=1)[:, None]
        parts = [h, m_in]
        if self.back is not None:
            s_bwd = _half_gate(self._edge_gate_term(u, 1), gn[2], gn[3], src, dst)
            g_bwd = s_bwd.new_zeros((n, d)).index_add_(0, src, s_bwd).mul_(2) / ctx.out_count.clamp(min=1)[:, None]
            parts.append(self.back(h) * g_bwd)
        # ---- node update
        joint = torch.cat(parts, dim=-1)
        gate = _gate(self.update_gate(torch.cat([self.rho_joint(joint, node_kind), node_ctx], dim=-1)))
        h = h + self.update(joint) * gate
        # ---- edge update
        a, b = self.edge_gate_n(self.rho_node2(h, node_kind)).split(d, dim=-1)
        s_edge = _half_gate(self.edge_gate_e(u), a, b, src, dst)
        # 2 * C(e) as C with doubled weights (exact), so addcmul's backward has no scalar factor to apply
        e = torch.addcmul(e, F.linear(e, 2 * self.edge_lin.weight), s_edge)
        return h, e
