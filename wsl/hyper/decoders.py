"""Parameter decoders of graph hypernetworks: node embedding -> tensor of any shape.

* :class:`TiledDecoder` (GHN-2 / GHN-3): an MLP maps the embedding ``h`` to a ``c × K × K`` map, a
  ``1×1`` convolution expands it to a fixed-size tile ``[T_out, T_in, K, K]``. Decoder size
  ``≈ c · T_out · T_in``: covering width ``w`` layers with a hidden size that grows with ``w`` costs ``w³``.
* :class:`LowRankDecoder` (LoGAH, Zhou et al. 2024, "LoGAH: Predicting 774-Million-Parameter Transformers
  using Graph HyperNetworks with 1/100 Parameters"): the tile is a product of two predicted factors,
  ``W = A · B`` with ``A ∈ R^{T_out K × r}``, ``B ∈ R^{r × T_in K}`` (reshaped to ``[T_out, T_in, K, K]``),
  so the decoder costs ``≈ d · r · K · (T_out + T_in)``: ``w²`` for hidden size ``d ∝ w``.

Both predict 1-D tensors (biases, norm affine parameters) with a small vector head ``h -> R^{T_out}``.
:func:`fit` tiles / slices a tile to any target shape (repeat along a dimension when the target is larger,
take the leading channels / the centred kernel window when it is smaller); :func:`normalize` applies the
operation-dependent normalization of GHN-2: weights get the standard deviation ``gain / sqrt(fan_in)``,
norm scales stay near 1, biases are squashed by ``tanh``.

Shapes:
    ``matrix(h)``: ``h`` ``[P, d]`` -> ``[P, T_out, T_in, K, K]``; ``vector(h)``: ``[P, d]`` -> ``[P, T_out]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

ROLES: tuple[str, ...] = ("weight", "bias", "norm_weight", "norm_bias", "embedding", "vector")
ROLE_ID = {r: i for i, r in enumerate(ROLES)}
_NORM_OPS = {"bn", "ln", "gn", "instance_norm", "rms_norm", "scale"}
_EMBED_OPS = {"embedding", "pos_enc", "cls_token"}
_CONV_OPS = {"conv", "conv_transpose"}


def param_role(name: str, shape: tuple[int, ...], op: str) -> str:
    """The role of parameter ``name`` (of ``shape``) owned by an op of type ``op``."""
    if len(shape) >= 2:
        return "embedding" if op in _EMBED_OPS else "weight"
    bias = name.rsplit(".", 1)[-1].endswith("bias")
    if op in _NORM_OPS:
        return "norm_bias" if bias else "norm_weight"
    if bias:
        return "bias"
    return "embedding" if op in _EMBED_OPS else "vector"


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_out))


class ParamDecoder(nn.Module):
    """Base class: ``matrix`` predicts tiles for tensors with >= 2 dims, ``vector`` for 1-D / scalars."""

    tile_out: int
    tile_in: int
    kernel: int

    def __init__(self, hidden: int, tile_out: int, tile_in: int, kernel: int) -> None:
        super().__init__()
        self.tile_out, self.tile_in, self.kernel = tile_out, tile_in, kernel
        self.vec = _mlp(hidden, hidden, tile_out)

    def vector(self, h: Tensor) -> Tensor:
        return self.vec(h)

    def matrix(self, h: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class TiledDecoder(ParamDecoder):
    """GHN-2 style decoder (see module docstring); ``channels`` is the ``c`` of the ``c × K × K`` map."""

    def __init__(self, hidden: int = 64, tile_out: int = 64, tile_in: int = 64, kernel: int = 5,
                 channels: int = 16) -> None:
        super().__init__(hidden, tile_out, tile_in, kernel)
        self.channels = channels
        self.mlp = _mlp(hidden, hidden, channels * kernel * kernel)
        self.expand = nn.Linear(channels, tile_out * tile_in)  # the 1×1 convolution

    def matrix(self, h: Tensor) -> Tensor:
        p, k = h.shape[0], self.kernel
        z = self.mlp(h).view(p, self.channels, k * k).transpose(1, 2)  # [P, K*K, c]
        w = self.expand(z)  # [P, K*K, To*Ti]
        return w.transpose(1, 2).reshape(p, self.tile_out, self.tile_in, k, k)


class LowRankDecoder(ParamDecoder):
    """LoGAH decoder (see module docstring): the tile is ``A · B`` of rank ``rank``."""

    def __init__(self, hidden: int = 64, tile_out: int = 64, tile_in: int = 64, kernel: int = 5,
                 rank: int = 8) -> None:
        super().__init__(hidden, tile_out, tile_in, kernel)
        self.rank = rank
        self.trunk = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU())
        self.a = nn.Linear(hidden, tile_out * kernel * rank)
        self.b = nn.Linear(hidden, rank * tile_in * kernel)

    def matrix(self, h: Tensor) -> Tensor:
        p, k, r = h.shape[0], self.kernel, self.rank
        z = self.trunk(h)
        a = self.a(z).view(p, self.tile_out * k, r)
        b = self.b(z).view(p, r, self.tile_in * k)
        w = torch.bmm(a, b) / math.sqrt(r)  # [P, To*K, Ti*K]
        return w.view(p, self.tile_out, k, self.tile_in, k).permute(0, 1, 3, 2, 4)


def decoder_parameter_count(kind: str, width: int, *, hidden: int = 64, kernel: int = 3, channels: int = 16,
                            rank: int = 8) -> int:
    """Parameters of a decoder whose tile covers ``width × width`` layers (for size comparisons)."""
    with torch.device("meta"):
        if kind == "tiled":
            dec: ParamDecoder = TiledDecoder(hidden, width, width, kernel, channels)
        elif kind == "lowrank":
            dec = LowRankDecoder(hidden, width, width, kernel, rank)
        else:
            raise ValueError(f"unknown decoder kind {kind!r}; choose 'tiled' or 'lowrank'")
    return sum(p.numel() for p in dec.parameters())


# ------------------------------------------------------------------------------------- fit & normalize
def _crop(t: Tensor, dim: int, n: int, centre: bool) -> Tensor:
    size = t.shape[dim]
    if n >= size:
        return t
    return t.narrow(dim, (size - n) // 2 if centre else 0, n)


def _tile_to(base: Tensor, shape: tuple[int, ...], centre: tuple[bool, ...]) -> Tensor:
    """Repeat ``base`` periodically along every dim to at least ``shape`` (one copy), then crop to ``shape``."""
    reps = [-(-n // s) for n, s in zip(shape, base.shape)]
    if all(r == 1 for r in reps):
        return base
    view, expand = [], []
    for r, s in zip(reps, base.shape):
        view += [1, s]
        expand += [r, s]
    w = base.reshape(view).expand(expand).reshape([r * s for r, s in zip(reps, base.shape)])
    for d, (n, c) in enumerate(zip(shape, centre)):
        w = _crop(w, d, n, c)
    return w


def fit(tile: Tensor, shape: tuple[int, ...], conv: bool,
        transform: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Slice / tile ``tile`` ``[T_out, T_in, K, K]`` to ``shape`` (any rank >= 2).

    ``conv``: the tensor is a convolution kernel ``[out, in, *k]`` (1 to 3 spatial dims; a kernel larger than
    ``K`` repeats the tile, a smaller one takes its centre); otherwise it is read as a matrix
    ``[prod(shape[:-1]), shape[-1]]`` cut from the tile's centre tap. ``transform`` (e.g. normalization) is
    applied to the cropped tile before it is repeated, so its cost does not grow with the target's size.
    """
    k = tile.shape[-1]
    if conv and 3 <= len(shape) <= 5:
        out, inn, *ks = shape
        w = _crop(_crop(tile, 0, out, False), 1, inn, False)
        if len(ks) == 1:
            w = w[:, :, k // 2, :]
        elif len(ks) == 3:
            w = w.unsqueeze(2)
        for i, n in enumerate(ks):
            w = _crop(w, 2 + i, n, True)
        if transform is not None:
            w = transform(w)
        return _tile_to(w, shape, (False, False) + (True,) * len(ks))
    rows = int(torch.Size(shape[:-1]).numel())
    m = _crop(_crop(tile[:, :, k // 2, k // 2], 0, rows, False), 1, shape[-1], False)
    if transform is not None:
        m = transform(m)
    return _tile_to(m, (rows, shape[-1]), (False, False)).reshape(shape)


def fan_in(shape: tuple[int, ...], op: str, axis: int | None = None) -> int:
    """Inputs per output unit of a weight of ``shape``: ``prod(shape[1:])`` (``[out, in, *kernel]``), the
    in-channels times kernel of a transposed conv, or ``shape[axis]`` when the weight's layout puts its
    fan-in on ``axis`` (``[in, out]`` weights used as ``x @ W``, see ``CompGraph.fan_in_axes``)."""
    if len(shape) < 2:
        return 1
    if axis is not None:
        return int(shape[axis])
    if op == "conv_transpose":
        return int(shape[0] * torch.Size(shape[2:]).numel())
    return int(torch.Size(shape[1:]).numel())


def normalize(w: Tensor, role: str, shape: tuple[int, ...], op: str, gain: Tensor,
              fan_in_axis: int | None = None) -> Tensor:
    """Operation-dependent normalization (GHN-2) of a raw prediction ``w`` for a tensor of ``shape``
    (``w`` may be the cropped tile that :func:`fit` repeats to ``shape``).

    ``gain`` is a positive scalar (learned per op type / role): weights -> zero-mean, std
    ``gain / sqrt(fan_in)``; embeddings -> std ``gain``; norm scales ``1 + gain · tanh``; biases and other
    vectors ``gain · tanh``.
    """
    if role in ("weight", "embedding"):
        if w.numel() > 1:
            w = (w - w.mean()) / (w.std() + 1e-5)
        return w * (gain / math.sqrt(fan_in(shape, op, fan_in_axis)) if role == "weight" else gain)
    if role == "norm_weight":
        return 1.0 + gain * torch.tanh(w)
    return gain * torch.tanh(w)
