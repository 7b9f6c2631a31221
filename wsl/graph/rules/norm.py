"""Normalization layers: BatchNorm / InstanceNorm, LayerNorm, GroupNorm, RMSNorm.

A norm layer is a diagonal affine map on the channels it normalizes, so it gets a new ``norm`` set of the
same size, tied to its input (they are permuted together). The weight (gamma) becomes one ``norm`` edge
per channel (input channel -> norm neuron); bias (beta) and the running statistics of BatchNorm become
the ``bias`` / ``running_mean`` / ``running_var`` features of the norm neurons. Without a weight the
edges are fixed identity edges. GroupNorm additionally declares its channel groups as blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..builder import ConversionError
from ..labels import Act, labelled_dims
from ..registry import Call, register_op
from .common import (
    consume,
    group_heads,
    input_atoms,
    output,
    place_edges,
    place_nodes,
    weight_info,
)

if TYPE_CHECKING:
    from ..trace import Tracer


def _norm(tr: Tracer, call: Call, x, dim: int, weight, bias, stats=(), groups: int = 1) -> None:
    pw = weight_info(tr, call, weight, "weight")
    pb = weight_info(tr, call, bias, "bias")
    seq = input_atoms(tr, call, x, dim)
    consume(tr, x, affine=False)
    out = tr.builder.new_set(seq.numel(), "norm", call.module or call.name, call.name)
    tr.builder.tie(seq, out)
    if groups > 1:
        group_heads(tr, seq, groups)
    if pw is not None:
        place_edges(tr, call, pw, weight.shape, seq.reshape(weight.shape), out.reshape(weight.shape), "norm",
                    axes="dst,dst")
    else:
        tr.builder.add_edges(None, (seq.numel(),), seq, out, "identity")
    place_nodes(tr, call, pb, bias.shape if bias is not None else None, out, "bias")
    for t, col in stats:
        if t is not None:
            pt = weight_info(tr, call, t, col)
            place_nodes(tr, call, pt, t.shape, out, col)
    output(tr, call, call.out, out, dim)


@register_op("batch_norm", params=True, needs_buffers=True, op_type="bn")
@register_op("instance_norm", params=True, needs_buffers=True, op_type="instance_norm")
def batch_norm(tr: Tracer, call: Call) -> None:
    x = call.arg(0, "input")
    if call.name == "batch_norm":
        rm, rv, w, b = (call.arg(1, "running_mean"), call.arg(2, "running_var"), call.arg(3, "weight"),
                        call.arg(4, "bias"))
    else:
        rm, rv, w, b = (call.arg(1, "running_mean"), call.arg(2, "running_var"), call.arg(3, "weight"),
                        call.arg(4, "bias"))
    _norm(tr, call, x, 1 if x.ndim > 1 else 0, w, b, stats=((rm, "running_mean"), (rv, "running_var")))


@register_op("layer_norm", params=True, op_type="ln")
@register_op("rms_norm", params=True, op_type="rms_norm")
def layer_norm(tr: Tracer, call: Call) -> None:
    x, shape = call.arg(0, "input"), call.arg(1, "normalized_shape")
    w = call.arg(2, "weight")
    b = call.arg(3, "bias") if call.name == "layer_norm" else None
    if len(tuple(shape)) != 1:
        raise ConversionError(
            f"{call.where()} normalizes over {len(tuple(shape))} dimensions {tuple(shape)} with learned "
            "parameters; wsl supports norms over one (channel) dimension"
        )
    _norm(tr, call, x, -1, w, b)


@register_op("group_norm", params=True, op_type="gn")
def group_norm(tr: Tracer, call: Call) -> None:
    x, g = call.arg(0, "input"), call.arg(1, "num_groups")
    _norm(tr, call, x, 1, call.arg(2, "weight"), call.arg(3, "bias"), groups=int(g))


@register_op("batch_norm", "instance_norm", "layer_norm", "rms_norm", "group_norm", "local_response_norm",
             "normalize")
def norm_without_params(tr: Tracer, call: Call) -> None:
    """Normalization with no learned parameters: equivariant, neurons pass through (groups declared)."""
    x = call.args[0]
    info = tr.info_of(x)
    consume(tr, x, affine=False)
    if not isinstance(info, Act):
        return
    if call.name == "group_norm" and info.ids.shape[1] > 1:
        seq = input_atoms(tr, call, x, 1)
        group_heads(tr, seq, int(call.arg(1, "num_groups")))
    if call.name == "local_response_norm":
        tr.builder.fix(info.ids)
    if call.name == "normalize":
        dim = call.arg(2, "dim", 1)
        if set(labelled_dims(info.ids)) - {dim % x.ndim}:
            tr.builder.fix(info.ids)
    tr.set_act(call.out, info.ids)

