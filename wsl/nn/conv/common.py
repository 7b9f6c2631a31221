"""Pieces shared by the message-passing layers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..scatter import gather

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def activation(name: str | type[nn.Module]) -> type[nn.Module]:
    if isinstance(name, str):
        if name not in ACTIVATIONS:
            raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
        return ACTIVATIONS[name]
    return name


def norm_layer(dim: int, norm: bool) -> nn.Module:
    return nn.LayerNorm(dim) if norm else nn.Identity()


class EdgeUpdate(nn.Module):
    """``e' = e + W2 act(W_e e + W_s h[src] + W_d h[dst])`` (optionally LayerNorm-ed: ``norm``).

    The first layer of the MLP over ``[e, h_src, h_dst]`` is factorized: the node terms are projected once
    per *node* (one ``[N, 2d]`` matmul) and gathered, instead of concatenating ``[E, 3d]`` and projecting
    per edge; the residual is fused into the second matmul (``addmm``). Edges outnumber nodes by 1-2
    orders of magnitude in parameter graphs, so edge-level passes are what a layer costs.
    """

    def __init__(self, dim: int, act: type[nn.Module], norm: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.lin_edge = nn.Linear(dim, dim)
        self.lin_node = nn.Linear(dim, 2 * dim, bias=False)
        # in place when the activation allows it: z is a fresh temporary, and one E x d buffer less matters
        self.act = act(inplace=True) if act in (nn.ReLU, nn.SiLU) else act()
        self.lin_out = nn.Linear(dim, dim, bias=False)
        self.drop = nn.Dropout(dropout) if dropout > 0 else None
        self.norm = norm_layer(dim, norm)

    def forward(self, h: Tensor, e: Tensor, src: Tensor, dst: Tensor) -> Tensor:
        hs, hd = self.lin_node(h).split(self.dim, dim=-1)
        z = self.act(self.lin_edge(e).add_(gather(hs, src)).add_(gather(hd, dst)))
        if self.drop is not None:
            z = self.drop(z)
        return self.norm(torch.addmm(e, z, self.lin_out.weight.t()))


class NodeUpdate(nn.Module):
    """``h' = h + W2 act(W1 [h, m_1, ..., m_k])``, normalized (node-level, cheap)."""

    def __init__(self, dim: int, in_dim: int, act: type[nn.Module], norm: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, dim), act(), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.norm = norm_layer(dim, norm)

    def forward(self, h: Tensor, inputs: Tensor) -> Tensor:
        return self.norm(h + self.drop(self.mlp(inputs)))
