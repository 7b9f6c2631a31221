"""The Graphormer layers of ghn3's GHN-3, with the reference's parameter names (``gnn.<i>.ln1`` ...).

A stack of pre-norm transformer layers over all nodes of the graph (dense attention), the first of which
reads the graph (Ying et al., *Do Transformers Really Perform Bad for Graph Representation?*, 2021):

* **Centrality and input distance.** Before attending, layer 0 adds to each node embedding
  ``E_in(min(in_degree, 100)) + E_out(min(out_degree, 100)) + E_dist(min(d(node 0, v), 1000))``: degrees
  count real edges (distance 1) only, ``d`` is the first row of the distance matrix (0 where node 0 does not
  reach ``v`` within the virtual-edge cutoff, and for node 0 itself).
* **Edge bias.** Layer 0 embeds each pair's distances in both directions, ``E_edge(A[u, v] + 2)`` and
  ``E_edge(A[v, u] + 2)`` (257 rows; 0 = no edge -> row 2), concatenates them and maps them through
  ``proj_e`` (Linear ``2 hid -> hid``, ReLU, Linear ``hid -> heads``) to one attention bias per head; the
  same bias is added to the attention logits of every layer (the later layers do not change it).
* **Layer.** ``x += Attn(LN1(x))`` with ``Attn`` = ``to_out(softmax(q k^T / sqrt(head_dim) + bias) v)``
  (``q, k, v`` from ``to_qkv``, no bias), then ``x += FF(LN2(x))`` with ``FF`` = Linear ``hid -> 4 hid``,
  GELU, Linear ``4 hid -> hid``.

Parameters of layer ``i`` (reference names): ``ln1``, ``attn.to_qkv``, ``attn.to_out.0``, ``ln2``,
``ff.net.0``, ``ff.net.3``; layer 0 also ``attn.edge_embed.embed``, ``attn.proj_e.{0,2}``,
``centrality_embed_in``, ``centrality_embed_out``, ``input_dist_embed``.

Shapes (one graph; the reference batches graphs padded with a mask, which wsl does not need)::

    x: (N, hid), adjacency: (N, N) long distances -> (N, hid)
"""

from __future__ import annotations

import math

import torch
from torch import nn

MAX_DEGREE = 100
MAX_INPUT_DIST = 1000
EDGE_VALUES = 257  # distances up to 254, plus 2


class EdgeEmbedding(nn.Module):
    """One learned vector per edge value (``embed``), initialized with sinusoids (row 0 zero) as in the
    reference; the released weights overwrite it."""

    def __init__(self, hid: int, max_len: int = EDGE_VALUES) -> None:
        super().__init__()
        pos = torch.arange(max_len).unsqueeze(1)
        freq = torch.exp(torch.arange(0, hid, 2) * (-math.log(10000.0) / hid))
        pe = torch.zeros(max_len, hid)
        pe[:, 0::2] = torch.sin(pos * freq)
        pe[:, 1::2] = torch.cos(pos * freq)
        pe[0] = 0
        self.embed = nn.Embedding(max_len, hid)
        self.embed.weight.data = pe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)


class EdgeAttention(nn.Module):
    """Multi-head self-attention whose logits get a per-head bias from the edges (module docstring)."""

    def __init__(self, dim: int, num_heads: int, edge_dim: int = 0) -> None:
        super().__init__()
        self.num_heads, self.edge_dim = num_heads, edge_dim
        self.scale = (dim // num_heads) ** -0.5
        self.to_qkv = nn.Linear(dim, dim * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Identity())
        if edge_dim > 0:
            self.edge_embed = EdgeEmbedding(dim)
            self.proj_e = nn.Sequential(nn.Linear(edge_dim * dim, dim), nn.ReLU(), nn.Linear(dim, num_heads))

    def edge_bias(self, edges: torch.Tensor) -> torch.Tensor:
        """``(B, N, N, 2)`` shifted distances -> ``(B, N, N, heads)``."""
        e = self.edge_embed(edges)
        return self.proj_e(e.reshape(*e.shape[:-2], -1))

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.to_qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        if bias is not None:
            attn = attn + bias.permute(0, 3, 1, 2)
        attn = attn.softmax(dim=-1)
        return self.to_out((attn @ v).transpose(1, 2).reshape(B, N, C))


class FeedForward(nn.Module):
    """``net``: Linear, GELU, (dropout slot), Linear, (dropout slot)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Identity(), nn.Linear(hidden, dim),
                                 nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class GraphormerLayer(nn.Module):
    """One layer; ``edge_dim > 0`` (2, the first layer) makes it read the graph (module docstring)."""

    def __init__(self, dim: int, num_heads: int = 8, mlp_ratio: int = 4, edge_dim: int = 0,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.edge_dim = edge_dim
        self.ln1 = nn.LayerNorm(dim, eps=eps)
        self.attn = EdgeAttention(dim, num_heads, edge_dim)
        self.ln2 = nn.LayerNorm(dim, eps=eps)
        self.ff = FeedForward(dim, dim * mlp_ratio)
        if edge_dim > 0:
            self.centrality_embed_in = nn.Embedding(MAX_DEGREE + 1, dim)
            self.centrality_embed_out = nn.Embedding(MAX_DEGREE + 1, dim)
            self.input_dist_embed = nn.Embedding(MAX_INPUT_DIST + 1, dim)

    def encode_graph(self, x: torch.Tensor, adjacency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the centrality and input-distance embeddings to ``x`` ``(B, N, C)``; the attention bias of
        ``adjacency`` ``(B, N, N)``."""
        one_hop = (adjacency == 1).long()
        x = x + self.centrality_embed_in(torch.clip(one_hop.sum(1), 0, MAX_DEGREE))
        x = x + self.centrality_embed_out(torch.clip(one_hop.sum(2), 0, MAX_DEGREE))
        x = x + self.input_dist_embed(torch.clip(adjacency[:, 0, :], 0, MAX_INPUT_DIST))
        edges = torch.stack((adjacency, adjacency.permute(0, 2, 1)), dim=-1) + 2  # forward / backward
        return x, self.attn.edge_bias(edges)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), bias)
        return x + self.ff(self.ln2(x))


class Graphormer(nn.ModuleList):
    """``layers`` :class:`GraphormerLayer` (the reference's ``gnn``: parameters ``0.``, ``1.``, ...).

    Shapes: x (N, hid), adjacency (N, N) long -> (N, hid)"""

    def __init__(self, hid: int, layers: int = 3, heads: int = 8) -> None:
        super().__init__(GraphormerLayer(hid, heads, edge_dim=2 if i == 0 else 0) for i in range(layers))

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        if not len(self):
            return x
        x, bias = self[0].encode_graph(x.unsqueeze(0), adjacency.unsqueeze(0))
        for layer in self:
            x = layer(x, bias)
        return x.reshape(-1, x.shape[-1])
