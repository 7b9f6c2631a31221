"""Geometric augmentations of implicit neural representations, done in weight space.

An INR ``f: R^d -> R^c`` (e.g. a SIREN mapping 2-D pixel coordinates to intensity) starts with an affine
layer ``W x + b``. Substituting ``x -> A x + t`` gives the INR of the transformed signal exactly:

.. math::
    g(x) = f(A x + t), \\qquad W' = W A, \\qquad b' = b + W t

so a translated / rotated / zoomed image is one small matrix product on the first layer — no re-fitting.
The first layer is found from the graph (the edges leaving the input nodes); it must be a dense linear
layer with a bias (a translation needs one).

Conventions (in the INR's own input coordinates; the digits-INR zoo uses ``(y, x)`` in ``[-1, 1]^2``):

* :class:`INRTranslate` — ``g(x) = f(x - t)``: the content moves by ``+t``;
* :class:`INRRotate` — ``g(x) = f(R(theta)^T x)``: the content rotates by ``theta`` (2-D inputs);
* :class:`INRScale` — ``g(x) = f(x / s)``: the content is zoomed by ``s``.

Each transform's ``sample(d, generator)`` returns the ``(A, t)`` it applies, so the result can be checked
against rendering ``f`` on the transformed grid ``A x + t``.

Reference: Shamsian et al., *Data Augmentations in Deep Weight Spaces* (2023), INR-specific augmentations.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..graph import ParamGraph
from ..graph.builder import EDGE_TYPE_ID, NODE_COL
from ..graph.spec import IO_INPUT
from .base import Generator, GraphTransform, param_index, register, with_values


def affine_inputs(graph: ParamGraph, A: Tensor, t: Tensor) -> ParamGraph:
    """The graph of ``g(x) = f(A x + t)`` for the network ``f`` of ``graph`` (``A`` [d, d], ``t`` [d])."""
    spec = graph.spec
    src, dst = graph.edge_index
    first = spec.io[src] == IO_INPUT
    eids = torch.nonzero(first).flatten()
    d = int((spec.io == IO_INPUT).sum())
    if A.shape != (d, d) or t.shape != (d,):
        raise ValueError(f"{spec.arch} has {d} inputs: need A [{d}, {d}] and t [{d}], got {tuple(A.shape)}, "
                         f"{tuple(t.shape)}")
    if eids.numel() == 0 or bool((spec.edge_type[eids] != EDGE_TYPE_ID["linear"]).any()):
        raise ValueError(f"INR transforms need a network whose inputs feed one dense nn.Linear (an INR on "
                         f"coordinates); {spec.arch}'s inputs feed other layers")
    rows, row_of = torch.unique(dst[eids], return_inverse=True)
    col = spec.io_index[src[eids]]
    if eids.numel() != rows.numel() * d:
        raise ValueError(f"INR transforms need a dense first layer; {spec.arch}'s first layer is sparse")
    dt = torch.float64
    W = torch.zeros(rows.numel(), d, dtype=dt)
    W[row_of, col] = graph.edge_attr[eids, 0].to(dt)
    A, t = A.to(dt), t.to(dt)
    shift = W @ t
    has_bias = param_index(spec).has_bias[rows]
    if bool((~has_bias).any()) and bool((shift[~has_bias] != 0).any()):
        raise ValueError(f"{spec.arch}: the first layer has no bias, so a translation cannot be expressed")
    edge = graph.edge_attr.clone()
    edge[eids, 0] = (W @ A)[row_of, col].to(edge.dtype)
    x = graph.x.clone()
    b = NODE_COL["bias"]
    x[rows, b] = (x[rows, b].to(dt) + shift).to(x.dtype)
    return with_values(graph, edge, x)


class _INRAffine(GraphTransform):
    def sample(self, d: int, generator: Generator) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, graph: ParamGraph, generator: Generator) -> ParamGraph:
        d = int((graph.spec.io == IO_INPUT).sum())
        A, t = self.sample(d, generator)
        return affine_inputs(graph, A, t)


@register("inr_translate")
class INRTranslate(_INRAffine):
    """Translate the represented signal by ``t ~ U[-max_shift, max_shift]^d``: ``g(x) = f(x - t)``."""

    def __init__(self, max_shift: float = 0.2) -> None:
        self.max_shift = float(max_shift)

    def sample(self, d: int, generator: Generator) -> tuple[Tensor, Tensor]:
        t = (2 * torch.rand(d, generator=generator, dtype=torch.float64) - 1) * self.max_shift
        return torch.eye(d, dtype=torch.float64), -t


@register("inr_rotate")
class INRRotate(_INRAffine):
    """Rotate a 2-D signal by ``theta ~ U[-max_degrees, max_degrees]`` about the origin: ``g(x) = f(R^T x)``."""

    def __init__(self, max_degrees: float = 30.0) -> None:
        self.max_degrees = float(max_degrees)

    def sample(self, d: int, generator: Generator) -> tuple[Tensor, Tensor]:
        if d != 2:
            raise ValueError(f"INRRotate works on INRs of 2-D coordinates; this network has {d} inputs")
        theta = math.radians(self.max_degrees) * (2 * float(torch.rand((), generator=generator, dtype=torch.float64)) - 1)
        c, s = math.cos(theta), math.sin(theta)
        R = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        return R.T.contiguous(), torch.zeros(2, dtype=torch.float64)


@register("inr_scale")
class INRScale(_INRAffine):
    """Zoom the signal by ``s`` log-uniform in ``[min_scale, max_scale]`` about the origin: ``g(x) = f(x / s)``."""

    def __init__(self, min_scale: float = 0.8, max_scale: float = 1.25) -> None:
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"INRScale: need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)

    def sample(self, d: int, generator: Generator) -> tuple[Tensor, Tensor]:
        lo, hi = math.log(self.min_scale), math.log(self.max_scale)
        s = math.exp(lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64)))
        return torch.eye(d, dtype=torch.float64) / s, torch.zeros(d, dtype=torch.float64)
