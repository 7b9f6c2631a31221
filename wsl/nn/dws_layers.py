"""Layers of DWSNet: affine maps between MLP weight spaces equivariant to permutations of hidden neurons.

Navon et al. 2023, "Equivariant Architectures for Learning in Deep Weight Spaces" (ICML 2023).

An MLP with neuron counts ``d_0, ..., d_L`` has weights ``W_i`` of shape ``[d_{i+1}, d_i]`` and biases ``b_i`` of
shape ``[d_{i+1}]`` (PyTorch's ``[out, in]`` layout), here with ``c`` feature channels each. The group
``G = S_{d_1} x ... x S_{d_{L-1}}`` permutes the hidden neurons, ``W_i -> P_{i+1} W_i P_i^T`` and
``b_i -> P_{i+1} b_i``; the input (``P_0``) and output (``P_L``) neurons stay fixed. A linear ``G``-equivariant
map is a sum of blocks, one per (source tensor ``A``, target tensor ``B``) among ``{W_i} u {b_i}``, and each
block is a sum over the subsets ``T`` of hidden neuron sets indexing both ``A`` and ``B``:

    ``B[...] += broadcast_B( Lin_{A,B,T}( pool_A( A ) ) )``

``pool_A`` reduces ``A`` over its hidden indices that are not in ``T``, the input / output indices (never
permuted) are flattened into the channels, ``Lin`` is a dense map of those channels and ``broadcast_B`` repeats
the result over ``B``'s hidden indices that are not in ``T``. Written out, the paper's four blocks are:

* weight -> weight: ``W_i -> W_i`` (``1 <= i <= L-2``): identity, row pool, column pool and full pool, each
  with a channel map (4 terms); ``W_i -> W_{i+1}``: column ``j`` of ``W_{i+1}`` from row ``j`` of ``W_i``
  pooled, plus the full pool (2 terms, same for ``W_{i+1} -> W_i``); ``|i - j| > 1``: the full pool (1 term).
  ``W_0`` and ``W_{L-1}`` carry their fixed input / output index as ``d_0 * c`` / ``d_L * c`` channels, so
  their blocks have the extra terms of a map that may mix those indices freely.
* weight -> bias: ``W_i -> b_i`` (rows of ``W_i`` pooled over columns) and ``W_{i+1} -> b_i`` (columns pooled
  over rows), plus the full pool of every ``W_j``.
* bias -> weight: ``b_i`` broadcast along the rows of ``W_i`` or the columns of ``W_{i+1}``, plus its pool.
* bias -> bias: ``b_i -> b_i`` identity and pool; ``b_i -> b_j`` pool. The output bias ``b_{L-1}`` has no
  hidden index: it is ``d_L * c`` invariant channels.

Implementation: terms are grouped by what they keep, which gives a compact layer with the same span:

* ``T = {}`` (all blocks): one linear map of the concatenated fully pooled tensors ``z`` -> every output,
  broadcast. Its bias is the layer's affine offset (constant along hidden indices: all an equivariant offset
  can be).
* ``T = {S_k}``: for hidden set ``k`` the ``d_k``-element set whose features concatenate every tensor that
  touches ``S_k`` (``W_{k-1}`` rows, ``W_k`` columns, ``b_{k-1}``) pooled over its other hidden index; one
  set layer (``"ds"``: per-element linear map; ``"sab"``: set attention block, as the reference uses) maps it
  to the features of the same tensors, broadcast over their other hidden index.
* ``T = {S_{i+1}, S_i}``: a per-channel linear map of the interior ``W_i`` itself.

With ``set_layer="ds"`` and ``reduction="sum"`` / ``"mean"`` the layer is affine, and its weights count
``dim Hom_G`` exactly (every basis map once; tests compare with the number of orbits of ``G`` on index pairs).
The reference implementation spends one module per (source, target) pair instead and overlaps terms.

Shapes:
    weights: ``[B, d_{i+1}, d_i, c]`` per layer; biases: ``[B, d_{i+1}, c]`` per layer; same out with ``c'``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REDUCTIONS = ("max", "mean", "sum")
SET_LAYERS = ("ds", "sab")


def _reduce(x: Tensor, dims: list[int], reduction: str) -> Tensor:
    if not dims:
        return x
    if reduction == "max":
        return x.amax(dim=dims, keepdim=True)
    if reduction == "mean":
        return x.mean(dim=dims, keepdim=True)
    return x.sum(dim=dims, keepdim=True)


class WeightSpace:
    """Index structure of an MLP weight space with neuron counts ``dims = (d_0, ..., d_L)``.

    Tensors are numbered ``W_0 .. W_{L-1}, b_0 .. b_{L-1}``; each has a tuple of *axes* naming the neuron layer
    of each index (``W_i``: ``(i+1, i)``, ``b_i``: ``(i+1,)``). Layers ``1 .. L-1`` are hidden (permutable).
    """

    def __init__(self, dims: Sequence[int]) -> None:
        dims = tuple(int(d) for d in dims)
        if len(dims) < 2 or min(dims) < 1:
            raise ValueError(f"an MLP weight space needs >= 2 neuron layers of size >= 1, got dims={dims}")
        self.dims, self.num_layers = dims, len(dims) - 1
        n = self.num_layers
        self.axes: list[tuple[int, ...]] = [(i + 1, i) for i in range(n)] + [(i + 1,) for i in range(n)]
        self.hidden = tuple(range(1, n))

    def __len__(self) -> int:
        return len(self.axes)

    def is_hidden(self, layer: int) -> bool:
        return 0 < layer < self.num_layers

    def shape(self, t: int) -> tuple[int, ...]:
        return tuple(self.dims[a] for a in self.axes[t])

    def fixed_numel(self, t: int) -> int:
        """Number of entries of tensor ``t`` along its fixed (input / output) indices."""
        return math.prod(self.dims[a] for a in self.axes[t] if not self.is_hidden(a))

    def members(self, layer: int) -> list[int]:
        """Tensors with an index over hidden neuron layer ``layer``."""
        return [t for t, axes in enumerate(self.axes) if layer in axes]

    def interior(self) -> list[int]:
        """Weights whose both indices are hidden."""
        return [t for t, axes in enumerate(self.axes) if len(axes) == 2 and all(map(self.is_hidden, axes))]

    def _order(self, t: int, keep: int | None) -> tuple[list[int], list[int]]:
        axes = self.axes[t]
        front = [p for p, a in enumerate(axes) if a == keep] + [p for p, a in enumerate(axes) if not self.is_hidden(a)]
        return front, [p for p in range(len(axes)) if p not in front]

    def pool(self, x: Tensor, t: int, keep: int | None, reduction: str) -> Tensor:
        """Tensor ``t`` ``[B, *shape, c]`` reduced over its hidden indices except ``keep`` -> ``[B, (d_keep,) f]``
        with ``f = c * fixed_numel(t)`` (fixed indices flattened into the channels, channels fastest)."""
        axes = self.axes[t]
        x = _reduce(x, [1 + p for p, a in enumerate(axes) if self.is_hidden(a) and a != keep], reduction)
        front, rest = self._order(t, keep)
        x = x.permute(0, *[1 + p for p in front + rest], x.dim() - 1)
        return x.reshape(x.shape[0], *([self.dims[keep]] if keep is not None else []), -1)

    def broadcast(self, y: Tensor, t: int, keep: int | None) -> Tensor:
        """Inverse layout of :meth:`pool`: ``[B, (d_keep,) f]`` -> ``[B, *shape-or-1, c]`` (size 1 along the
        hidden indices other than ``keep``; broadcasts against the full tensor)."""
        front, rest = self._order(t, keep)
        sizes = self.shape(t)
        y = y.reshape(y.shape[0], *[sizes[p] for p in front], *[1] * len(rest), -1)
        where = front + rest
        return y.permute(0, *[1 + where.index(p) for p in range(len(sizes))], y.dim() - 1)


class SAB(nn.Module):
    """Set attention block (Lee et al. 2019, "Set Transformer"), without layer norm, as DWSNets uses it.

    ``H = Q + softmax(Q K^T / sqrt(D)) V`` per head with ``Q, K, V = X W_q, X W_k, X W_v``, then
    ``out = H + relu(H W_o)``. Equivariant to permutations of the set. Heads: ``gcd(out_dim, num_heads)``
    (each head takes a contiguous slice of the ``D = out_dim`` features).

    Shapes: ``[B, n, in_dim] -> [B, n, out_dim]``.
    """

    def __init__(self, in_dim: int, out_dim: int, num_heads: int = 8) -> None:
        super().__init__()
        self.heads = math.gcd(out_dim, max(num_heads, 1))
        self.q, self.k, self.v = (nn.Linear(in_dim, out_dim) for _ in range(3))
        self.o = nn.Linear(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.q(x), self.k(x), self.v(x)
        d = q.shape[-1]
        split = [t.view(b, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v)]
        att = F.scaled_dot_product_attention(*split, scale=1.0 / math.sqrt(d))
        h = q + att.transpose(1, 2).reshape(b, n, d)
        return h + F.relu(self.o(h))


class DWSLayer(nn.Module):
    """One DWSNet layer: the space of ``G``-equivariant affine maps between MLP weight spaces (module docstring).

    Args:
        dims: neuron counts ``(d_0, ..., d_L)`` of the MLPs the layer reads.
        in_channels / out_channels: features per weight / bias entry, ``c`` -> ``c'``.
        reduction: pooling over hidden indices, ``"max"`` (the reference's default), ``"mean"`` or ``"sum"``.
        set_layer: per-hidden-set map, ``"ds"`` (linear; with mean / sum pooling the layer is affine and spans
            all equivariant affine maps) or ``"sab"`` (set attention block; non-linear, as the reference).
        num_heads: heads of the ``"sab"`` set layers.

    Shapes:
        ``forward(weights, biases)``: ``weights[i]`` ``[B, d_{i+1}, d_i, c]``, ``biases[i]`` ``[B, d_{i+1}, c]``
        -> the same lists with ``c'`` channels.
    """

    def __init__(self, dims: Sequence[int], in_channels: int, out_channels: int, *, reduction: str = "max",
                 set_layer: str = "sab", num_heads: int = 8) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if set_layer not in SET_LAYERS:
            raise ValueError(f"set_layer must be one of {SET_LAYERS}, got {set_layer!r}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channels must be >= 1, got {in_channels} -> {out_channels}")
        self.space = space = WeightSpace(dims)
        self.in_channels, self.out_channels, self.reduction = in_channels, out_channels, reduction
        self.f_in = [in_channels * space.fixed_numel(t) for t in range(len(space))]
        self.f_out = [out_channels * space.fixed_numel(t) for t in range(len(space))]
        self.pooled = nn.Linear(sum(self.f_in), sum(self.f_out))  # T = {}: every block's full pool, + the bias
        self.sets = nn.ModuleDict()  # T = {S_k}
        for k in space.hidden:
            f_in = sum(self.f_in[t] for t in space.members(k))
            f_out = sum(self.f_out[t] for t in space.members(k))
            self.sets[str(k)] = nn.Linear(f_in, f_out, bias=False) if set_layer == "ds" else SAB(f_in, f_out, num_heads)
        # T = {S_{i+1}, S_i}: the identity term of interior weights
        self.entries = nn.ModuleDict({str(t): nn.Linear(in_channels, out_channels, bias=False)
                                      for t in space.interior()})

    def forward(self, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        space = self.space
        xs = [*weights, *biases]
        if len(xs) != len(space):
            raise ValueError(f"DWSLayer for dims {space.dims} takes {space.num_layers} weights and biases, got "
                             f"{len(weights)} and {len(biases)}")
        for t, x in enumerate(xs):
            want = space.shape(t) + (self.in_channels,)
            if tuple(x.shape[1:]) != want:
                kind = "weights" if t < space.num_layers else "biases"
                raise ValueError(f"{kind}[{t % space.num_layers}] has shape {tuple(x.shape)}, expected "
                                 f"[B, {', '.join(map(str, want))}] ([B, out, in, channels] / [B, out, channels])")
        outs: list[list[Tensor]] = [[] for _ in xs]
        z = torch.cat([space.pool(x, t, None, self.reduction) for t, x in enumerate(xs)], dim=-1)
        for t, y in enumerate(self.pooled(z).split(self.f_out, dim=-1)):
            outs[t].append(space.broadcast(y, t, None))
        for k in space.hidden:
            members = space.members(k)
            s = torch.cat([space.pool(xs[t], t, k, self.reduction) for t in members], dim=-1)
            ys = self.sets[str(k)](s).split([self.f_out[t] for t in members], dim=-1)
            for t, y in zip(members, ys):
                outs[t].append(space.broadcast(y, t, k))
        for key, lin in self.entries.items():
            outs[int(key)].append(lin(xs[int(key)]))
        b = xs[0].shape[0]
        new = [sum(terms[1:], terms[0]).expand(b, *space.shape(t), self.out_channels) for t, terms in enumerate(outs)]
        n = space.num_layers
        return new[:n], new[n:]

    def extra_repr(self) -> str:
        return (f"dims={self.space.dims}, {self.in_channels} -> {self.out_channels}, "
                f"reduction={self.reduction!r}")


class WeightSpaceNorm(nn.Module):
    """BatchNorm per weight / bias tensor over its channels (statistics over the batch and every entry of the
    tensor, so permutations of entries commute with it), as the reference's ``BN``.

    Shapes: the lists of :class:`DWSLayer` (``[B, *shape, c]``), unchanged.
    """

    def __init__(self, num_tensors: int, channels: int) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.BatchNorm1d(channels) for _ in range(num_tensors))

    def forward(self, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        xs = [norm(x.reshape(-1, x.shape[-1])).view(x.shape) for norm, x in zip(self.norms, [*weights, *biases])]
        return xs[: len(weights)], xs[len(weights) :]


def invariant_features(space: WeightSpace, weights: Sequence[Tensor], biases: Sequence[Tensor],
                       reduction: str = "max") -> Tensor:
    """Every tensor pooled over its hidden indices (fixed input / output indices kept), concatenated: the
    ``G``-invariant read-out of DWSNet (the reference's ``InvariantLayer`` input).

    Shapes: the lists of :class:`DWSLayer` -> ``[B, sum_t c * fixed_numel(t)]``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return torch.cat([space.pool(x, t, None, reduction) for t, x in enumerate([*weights, *biases])], dim=-1)
