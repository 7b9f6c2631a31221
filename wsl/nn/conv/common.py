"""Pieces shared by the message-passing layers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...activations import activation_class
from ..scatter import gather


def activation(name: str | type[nn.Module]) -> type[nn.Module]:
    """A metanetwork's activation: a name from :data:`wsl.activations.ACTIVATIONS` or a module class."""
    return activation_class(name) if isinstance(name, str) else name


NORMS = ("layer", "batch", "none")


def norm_kind(norm: bool | str | None) -> str:
    """``True`` / ``"layer"`` -> LayerNorm, ``"batch"`` -> BatchNorm (statistics over every node / edge of the
    batch, per feature), ``False`` / ``None`` / ``"none"`` -> no normalization."""
    if norm is True:
        return "layer"
    if norm is False or norm is None:
        return "none"
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS} (or True / False), got {norm!r}")
    return norm


def norm_layer(dim: int, norm: bool | str | None) -> nn.Module:
    kind = norm_kind(norm)
    if kind == "layer":
        return nn.LayerNorm(dim)
    return nn.BatchNorm1d(dim) if kind == "batch" else nn.Identity()


class EdgeUpdate(nn.Module):
    """``e' = e + W2 act(W_e e + W_s h[src] + W_d h[dst])``, normalized by ``norm`` (see :func:`norm_layer`);
    ``residual=False`` drops the ``e +``.

    The first layer of the MLP over ``[e, h_src, h_dst]`` is factorized: the node terms are projected once
    per *node* (one ``[N, 2d]`` matmul) and gathered, instead of concatenating ``[E, 3d]`` and projecting
    per edge; the residual is fused into the second matmul (``addmm``). Edges outnumber nodes by 1-2
    orders of magnitude in parameter graphs, so edge-level passes are what a layer costs.
    """

    def __init__(self, dim: int, act: type[nn.Module], norm: bool | str = False, dropout: float = 0.0,
                 residual: bool = True) -> None:
        super().__init__()
        self.dim, self.residual = dim, residual
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
        if self.residual:
            return self.norm(torch.addmm(e, z, self.lin_out.weight.t()))
        return self.norm(z @ self.lin_out.weight.t())


class NodeUpdate(nn.Module):
    """``h' = h + W2 act(W1 [h, m_1, ..., m_k])``, normalized (node-level, cheap); ``residual=False`` drops
    the ``h +``."""

    def __init__(self, dim: int, in_dim: int, act: type[nn.Module], norm: bool | str = True, dropout: float = 0.0,
                 residual: bool = True) -> None:
        super().__init__()
        self.residual = residual
        self.mlp = nn.Sequential(nn.Linear(in_dim, dim), act(), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.norm = norm_layer(dim, norm)

    def forward(self, h: Tensor, inputs: Tensor) -> Tensor:
        out = self.drop(self.mlp(inputs))
        return self.norm(h + out if self.residual else out)
