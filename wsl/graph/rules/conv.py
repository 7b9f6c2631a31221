"""Convolutions ``F.conv{1,2,3}d`` and ``F.conv_transpose{1,2,3}d`` (any stride / padding / dilation /
groups, depthwise included).

Encoding: **one edge per kernel element**. ``W[out, in/groups, *k]`` gives ``out * in/groups * prod(k)``
edges ``in-channel -> out-channel`` in the tensor's row-major order, each with ``pos`` = the element's
offset from the kernel centre (``[dz, dy, dx]`` right-aligned in 3 slots). Memory stays O(parameters) and
1x1 / 3x3 / 7x7 / 3-D kernels need no padding. Grouped convolutions declare their channel groups as blocks
(input and output groups are permuted together).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..registry import Call, register_op
from .common import (
    consume,
    group_heads,
    input_atoms,
    kernel_positions,
    output,
    place_edges,
    place_nodes,
    weight_info,
)

if TYPE_CHECKING:
    from ..trace import Tracer


def _conv(tr: Tracer, call: Call, nd: int, transposed: bool) -> None:
    x, w, b = call.arg(0, "input"), call.arg(1, "weight"), call.arg(2, "bias")
    groups = call.arg(6, "groups", 1)  # position 6 in both conv{n}d and conv_transpose{n}d
    pw = weight_info(tr, call, w, "weight")
    pb = weight_info(tr, call, b, "bias")
    cdim = x.ndim - nd - 1
    seq = input_atoms(tr, call, x, cdim)
    consume(tr, x, affine=True)
    kernel = tuple(w.shape[2:])
    if transposed:
        c_in, per_group_out = w.shape[0], w.shape[1]
        n_out = per_group_out * groups
    else:
        n_out, per_group_in = w.shape[0], w.shape[1]
        c_in = per_group_in * groups
    out = tr.builder.new_set(n_out, "hidden", call.module or call.name, call.name)
    pos = kernel_positions(kernel).reshape(1, 1, *kernel, 3)
    ks = (1,) * nd
    if transposed:  # W[in, out/groups, *k]
        src = seq.reshape(-1, 1, *ks)
        if groups == 1:
            dst = out.reshape(1, -1, *ks)
        else:
            i = torch.arange(c_in)
            o = (i // (c_in // groups))[:, None] * per_group_out + torch.arange(per_group_out)[None, :]
            dst = out[o].reshape(c_in, per_group_out, *ks)
        etype, axes = "conv_transpose", "src,dst"
    else:  # W[out, in/groups, *k]
        dst = out.reshape(-1, 1, *ks)
        if groups == 1:
            src = seq.reshape(1, -1, *ks)
        else:
            o = torch.arange(n_out)
            i = (o // (n_out // groups))[:, None] * per_group_in + torch.arange(per_group_in)[None, :]
            src = seq[i].reshape(n_out, per_group_in, *ks)
        etype, axes = "conv", "dst,src"
    place_edges(tr, call, pw, w.shape, src, dst, etype, pos, axes)
    if b is not None:
        place_nodes(tr, call, pb, b.shape, out, "bias")
    if groups > 1:
        tr.builder.tie(group_heads(tr, seq, groups), group_heads(tr, out, groups))
    output(tr, call, call.out, out, cdim, chain_set=0)


for _nd in (1, 2, 3):
    register_op(f"conv{_nd}d", params=True, op_type="conv")(lambda tr, call, nd=_nd: _conv(tr, call, nd, transposed=False))
    register_op(f"conv_transpose{_nd}d", params=True, op_type="conv_transpose")(lambda tr, call, nd=_nd: _conv(tr, call, nd, transposed=True))
