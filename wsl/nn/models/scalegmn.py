"""ScaleGMN: a graph metanetwork equivariant to permutations *and* the scale / sign symmetries of the
networks it reads (Kalogeropoulos et al., 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...graph.builder import NODE_COL
from ..context import GraphContext
from ..conv.scale import ScaleEquivariantConv, ScaleInvariant, edge_scale_kind
from ..encoders import FourierFeatures, StructureEncoder
from .base import MetaNetwork


class _ScaleEncoder(nn.Module):
    """Initial states that transform correctly: ``h = b * u`` for scaled neurons (their bias times a
    learned vector), ``e = w * u'`` for weights touching a scaled neuron; neurons / weights with no scale
    symmetry also get Fourier features of their values. Structure (types, I/O positions, depth) and the
    running statistics (unchanged by a rescaling) form an invariant context used only inside gates."""

    def __init__(self, dim: int, num_freqs: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.structure = StructureEncoder(dim)
        self.fourier = FourierFeatures(num_freqs)
        self.bias_dir = nn.Parameter(torch.randn(dim))
        self.weight_dir = nn.Parameter(torch.randn(dim))
        self.node_free = nn.Linear(self.fourier.out_dim(3), dim)
        self.edge_free = nn.Linear(self.fourier.out_dim(1), dim)
        self.stats = nn.Linear(self.fourier.out_dim(2), dim)
        self.ctx_mlp = nn.Sequential(act(), nn.Linear(dim, dim))

    def forward(self, batch, node_kind: Tensor, edge_kind: Tensor):
        # Centering by dataset statistics would break scale / sign equivariance; dividing every tensor by its
        # dataset std (one constant per tensor, attached by a normalizing dataset as edge_norm / node_norm)
        # commutes with w_ji -> s_i w_ji / s_j and with permutations, so only that part is applied.
        x, w = batch.x.float(), batch.edge_attr.float()
        node_norm = getattr(batch, "node_norm", None)
        if node_norm is not None:
            x = x / node_norm[:, x.shape[1]:]
        edge_norm = getattr(batch, "edge_norm", None)
        if edge_norm is not None:
            w = w / edge_norm[:, 1:]
        bias = x[:, NODE_COL["bias"] : NODE_COL["bias"] + 1]
        free_n = (node_kind == 0).float()[:, None]
        free_e = (edge_kind == 0).float()[:, None]
        hs, es = self.structure(batch)
        h = bias * self.bias_dir + free_n * (self.node_free(self.fourier(x)) + hs)
        e = w * self.weight_dir + free_e * (self.edge_free(self.fourier(w)) + es)
        stats = torch.cat([x[:, 1:2], x[:, 2:3]], dim=-1)
        node_ctx = self.ctx_mlp(hs + self.stats(self.fourier(stats)))
        return h, e, node_ctx, es


class ScaleGMN(MetaNetwork):
    """Scale-equivariant graph metanetwork (``bidirectional=True`` is ScaleGMN-B, the default).

    Per neuron, the symmetry kind comes from the graph's spec (``spec.symmetry.scale_kind``: ReLU-family
    neurons get positive rescaling, tanh / sin neurons sign flips, everything else none), so one model
    handles any mix of architectures. The invariant output is unchanged by any ``spec.sample_symmetry()``
    element (permutation and scale / sign factors); the equivariant edge output transforms like the weights
    (``w_ji -> s_i w_ji / s_j`` and permuted), the node output like biases. See
    :mod:`wsl.nn.conv.scale` for how the layers stay equivariant.
    """

    def make_encoder(self, num_freqs: int) -> nn.Module:
        return _ScaleEncoder(self.hidden_dim, num_freqs, self.act)

    def make_layer(self, index: int) -> nn.Module:
        return ScaleEquivariantConv(self.hidden_dim, self.act, bidirectional=self.bidirectional)

    def __init__(self, out_dim: int = 1, **kwargs) -> None:
        if kwargs.get("readout") == "nodes+edges":
            raise ValueError("ScaleGMN reads the nodes (readout='nodes') or the I/O neurons (readout='io'); its "
                             "edge states scale with the weights, so readout='nodes+edges' is not available")
        super().__init__(out_dim, **kwargs)
        d = self.hidden_dim
        self.rho_out = ScaleInvariant(d, d, self.act)
        # equivariant heads: linear maps without bias (a bias would not scale with the neuron)
        self.node_head = nn.Linear(d, self.node_head.out_features, bias=False)
        self.edge_head = nn.Linear(d, self.edge_head.out_features, bias=False)

    def process(self, batch, ctx: GraphContext) -> tuple[Tensor, Tensor]:
        node_kind = ctx.scale_kind()
        edge_kind = edge_scale_kind(node_kind, ctx.src, ctx.dst)
        h, e, node_ctx, edge_ctx = self.encoder(batch, node_kind, edge_kind)
        for layer in self.layers:
            h, e = layer(h, e, ctx, node_ctx, edge_ctx, node_kind, edge_kind)
            if self.dropout > 0:  # an elementwise 0 / (1 - p) mask commutes with the per-neuron factors
                h = F.dropout(h, self.dropout, self.training)
        ctx._extra["invariant_nodes"] = self.rho_out(h, node_kind) + node_ctx
        return h, e

    def graph_readout(self, h: Tensor, ctx: GraphContext, e: Tensor | None = None) -> Tensor:
        return self.readout(ctx._extra["invariant_nodes"], ctx)
