"""DWSNet baseline: an invariant Deep Weight Space network over one MLP architecture (INR zoos).

Navon et al. 2023, "Equivariant Architectures for Learning in Deep Weight Spaces" (ICML 2023). The layers
(:class:`~wsl.nn.dws_layers.DWSLayer`) span the affine maps between MLP weight spaces that commute with
permutations of hidden neurons; inputs and outputs of the MLPs are not permuted.

Like :class:`~wsl.nn.baselines.NFN`, it reads a batch of same-architecture ParamGraphs as stacked state-dict
tensors (:func:`~wsl.nn.baselines.batch_tensors`, standardized by the dataset's normalization when attached)
and refuses other architectures. Differences from the reference implementation (AvivNavon/DWSNets, vendored
by mkofinas/neural-graphs as ``nn/dws``):

* one module per kept neuron set instead of one per (source, target) tensor pair: the fully pooled terms of
  all blocks share one linear map, and each hidden set has one set layer over the concatenated features of
  the tensors that touch it. With ``set_layer="ds"`` and mean / sum pooling both span the same equivariant
  affine maps (wsl's without redundant weights); with ``"sab"`` the attention over a hidden set is shared by
  the tensors that touch it instead of run per pair. On 2-32-32-1 INRs at the reference config: 653,386
  parameters (reference: 552,650);
* no division of the summed blocks by the number of tensors, default PyTorch initialization;
* no ``n_fc_layers`` > 1 inside blocks, no ``diagonal`` option, no down-sampling variant, no skip connections.

>>> model = DWSNet(graphs[0], out_dim=10)       # doctest: +SKIP
>>> logits = model(batch)                        # [B, 10], invariant to hidden-neuron permutations
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..graph.paramgraph import ParamGraph
from .baselines import (
    NFN_SUPPORT,
    _describe,
    _first_difference,
    batch_tensors,
    chain_layers,
    mlp,
    single_spec,
)
from .context import as_batch
from .dws_layers import (
    REDUCTIONS,
    SET_LAYERS,
    DWSLayer,
    WeightSpace,
    WeightSpaceNorm,
    invariant_features,
)
from .stats import fingerprint

DWS_SUPPORT = ("DWSNet supports MLP zoos (a chain of Linear layers with biases, e.g. INRs); use wsl.nn.NFN for "
               "plain CNN zoos and the graph metanetworks (wsl.nn.GMN, NGGNN, ScaleGMN, RelationalTransformer) "
               "for other architectures")


def mlp_layers(spec) -> list[tuple[str, str]]:
    """``(weight_key, bias_key)`` per Linear layer of a plain MLP spec, or ValueError naming the first key that
    is not one (convolutions, norm layers, missing biases, skip connections, tied weights)."""
    try:
        layers = chain_layers(spec)
    except ValueError as err:
        raise ValueError(str(err).replace(NFN_SUPPORT, DWS_SUPPORT)) from None
    for wkey, _ in layers:
        shape = tuple(spec.tensors[wkey].shape)
        if len(shape) != 2:
            raise ValueError(f"state-dict key {wkey!r}: tensor of shape {shape} is not a Linear [out, in] weight. "
                             f"{DWS_SUPPORT}")
    return layers


class DWSNet(nn.Module):
    """Invariant DWSNet over one MLP architecture; ``model(batch)`` -> ``[B, out_dim]``.

    ``num_layers`` :class:`~wsl.nn.dws_layers.DWSLayer` (1 -> ``hidden_dim`` -> ... -> ``hidden_dim``
    channels), with BatchNorm (``bn``), ReLU and dropout between them; then ReLU, dropout, the invariant
    read-out (each weight / bias tensor pooled over its hidden indices, the input / output indices kept:
    :func:`~wsl.nn.dws_layers.invariant_features`) and an MLP head of ``head_layers`` linear layers (1 as the
    reference: a single linear map). The reference's ``n_hidden=4`` is ``num_layers=5``.

    Args:
        spec_or_graph: an example graph (or list / batch of graphs, or the NetworkSpec) of the zoo.
        out_dim: outputs (classes).
        hidden_dim: channels of the equivariant layers.
        num_layers: equivariant layers (>= 1).
        reduction: ``"max"`` | ``"mean"`` | ``"sum"`` pooling over hidden neurons, inside layers and read-out.
        set_layer: ``"sab"`` (set attention block, reference default) or ``"ds"`` (linear; DeepSets-style).
        num_heads: heads of the set attention blocks.
        bn: BatchNorm after every equivariant layer but the last.
        dropout: dropout between equivariant layers, before the read-out and in the head.
        head_dim / head_layers: hidden width and depth of the head MLP.

    Shapes:
        ``forward(batch)``: ``B`` graphs of the architecture -> ``[B, out_dim]``.
        ``features(batch)``: weights ``[B, d_{i+1}, d_i, hidden_dim]`` and biases ``[B, d_{i+1}, hidden_dim]``
        per layer of the MLPs (equivariant; before the final ReLU).
    """

    def __init__(self, spec_or_graph, out_dim: int = 1, *, hidden_dim: int = 32, num_layers: int = 5,
                 reduction: str = "max", set_layer: str = "sab", num_heads: int = 8, bn: bool = True,
                 dropout: float = 0.0, head_dim: int = 256, head_layers: int = 1) -> None:
        super().__init__()
        spec = spec_or_graph
        if isinstance(spec, (list, tuple)) or hasattr(spec, "edge_attr"):
            spec = single_spec(as_batch(spec))[0]
        if num_layers < 1 or hidden_dim < 1:
            raise ValueError(f"num_layers and hidden_dim must be >= 1, got {num_layers} and {hidden_dim}")
        if reduction not in REDUCTIONS or set_layer not in SET_LAYERS:
            raise ValueError(f"reduction must be one of {REDUCTIONS} and set_layer one of {SET_LAYERS}, got "
                             f"{reduction!r} and {set_layer!r}")
        self.layers = mlp_layers(spec)
        shapes = [tuple(spec.tensors[w].shape) for w, _ in self.layers]
        dims = [shapes[0][1]] + [s[0] for s in shapes]
        self.space = WeightSpace(dims)
        self.spec, self.fingerprint, self.arch = spec, fingerprint(spec), _describe(spec)
        self.out_dim, self.hidden_dim, self.num_layers, self.reduction = out_dim, hidden_dim, num_layers, reduction
        self.dropout = dropout
        self.equivariant = nn.ModuleList(
            DWSLayer(dims, 1 if i == 0 else hidden_dim, hidden_dim, reduction=reduction, set_layer=set_layer,
                     num_heads=num_heads) for i in range(num_layers))
        self.norms = nn.ModuleList(WeightSpaceNorm(len(self.space), hidden_dim) if bn else _Identity()
                                   for _ in range(num_layers - 1))
        readout = hidden_dim * sum(self.space.fixed_numel(t) for t in range(len(self.space)))
        self.head = mlp(out_dim, head_dim, head_layers, dropout, in_dim=readout)

    def tensors(self, batch: ParamGraph | Sequence[ParamGraph]) -> tuple[list[Tensor], list[Tensor]]:
        """The batch's weights ``[B, out, in, 1]`` and biases ``[B, out, 1]`` (standardized as the graph
        metanetworks see them), in the batch's floating dtype."""
        batch = as_batch(batch)
        spec, _ = single_spec(batch)
        if fingerprint(spec) != self.fingerprint:
            raise ValueError(f"this DWSNet was built for {self.arch} but got a batch of {_describe(spec)} "
                             f"({_first_difference(self.spec, spec)}); DWSNet takes one MLP architecture: "
                             f"build one model per zoo")
        t = batch_tensors(batch, standardize=True)
        dtype = batch.edge_attr.dtype
        return ([t[w].to(dtype).unsqueeze(-1) for w, _ in self.layers],
                [t[b].to(dtype).unsqueeze(-1) for _, b in self.layers])

    def equivariant_forward(self, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """The equivariant layers on weight-space tensors (shapes of :class:`~wsl.nn.dws_layers.DWSLayer`)."""
        ws, bs = list(weights), list(biases)
        for i, layer in enumerate(self.equivariant):
            if i > 0:
                ws, bs = self.norms[i - 1](ws, bs)
                ws, bs = self._act(ws), self._act(bs)
            ws, bs = layer(ws, bs)
        return ws, bs

    def invariant_forward(self, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> Tensor:
        """Equivariant layers, ReLU / dropout, pooled read-out and head: ``[B, out_dim]``."""
        ws, bs = self.equivariant_forward(weights, biases)
        return self.head(invariant_features(self.space, self._act(ws), self._act(bs), self.reduction))

    def features(self, batch: ParamGraph | Sequence[ParamGraph]) -> tuple[list[Tensor], list[Tensor]]:
        return self.equivariant_forward(*self.tensors(batch))

    def forward(self, batch: ParamGraph | Sequence[ParamGraph]) -> Tensor:
        return self.invariant_forward(*self.tensors(batch))

    def _act(self, xs: list[Tensor]) -> list[Tensor]:
        return [F.dropout(F.relu(x), self.dropout, self.training) for x in xs]

    def extra_repr(self) -> str:
        return (f"arch={self.arch}, dims={self.space.dims}, out_dim={self.out_dim}, hidden_dim={self.hidden_dim}, "
                f"num_layers={self.num_layers}, reduction={self.reduction!r}")


class _Identity(nn.Module):
    """Stand-in for :class:`WeightSpaceNorm` when ``bn=False``."""

    def forward(self, weights: list[Tensor], biases: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        return weights, biases
