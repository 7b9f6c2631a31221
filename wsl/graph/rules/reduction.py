"""Reductions and pooling of activations.

Reduced dimensions are dropped from the neuron ids. Reducing over part of a neuron grid (the ``d`` of a
``(heads, d)`` split) yields one id per head and declares the head-block structure
(:func:`~wsl.graph.rules.common.blockify`). Pooling over a dimension that indexes neurons, and order-dependent
ops (``cumsum``, ``sort``) along one, fix the neurons. Scale chains: ``mean`` / ``sum`` over non-neuron dims
and average pooling keep them, max pooling keeps them after the activation only, anything else breaks them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from ..labels import labelled_dims, unlabelled
from ..registry import Call, register_op
from .common import acts_of, blockify, break_chains, break_if, tensors_of, unknown_op

if TYPE_CHECKING:
    from ..trace import Tracer

REDUCE = {"mean", "sum", "amax", "amin", "std", "var", "norm", "logsumexp", "prod", "nansum", "nanmean",
          "max", "min", "any", "all", "median", "std_mean", "var_mean"}
GLOBAL_REDUCE = {"mean", "sum", "amax", "nanmean"}  # GHN "global_pool" op nodes
MAX_POOL = {"max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
            "max_pool3d_with_indices"}
AVG_POOL = {"avg_pool1d", "avg_pool2d", "avg_pool3d", "lp_pool1d", "lp_pool2d"}
ADAPTIVE_POOL = {"adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
                 "adaptive_max_pool2d", "adaptive_max_pool3d", "adaptive_max_pool2d_with_indices"}
RESAMPLE = {"interpolate", "upsample", "upsample_nearest", "upsample_bilinear", "pixel_unshuffle_placeholder"}


@register_op(*MAX_POOL, op_type="max_pool")
@register_op(*AVG_POOL, op_type="avg_pool")
@register_op(*ADAPTIVE_POOL, op_type="global_pool")
@register_op(*RESAMPLE)
def pool(tr: Tracer, call: Call) -> None:
    x, a = acts_of(tr, call)[0]
    outs = tensors_of(call.out)
    spatial = {1: 1, 2: 2, 3: 3}.get(int(call.name[-1]) if call.name[-1].isdigit() else 0, None)
    if spatial is None:  # interpolate: all dims after the channel dim
        spatial = x.ndim - 2
    lab = labelled_dims(a.ids)
    if any(d >= x.ndim - spatial for d in lab):
        unknown_op(tr, call)
        return
    chain = a.chain
    if chain is not None and "max" in call.name:
        chain = chain if chain[1] == "post" else None
        break_if(tr, a.chain, chain)
    if chain is not None and call.name in ("lp_pool1d", "lp_pool2d", "interpolate"):
        break_if(tr, a.chain, None)
        chain = None
    out = outs[0]
    tr.set_act(out, a.ids, chain)
    for extra in outs[1:]:
        tr.set_act(extra, unlabelled(extra.ndim))


@register_op(*GLOBAL_REDUCE, op_type="global_pool")
@register_op(*(REDUCE - GLOBAL_REDUCE))
def reduce(tr: Tracer, call: Call) -> None:
    x, a = acts_of(tr, call)[0]
    outs = tensors_of(call.out)
    if not outs:
        return
    dim = call.arg(1, "dim", None)
    if isinstance(dim, Tensor) or (call.name in ("max", "min") and dim is not None and not isinstance(dim, int)):
        unknown_op(tr, call)  # elementwise max(a, b) with tensors is handled as arith elsewhere
        return
    keep = bool(call.kwargs.get("keepdim", call.args[2] if len(call.args) > 2 and isinstance(call.args[2], bool)
                                else False))
    if call.name == "norm":
        dim = call.kwargs.get("dim", call.args[2] if len(call.args) > 2 else None)
        keep = bool(call.kwargs.get("keepdim", call.args[3] if len(call.args) > 3 else False))
    if dim is None:
        dims = list(range(x.ndim))
    else:
        dims = [int(d) % x.ndim for d in ((dim,) if isinstance(dim, int) else dim)]
    lab = labelled_dims(a.ids)
    chain = a.chain if call.name in ("mean", "sum") and not (set(dims) & set(lab)) else None
    break_if(tr, a.chain, chain)
    if set(dims) & set(lab):
        rows = [d for d in lab if d not in dims]  # reducing over part of a head grid declares the blocks
        ids = blockify(tr, a.ids, rows, [d for d in lab if d in dims]) if rows else unlabelled(x.ndim)
    else:
        ids = a.ids
    if not keep:
        ids = ids.reshape([s for d, s in enumerate(ids.shape) if d not in dims]) if ids.ndim else ids
        if ids.ndim != outs[0].ndim:
            ids = unlabelled(outs[0].ndim)
    tr.set_act(outs[0], ids, chain)
    for extra in outs[1:]:
        tr.set_act(extra, unlabelled(extra.ndim))


@register_op("cumsum", "cumprod", "sort", "topk", "cummax", "cummin")
def order_dependent(tr: Tracer, call: Call) -> None:
    x, a = acts_of(tr, call)[0]
    dim = call.arg(1, "dim", -1)
    if call.name == "topk":
        dim = call.arg(2, "dim", -1)
    if isinstance(dim, int) and a.ids.shape[dim % max(x.ndim, 1)] == 1:
        break_chains(tr, [(x, a)])
        for t in tensors_of(call.out):
            tr.set_act(t, a.ids if t.shape == x.shape else unlabelled(t.ndim))
        return
    unknown_op(tr, call)
