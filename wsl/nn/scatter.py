"""One scatter dispatch for all message passing in :mod:`wsl.nn`.

Every reduction a metanetwork does (sum / mean / max / min / std of edge messages into nodes, the
softmax over a node's incoming edges, per-graph pooling) goes through :func:`scatter` and
:func:`segment_softmax`. Two backends implement them:

* ``"native"``: torch's own ``index_add_`` / ``scatter_reduce_`` (always available, CPU and CUDA);
* ``"torch_scatter"``: the ``torch-scatter`` extension (``pip install "weightspace[scatter]"``), used for the
  min / max / std reductions where its fused kernels help; sums and means stay on ``index_add_``, which is
  as fast and deterministic on CPU.

The backend is chosen by :func:`set_backend` / :func:`use_backend`, or the ``WSL_SCATTER`` environment
variable (``auto`` | ``native`` | ``torch_scatter``); ``auto`` (the default) takes ``torch_scatter`` when it
imports and ``native`` otherwise. Both run on whatever device the tensors are on.

All functions reduce along dimension 0: ``src`` is ``[E, ...]``, ``index`` is ``[E]`` (int64) and the
result is ``[dim_size, ...]``; rows that receive nothing are 0.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

REDUCTIONS = ("sum", "mean", "max", "min", "std")
BACKENDS = ("auto", "native", "torch_scatter")

_requested = os.environ.get("WSL_SCATTER", "auto")
_torch_scatter = None
_probed = False


def _load_torch_scatter():
    global _torch_scatter, _probed
    if not _probed:
        _probed = True
        try:
            import torch_scatter  # type: ignore[import-not-found]

            _torch_scatter = torch_scatter
        except (ImportError, OSError, RuntimeError):  # not installed, or built against another torch
            _torch_scatter = None
    return _torch_scatter


def available_backends() -> list[str]:
    """Backends that work in this environment."""
    return ["native"] + (["torch_scatter"] if _load_torch_scatter() is not None else [])


def get_backend() -> str:
    """The backend in use (``auto`` resolved)."""
    if _requested == "auto":
        return "torch_scatter" if _load_torch_scatter() is not None else "native"
    return _requested


def set_backend(name: str) -> None:
    """Select ``auto``, ``native`` or ``torch_scatter`` for all later calls."""
    global _requested
    if name not in BACKENDS:
        raise ValueError(f"unknown scatter backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "torch_scatter" and _load_torch_scatter() is None:
        raise ImportError('scatter backend "torch_scatter" requested but torch-scatter does not import; '
                          'install it with `pip install --no-build-isolation torch-scatter` (or "weightspace[scatter]") '
                          'or use the "native" backend')
    _requested = name


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Temporarily select a backend: ``with use_backend("native"): ...``."""
    old = _requested
    set_backend(name)
    try:
        yield
    finally:
        set_backend(old)


if _requested not in BACKENDS:  # a bad environment variable must not go unnoticed
    raise ValueError(f"WSL_SCATTER={_requested!r} is not a scatter backend; use one of {', '.join(BACKENDS)}")


