"""Function-preserving augmentations: random elements of the network's symmetry group.

Every transform here maps a network to a different point in weight space that computes *exactly* the same
function (up to floating-point rounding), so it is a free, label-preserving augmentation for invariant
tasks (classification of INRs, accuracy prediction) — the weight-space analogue of flips and crops.

* :class:`RandomPermutation` — a uniformly random neuron permutation from the spec's groups (hidden units,
  residual streams tied across layers, attention heads as blocks, conv groups);
* :class:`RandomScaling` — ReLU-family positive rescaling ``W_in -> s W_in, b -> s b, W_out -> W_out / s``
  on every set the spec marks as positively homogeneous (``spec.symmetry.scale_kind == POSITIVE``);
* :class:`RandomSignFlip` — ``±1`` on sets followed by an odd activation (tanh, sin);
* :class:`SirenBiasShift` — ``sin(w0 (z + k pi / w0)) = (-1)^k sin(w0 z)``: shift a SIREN neuron's bias by
  ``k pi / w0`` and multiply its outgoing weights by ``(-1)^k``;
* :class:`RandomSymmetry` — a full group element (permutation and scale / sign factors).

Reference: the symmetries are those of Navon et al., *Equivariant Architectures for Learning in Deep
Weight Spaces* (ICML 2023) and Kalogeropoulos et al., *Scale Equivariant Graph Metanetworks* (NeurIPS
2024); using them for augmentation follows Shamsian et al., *Data Augmentations in Deep Weight Spaces*
(2023).
"""

from __future__ import annotations

import math

import torch

from ..graph import ParamGraph, SymmetryElement
from ..graph.builder import NODE_COL
from ..graph.symmetry import POSITIVE, SIGN
from .base import Generator, GraphTransform, param_index, register, with_values


@register("permutation")
class RandomPermutation(GraphTransform):
    """A uniformly random neuron permutation of the architecture's permutation group (no scaling)."""

    function_preserving = True

    def forward(self, graph: ParamGraph, generator: Generator) -> ParamGraph:
        return graph.apply_symmetry(graph.spec.sample_symmetry(generator, scale=False))


@register("symmetry")
class RandomSymmetry(GraphTransform):
    """A random full group element: permutation plus positive scales (ReLU family) and sign flips (odd)."""

    function_preserving = True

    def forward(self, graph: ParamGraph, generator: Generator) -> ParamGraph:
        return graph.apply_symmetry(graph.spec.sample_symmetry(generator, scale=True))


@register("scaling")
class RandomScaling(GraphTransform):
    """Positive rescaling of neurons followed by a positively homogeneous activation (ReLU, LeakyReLU).

    Factors are log-uniform in ``[2^-log2_range, 2^log2_range]``, one per neuron; neurons without that
    symmetry keep factor 1 (a network without any such set is returned unchanged).

    .. math::
        W_{in} \\to \\operatorname{diag}(s) W_{in}, \\quad b \\to s \\odot b, \\quad
        W_{out} \\to W_{out} \\operatorname{diag}(s)^{-1}
    """

    function_preserving = True
    kind = POSITIVE

    def __init__(self, log2_range: float = 1.0) -> None:
        if log2_range < 0:
            raise ValueError(f"RandomScaling: log2_range must be >= 0, got {log2_range}")
        self.log2_range = log2_range

    def factors(self, mask: torch.Tensor, generator: Generator) -> torch.Tensor:
        u = torch.rand(int(mask.sum()), generator=generator, dtype=torch.float64)
        return torch.exp2((2 * u - 1) * self.log2_range)

    def forward(self, graph: ParamGraph, generator: Generator) -> ParamGraph:
        spec = graph.spec
        mask = spec.symmetry.scale_kind == self.kind
        if not bool(mask.any()):
            return with_values(graph, graph.edge_attr.clone(), graph.x.clone())
        scale = torch.ones(spec.num_nodes, dtype=torch.float64)
        scale[mask] = self.factors(mask, generator)
        return graph.apply_symmetry(SymmetryElement(torch.arange(spec.num_nodes), scale))


@register("sign_flip")
class RandomSignFlip(RandomScaling):
    """Random ``±1`` per neuron followed by an odd activation (tanh, sin): ``W_in, b, W_out -> -W_in, -b, -W_out``."""

    kind = SIGN

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomSignFlip: p must be in [0, 1], got {p}")
        self.p = p

    def factors(self, mask: torch.Tensor, generator: Generator) -> torch.Tensor:
        u = torch.rand(int(mask.sum()), generator=generator, dtype=torch.float64)
        return torch.where(u < self.p, -1.0, 1.0).to(torch.float64)


@register("siren_bias_shift")
class SirenBiasShift(GraphTransform):
    """Shift SIREN biases by multiples of ``pi / w0`` without changing the function.

    For a neuron ``h = sin(w0 (w.x + b))``: ``sin(w0 (w.x + b + k pi / w0)) = (-1)^k h``, so

    .. math::
        b_i \\to b_i + k_i \\pi / \\omega_0, \\qquad W_{out}[:, i] \\to (-1)^{k_i} W_{out}[:, i],
        \\qquad k_i \\sim \\mathcal{U}\\{-K, \\dots, K\\}

    is exact. Applied to every neuron set the spec marks with a sign symmetry (odd activation); the spec
    does not tell ``sin`` from ``tanh``, so use this transform only on SIRENs, with their ``w0`` (30 for
    the digits-INR zoo, 1 for a plain ``torch.sin``). The float rounding of the shifted bias is amplified by
    ``w0`` (about ``1e-7 * w0 * (|b| + K pi / w0)`` per pre-activation).

    Args:
        w0: the SIREN frequency inside ``sin(w0 * x)``.
        max_shift: ``K``, the largest ``|k|``.
    """

    function_preserving = True

    def __init__(self, w0: float = 30.0, max_shift: int = 2) -> None:
        if w0 <= 0 or max_shift < 0:
            raise ValueError(f"SirenBiasShift: need w0 > 0 and max_shift >= 0, got w0={w0}, max_shift={max_shift}")
        self.w0, self.max_shift = float(w0), int(max_shift)

    def forward(self, graph: ParamGraph, generator: Generator) -> ParamGraph:
        spec = graph.spec
        mask = (spec.symmetry.scale_kind == SIGN) & param_index(spec).has_bias
        nodes = torch.nonzero(mask).flatten()
        k = torch.randint(-self.max_shift, self.max_shift + 1, (nodes.numel(),), generator=generator)
        x = graph.x.clone()
        col = NODE_COL["bias"]
        x[nodes, col] = (x[nodes, col].double() + k.double() * (math.pi / self.w0)).to(x.dtype)
        sign = torch.ones(spec.num_nodes, dtype=graph.edge_attr.dtype)
        sign[nodes] = 1.0 - 2.0 * (k.remainder(2)).to(sign.dtype)
        edge = graph.edge_attr * sign[graph.edge_index[0]][:, None]
        return with_values(graph, edge, x)
