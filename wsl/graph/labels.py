"""Per-tensor bookkeeping of the tracer: which neurons each position of an activation holds.

Every activation seen during tracing carries a **dense id tensor** ``ids``: an int64 tensor with the same
number of dimensions as the activation, of size 1 along dimensions where the neuron does not change
(batch, space, sequence) and of full size along the dimensions that index neurons; entry ``-1`` means "no
neuron" (raw input values, or values that are not features of any neuron). Shape ops are replayed on the
id tensor itself, so reshapes, transposes, slicing, concatenation, head splits and channel shuffles need
no per-op bookkeeping.

Parameters (and tensors derived from one parameter by rearrangement or an elementwise function) carry
``elem``: for every position, the flat index of the parameter element found there. Rules use it to map a
weight, however it was viewed, transposed or expanded, back to the state-dict tensor's element order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Act:
    """An activation: dense neuron ids (see module docstring) and the scale-symmetry chain it is on."""

    ids: Tensor
    chain: tuple[int, str] | None = None  # (set index, stage) while on a scale-symmetry candidate path


@dataclass
class Param:
    """A parameter / buffer, or a tensor derived from exactly one of them elementwise or by rearrangement."""

    name: str
    elem: Tensor  # dense flat element index per position (broadcastable to the tensor's shape)
    numel: int
    buffer: bool = False
    direct: bool = True  # elem is the identity layout (tensor used as stored)
    transformed: bool = False  # an elementwise function was applied


@dataclass
class Opaque:
    """Something computed from parameters in a way the tracer cannot map back element by element."""

    names: tuple[str, ...]
    op: str


Info = Act | Param | Opaque


def unlabelled(ndim: int) -> Tensor:
    return torch.full((1,) * ndim, -1, dtype=torch.long)


def compress(ids: Tensor) -> Tensor:
    """Shrink every dimension along which ``ids`` is constant to size 1."""
    for d in range(ids.ndim):
        if ids.shape[d] > 1:
            first = ids.narrow(d, 0, 1)
            if bool((ids == first).all()):
                ids = first
    return ids


def labelled_dims(ids: Tensor) -> list[int]:
    return [d for d in range(ids.ndim) if ids.shape[d] > 1]


def atoms_along(ids: Tensor, dim: int) -> Tensor | None:
    """The 1-D sequence of node ids along ``dim`` if ``ids`` varies along ``dim`` only, else ``None``.

    Returns ``-1`` entries where positions hold no neuron.
    """
    dim = dim % max(ids.ndim, 1)
    others = [d for d in labelled_dims(ids) if d != dim]
    if others:
        return None
    return ids.reshape(-1) if ids.shape[dim] > 1 else ids.reshape(-1)[:1]


def place_along(seq: Tensor, ndim: int, dim: int) -> Tensor:
    """Dense ids for a tensor of ``ndim`` dims labelled by ``seq`` along ``dim``."""
    shape = [1] * ndim
    shape[dim % ndim] = seq.numel()
    return seq.reshape(shape)


def occurrence(seq: Tensor) -> Tensor:
    """For each entry, how many equal entries precede it (the spatial index after a flatten)."""
    if seq.numel() == 0:
        return seq
    order = torch.argsort(seq, stable=True)
    s = seq[order]
    start = torch.ones_like(s, dtype=torch.bool)
    start[1:] = s[1:] != s[:-1]
    idx = torch.arange(s.numel())
    first = torch.cummax(torch.where(start, idx, torch.zeros_like(idx)), 0).values
    occ = torch.empty_like(seq)
    occ[order] = idx - first
    return occ