# ------------------------------------------------------------------------------------------ reductions
def _sum(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    return src.new_zeros((dim_size, *src.shape[1:])).index_add_(0, index, src)


def count(index: Tensor, dim_size: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Number of entries per output row, ``[dim_size]``."""
    return torch.bincount(index, minlength=dim_size).to(dtype)


def _expand(index: Tensor, src: Tensor) -> Tensor:
    return index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)


def _extreme(src: Tensor, index: Tensor, dim_size: int, reduce: str) -> Tensor:
    ts = _load_torch_scatter() if get_backend() == "torch_scatter" else None
    if ts is not None:
        fn = ts.scatter_max if reduce == "max" else ts.scatter_min
        return fn(src, index, dim=0, dim_size=dim_size)[0]
    out = src.new_zeros((dim_size, *src.shape[1:]))
    return out.scatter_reduce_(0, _expand(index, src), src, reduce="amax" if reduce == "max" else "amin",
                               include_self=False)


def scatter(src: Tensor, index: Tensor, dim_size: int, reduce: str = "sum", *,
            counts: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Reduce rows of ``src`` into ``dim_size`` rows by ``index``.

    ``counts`` (rows per output, as from :func:`count`) may be passed to save recomputing it for ``mean``
    and ``std``; ``std`` is ``sqrt(var + eps)`` of the population variance.
    """
    if index.dtype != torch.long:
        raise TypeError(f"scatter index must be int64, got {index.dtype}")
    if index.dim() != 1 or index.numel() != src.shape[0]:
        raise ValueError(f"scatter index of shape {tuple(index.shape)} does not match src rows {src.shape[0]}")
    if reduce == "sum":
        return _sum(src, index, dim_size)
    if reduce in ("mean", "std"):
        c = counts if counts is not None else count(index, dim_size, src.dtype)
        c = c.view(-1, *([1] * (src.dim() - 1)))
        mean = _sum(src, index, dim_size) / c.clamp(min=1)
        if reduce == "mean":
            return mean
        var = (_sum(src * src, index, dim_size) / c.clamp(min=1) - mean * mean).clamp(min=0)
        return torch.sqrt(var + eps) * (c > 0).to(src.dtype)
    if reduce in ("max", "min"):
        return _extreme(src, index, dim_size, reduce)
    raise ValueError(f"unknown reduction {reduce!r}; choose one of {', '.join(REDUCTIONS)}")


def gather(src: Tensor, index: Tensor) -> Tensor:
    """``src[index]`` along dim 0 via ``index_select``, whose backward is an ``index_add_`` (advanced
    indexing's backward is an accumulating ``index_put_``, several times slower on CPU)."""
    return src.index_select(0, index)


def segment_softmax(logits: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """Softmax of ``logits`` ``[E, ...]`` over the entries that share an ``index`` (e.g. a node's in-edges)."""
    top = _extreme(logits.detach(), index, dim_size, "max")
    z = torch.exp(logits - gather(top, index))
    return z / (gather(_sum(z, index, dim_size), index) + 1e-16)


# ------------------------------------------------------------------------------------------ fast paths
def extreme_with_mask(src: Tensor, index: Tensor, dim_size: int, reduce: str, *, mask: bool = True,
                      counts: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``(out, hit, ties)``: the ``max`` / ``min`` of ``src`` ``[E, ...]`` per output row (native
    ``scatter_reduce_``; empty rows 0), the boolean ``[E, ...]`` mask of the entries equal to their row's
    extreme, and the number of such entries per output element (``None`` when there are no ties, which is
    checked with one count). The mask and counts are what a backward needs: ``grad[index] * hit / ties[index]``
    (ties share the gradient evenly). ``mask=False`` skips both (inference). ``counts`` (entries per output
    row, as from :func:`count`), when the caller has it, saves counting ``index`` again."""
    out = src.new_zeros((dim_size, *src.shape[1:]))
    out.scatter_reduce_(0, _expand(index, src), src, reduce="amax" if reduce == "max" else "amin",
                        include_self=False)
    if not mask:
        return out, None, None
    hit = src == out.index_select(0, index)
    filled = int((counts if counts is not None else torch.bincount(index, minlength=dim_size)).count_nonzero())
    ties = None
    if int(hit.count_nonzero()) != filled * (src.numel() // max(src.shape[0], 1)):
        ties = _sum(as_float(hit, src.dtype), index, dim_size).clamp_(min=1)
    return out, hit, ties


def as_float(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask as ``dtype``, through a ``uint8`` view (the direct bool conversion takes a slow path on
    CPU)."""
    return mask.view(torch.uint8).to(dtype)


class _ScatterExtreme(torch.autograd.Function):
    """Max / min per output row with a cheap backward.

    Forward is torch's ``scatter_reduce_`` (``amax`` / ``amin``). Its stock backward re-gathers with an
    ``[E, d]`` index tensor and scatter-adds tie counts on every call; here the forward keeps a boolean
    ``[E, d]`` mask of the entries that reached the extreme (:func:`extreme_with_mask`), and the backward is
    one ``index_select`` times that mask. Tied entries share the gradient evenly.
    """

    @staticmethod
    def forward(ctx, src: Tensor, index: Tensor, dim_size: int, reduce: str) -> Tensor:  # type: ignore[override]
        out, hit, ties = extreme_with_mask(src, index, dim_size, reduce, mask=ctx.needs_input_grad[0])
        ctx.save_for_backward(hit, index, ties)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        hit, index, ties = ctx.saved_tensors
        if ties is not None:
            grad = grad / ties
        return grad.index_select(0, index).mul_(as_float(hit, grad.dtype)), None, None, None


def scatter_extreme(src: Tensor, index: Tensor, dim_size: int, reduce: str = "max") -> Tensor:
    """``scatter(src, index, dim_size, reduce)`` for ``reduce`` in ``max`` / ``min``, always on torch's
    native kernel (faster than torch-scatter's on CPU for ``[E, d]`` rows) with a mask-based backward;
    gradients of tied entries are split evenly. Rows that receive nothing are 0."""
    if reduce not in ("max", "min"):
        raise ValueError(f"scatter_extreme reduces by 'max' or 'min', got {reduce!r}")
    if index.dtype != torch.long or index.dim() != 1 or index.numel() != src.shape[0]:
        raise ValueError(f"scatter_extreme index must be int64 of shape [{src.shape[0]}], "
                         f"got {index.dtype} {tuple(index.shape)}")
    return _ScatterExtreme.apply(src, index, dim_size, reduce)
