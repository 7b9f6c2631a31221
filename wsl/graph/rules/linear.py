"""Dense layers: ``F.linear``, ``torch.addmm`` (HF GPT-2 ``Conv1D``) and ``activation @ weight``.

A weight ``W[out, in]`` becomes ``out * in`` edges ``in-neuron -> out-neuron`` in row-major order; the
bias is the ``bias`` feature of the new output neurons. When the input is a flattened feature map, each
input channel appears several times along the input dimension: the edge's ``pos[:, 0]`` is then the
spatial index (the dense layer acts like a convolution whose kernel covers the whole map).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..builder import ConversionError
from ..labels import Param
from ..registry import Call, register_op
from .common import (
    consume,
    flatten_positions,
    input_atoms,
    output,
    place_edges,
    place_nodes,
    weight_info,
)

if TYPE_CHECKING:
    from ..trace import Tracer


def _dense(tr: Tracer, call: Call, x, w, b, transposed: bool) -> None:
    """``y = x @ W^T + b`` (``transposed=False``, W is [out, in]) or ``y = x @ W + b`` (W is [in, out])."""
    pw = weight_info(tr, call, w, "weight")
    pb = weight_info(tr, call, b, "bias")
    seq = input_atoms(tr, call, x, -1)
    consume(tr, x, affine=True)
    n_out = w.shape[1] if transposed else w.shape[0]
    out = tr.builder.new_set(n_out, "hidden", call.module or call.name, call.name)
    pos = flatten_positions(seq)
    if transposed:  # W[in, out]
        src, dst, ps = seq[:, None], out[None, :], pos[:, None, :]
        axes = "src,dst"
    else:
        src, dst, ps = seq[None, :], out[:, None], pos[None, :, :]
        axes = "dst,src"
    place_edges(tr, call, pw, w.shape, src, dst, "linear", ps, axes)
    if b is not None:
        place_nodes(tr, call, pb, b.shape, out if b.ndim == 1 else out.expand(b.shape), "bias")
    output(tr, call, call.out, out, -1, chain_set=0)


@register_op("linear", params=True, op_type="linear")
def linear(tr: Tracer, call: Call) -> None:
    _dense(tr, call, call.arg(0, "input"), call.arg(1, "weight"), call.arg(2, "bias"), transposed=False)


@register_op("addmm", params=True, op_type="linear")
def addmm(tr: Tracer, call: Call) -> None:
    bias, x, w = call.arg(0, "input"), call.arg(1, "mat1"), call.arg(2, "mat2")
    _dense(tr, call, x, w, bias, transposed=True)


@register_op("matmul", "__matmul__", "mm", "bmm", params=True, op_type="matmul")
def matmul_param(tr: Tracer, call: Call) -> None:
    a, b = call.args[0], call.args[1]
    if isinstance(tr.info_of(b), Param) and b.ndim == 2:
        _dense(tr, call, a, b, None, transposed=True)
        return
    raise ConversionError(
        f"{call.where()} multiplies by a parameter in a layout wsl does not know (parameter on the left or "
        "batched); use nn.Linear or x @ W with a 2-D W"
    )
