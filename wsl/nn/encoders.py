"""Input encoders: weight / bias values, node and edge types, positions of the (non-permutable) I/O neurons.

Everything a metanetwork sees about a neuron or weight besides its value is *structural* and therefore
invariant under the network's symmetries: node type, depth (``node_layer``), whether it is an input /
output neuron and which one (``io``, ``io_index``: those neurons are never permuted, so their index is
legitimate information), edge type and kernel offset (``edge_pos``). :class:`StructureEncoder` embeds those;
:class:`GraphEncoder` adds Fourier features of the values.

Optional per-layer normalization: a dataset can attach ``edge_norm`` ``[E, 2]`` and ``node_norm``
``[N, 6]`` (mean and std per value, from :class:`wsl.nn.stats.WeightStats`); values are standardized with
them before encoding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..graph.builder import EDGE_TYPES, NODE_FEATURES, NODE_TYPES


def sinusoidal(index: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer-style sinusoidal encoding of integer positions, ``[..] -> [.., dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=index.device, dtype=torch.float32) / half)
    ang = index.float()[..., None] * freqs
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)


class FourierFeatures(nn.Module):
    """``v -> [v, sin(2^k pi v), cos(2^k pi v)]`` per channel, ``k = 0 .. num_freqs-1`` (fixed, deterministic)."""

    def __init__(self, num_freqs: int = 6) -> None:
        super().__init__()
        self.num_freqs = num_freqs
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(num_freqs, dtype=torch.float32), persistent=False)

    def out_dim(self, in_dim: int) -> int:
        return in_dim * (2 * self.num_freqs + 1)

    def forward(self, v: Tensor) -> Tensor:
        if self.num_freqs == 0:
            return v
        ang = (v[..., None] * self.freqs).flatten(-2)
        return torch.cat([v, torch.sin(ang), torch.cos(ang)], dim=-1)


class SineFeatures(nn.Module):
    """Learned sinusoidal features ``v -> sin(v A + b)`` (``A`` ``[in, out]``, ``b`` ``[out]``, trained), the value
    encoding of GMN's reference code (``Linear(1, d)`` then ``sin``). With ``nn.Linear``'s default initialization
    the frequencies start below ``1 / sqrt(in)`` rad per unit: smooth features of standardized values, sharpened
    only where training finds it pays."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(in_dim, out_dim)
        self.dim = out_dim

    def out_dim(self, in_dim: int) -> int:
        return self.dim

    def forward(self, v: Tensor) -> Tensor:
        return torch.sin(self.lin(v))


VALUE_ENCODINGS = ("fourier", "sine")


def value_features(kind: str, in_dim: int, dim: int, num_freqs: int) -> nn.Module:
    """Encoder of ``in_dim`` value channels: ``"fourier"`` (fixed :class:`FourierFeatures`, ``num_freqs``
    octaves from pi) or ``"sine"`` (:class:`SineFeatures` of width ``dim``); both have ``out_dim(in_dim)``."""
    if kind == "fourier":
        return FourierFeatures(num_freqs)
    if kind == "sine":
        return SineFeatures(in_dim, dim)
    raise ValueError(f"value_encoding must be one of {VALUE_ENCODINGS}, got {kind!r}")


def standardized_values(batch) -> tuple[Tensor, Tensor]:
    """``(node values [N, 3], edge values [E, 1])`` as float32, standardized by ``node_norm`` / ``edge_norm``
    when the batch carries them."""
    x = batch.x.float()
    w = batch.edge_attr.float()
    node_norm = getattr(batch, "node_norm", None)
    if node_norm is not None:
        k = x.shape[1]
        x = (x - node_norm[:, :k]) / node_norm[:, k:]
    edge_norm = getattr(batch, "edge_norm", None)
    if edge_norm is not None:
        w = (w - edge_norm[:, :1]) / edge_norm[:, 1:]
    return x, w


def edge_structure(batch) -> Tensor:
    """Raw invariant edge features ``[E, len(EDGE_TYPES) + 3]``: one-hot edge type, ``asinh`` of ``edge_pos``."""
    onehot = F.one_hot(batch.edge_type.long(), len(EDGE_TYPES)).float()
    return torch.cat([onehot, torch.asinh(batch.edge_pos.float())], dim=-1)  # bounded growth for large indices


EDGE_STRUCTURE_DIM = len(EDGE_TYPES) + 3


class StructureEncoder(nn.Module):
    """Invariant embeddings of node / edge structure: ``(node [N, d], edge [E, d])``."""

    def __init__(self, dim: int, pos_dim: int = 16) -> None:
        super().__init__()
        self.pos_dim = pos_dim
        self.node_type = nn.Embedding(len(NODE_TYPES), dim)
        self.io = nn.Embedding(3, dim)
        self.io_pos = nn.Linear(pos_dim, dim, bias=False)
        self.layer_pos = nn.Linear(pos_dim, dim, bias=False)
        self.edge = nn.Linear(EDGE_STRUCTURE_DIM, dim)

    def nodes(self, batch) -> Tensor:
        io = batch.io.long()
        io_pos = sinusoidal(batch.io_index.clamp(min=0), self.pos_dim) * (io > 0).float()[:, None]
        return (self.node_type(batch.node_type.long()) + self.io(io) + self.io_pos(io_pos)
                + self.layer_pos(sinusoidal(batch.node_layer, self.pos_dim)))

    def forward(self, batch) -> tuple[Tensor, Tensor]:
        return self.nodes(batch), self.edge(edge_structure(batch))


class GraphEncoder(nn.Module):
    """Initial node and edge states ``(h [N, d], e [E, d])``.

    Nodes: value features of ``x`` (bias, running stats) projected, plus the structure embeddings, then
    ``act -> Linear``. Edges: one linear map of ``[features(w), one-hot edge type, kernel offset]`` — a
    single edge-level matmul; the value features already make it non-linear in the weight value, and the
    first layer's edge update follows. ``value_encoding`` picks the features (:func:`value_features`).
    """

    def __init__(self, dim: int, num_freqs: int = 6, act: type[nn.Module] = nn.SiLU,
                 value_encoding: str = "fourier") -> None:
        super().__init__()
        k = len(NODE_FEATURES)
        self.node_values = value_features(value_encoding, k, dim, num_freqs)
        self.edge_values = value_features(value_encoding, 1, dim, num_freqs)
        self.structure = StructureEncoder(dim)
        self.node_in = nn.Linear(self.node_values.out_dim(k), dim)
        self.edge_in = nn.Linear(self.edge_values.out_dim(1) + EDGE_STRUCTURE_DIM, dim)
        self.node_mlp = nn.Sequential(act(), nn.Linear(dim, dim))

    def forward(self, batch) -> tuple[Tensor, Tensor]:
        x, w = standardized_values(batch)
        h = self.node_in(self.node_values(x)) + self.structure.nodes(batch)
        e = self.edge_in(torch.cat([self.edge_values(w), edge_structure(batch)], dim=-1))
        return self.node_mlp(h), e
