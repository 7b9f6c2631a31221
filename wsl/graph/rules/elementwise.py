"""Elementwise ops on activations: activation functions and arithmetic between activations / constants.

**Unary** ops pass neuron ids through. They are where scale chains are activated (see the scale-chain
contract in :mod:`wsl.graph.registry`): ReLU / LeakyReLU right after an affine layer make its neurons
positively rescalable, tanh / sin make them sign-flippable; dropouts keep the chain; anything else ends it.

**Binary** ops join their operands: equal ids pass, different ids at the same positions create a ``merge``
set (identity edges from both operands, all three permuted together: a residual stream, a gate). A constant
(or unlabelled activation) that varies along a neuron dimension pins those neurons. Only multiplying /
dividing one activation by a Python number keeps its chain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..labels import Act, compress, labelled_dims, unlabelled
from ..registry import Call, register_op
from .common import acts_of, all_tensors, break_if, tensors_of, unknown_op

if TYPE_CHECKING:
    from ..trace import Tracer

UNARY = {
    "relu", "relu_", "gelu", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "sin", "cos", "exp",
    "log", "abs", "neg", "__neg__", "__abs__", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_",
    "hardtanh", "hardtanh_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "selu_", "celu",
    "mish", "softplus", "softsign", "dropout", "dropout_", "dropout1d", "dropout2d", "dropout3d",
    "alpha_dropout", "feature_alpha_dropout", "sqrt", "rsqrt", "reciprocal", "square", "pow", "__pow__",
    "clamp", "clamp_", "clip", "clamp_min", "clamp_max", "erf", "tan", "sign", "round", "floor", "ceil",
    "logsigmoid", "tanhshrink", "exp2", "log1p", "expm1", "softmax", "log_softmax", "softmin", "gelu_",
    "nan_to_num", "__invert__", "logical_not", "isnan", "isinf", "isfinite", "threshold",
    "threshold_", "rrelu", "glu_placeholder", "sinh", "cosh", "atan", "log2", "log10", "trunc", "frac",
    "erfc", "erfinv", "deg2rad", "rad2deg", "positive", "__pos__", "normalize_placeholder",
}
# GHN op types of the unary ops that have one (the rest are "other" op nodes)
UNARY_OP_TYPES: dict[str, tuple[str, ...]] = {
    "relu": ("relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "hardtanh", "hardtanh_"),
    "gelu": ("gelu", "gelu_"),
    "silu": ("silu", "silu_", "mish"),
    "sigmoid": ("sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_", "logsigmoid"),
    "tanh": ("tanh", "tanh_"),
    "softmax": ("softmax", "log_softmax", "softmin"),
    "hardswish": ("hardswish", "hardswish_"),
    "act_other": ("elu", "elu_", "selu", "selu_", "celu", "softplus", "softsign", "sin", "cos", "exp"),
}
SUM = {"add", "__add__", "__radd__", "__iadd__", "add_", "sub", "__sub__", "__rsub__", "rsub", "__isub__", "sub_"}
PRODUCT = {"mul", "__mul__", "__rmul__", "__imul__", "mul_", "div", "__truediv__", "__rtruediv__", "true_divide",
           "div_", "__itruediv__"}
ARITH = {
    "add", "sub", "mul", "div", "true_divide", "__add__", "__radd__", "__sub__", "__rsub__", "__mul__",
    "__rmul__", "__truediv__", "__rtruediv__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "add_",
    "sub_", "mul_", "div_", "rsub", "maximum", "minimum", "where", "masked_fill", "masked_fill_",
    "__and__", "__or__", "__xor__", "eq", "ne", "lt", "le", "gt", "ge", "__eq__", "__ne__", "__lt__",
    "__le__", "__gt__", "__ge__", "fmod", "remainder", "__mod__", "atan2", "copysign", "logical_and",
    "logical_or", "floor_divide", "__floordiv__", "lerp", "addcmul", "addcdiv", "pow", "__pow__",
}

_POSITIVE_ACTS = {"relu", "relu_", "leaky_relu", "leaky_relu_"}
_ODD_ACTS = {"tanh", "tanh_", "sin"}
_KEEP_CHAIN = {"dropout", "dropout_", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
               "feature_alpha_dropout"}
_SCALAR_SCALE = {"mul", "__mul__", "__rmul__", "__imul__", "mul_", "div", "__truediv__", "true_divide", "div_",
                 "__itruediv__"}


# ------------------------------------------------------------------------------------------------ unary
def unary(tr: Tracer, call: Call) -> None:
    acts = acts_of(tr, call)
    x, a = acts[0]
    chain = _next_chain(tr, a.chain, call.name)
    if call.name in ("softmax", "log_softmax", "softmin"):
        chain = None
    break_if(tr, a.chain, chain)
    for t in tensors_of(call.out):
        tr.set_act(t, a.ids.expand(t.shape) if t.shape != x.shape else a.ids, chain)


_typed = set().union(*UNARY_OP_TYPES.values())
for _op_type, _names in UNARY_OP_TYPES.items():
    register_op(*_names, op_type=_op_type)(unary)
register_op(*(UNARY - _typed - ARITH))(unary)  # pow / __pow__ may have a tensor exponent: binary handles them


def _next_chain(tr: Tracer, chain: tuple[int, str] | None, name: str) -> tuple[int, str] | None:
    if chain is None:
        return None
    idx, stage = chain
    if name in _KEEP_CHAIN:
        return chain
    if stage == "pre" and name in _POSITIVE_ACTS:
        tr.builder.scale[idx].activations.add("positive")
        return (idx, "post")
    if stage == "pre" and name in _ODD_ACTS:
        tr.builder.scale[idx].activations.add("odd")
        return (idx, "post")
    return None


# ----------------------------------------------------------------------------------------------- binary
@register_op(*SUM, op_type="sum")
@register_op(*PRODUCT, op_type="mul")
@register_op(*(ARITH - SUM - PRODUCT))
def binary(tr: Tracer, call: Call) -> None:
    out = call.out if isinstance(call.out, Tensor) else (call.args[0] if call.out is None else None)
    if not isinstance(out, Tensor):
        unknown_op(tr, call)
        return
    tensors = all_tensors(call)
    acts = [(t, tr.info_of(t)) for t in tensors if isinstance(tr.info_of(t), Act)]
    consts = [t for t in tensors if tr.info_of(t) is None and t.ndim > 0 and t.numel() > 1]
    shape = out.shape
    nd = len(shape)

    def aligned(t: Tensor, ids: Tensor) -> Tensor:
        ids = ids.reshape((1,) * (nd - ids.ndim) + tuple(ids.shape))
        return ids

    ids_list = [aligned(t, a.ids) for t, a in acts]
    lab = set()
    for ids in ids_list:
        lab.update(labelled_dims(ids))
    # a constant / unlabelled activation that varies along a neuron dimension pins those neurons
    for t in consts + [t for t, a in acts if not bool((a.ids >= 0).any())]:
        tshape = (1,) * (nd - t.ndim) + tuple(t.shape)
        if any(tshape[d] > 1 for d in lab):
            for ids in ids_list:
                tr.builder.fix(ids)
    labelled = [ids for ids in ids_list if bool((ids >= 0).any())]
    chain = _arith_chain(tr, call, acts)
    if not labelled:
        tr.set_act(out, unlabelled(nd), chain)
        return
    if len(labelled) == 1:
        tr.set_act(out, labelled[0].expand(shape) if labelled[0].ndim == nd else labelled[0], chain)
        return
    full = [compress(torch.broadcast_to(ids, shape)) for ids in labelled]
    dims = sorted(set().union(*[labelled_dims(f) for f in full]))
    cshape = [shape[d] if d in dims else 1 for d in range(nd)]
    full = [f.expand(cshape) for f in full]
    if all(torch.equal(full[0], f) for f in full[1:]):
        tr.set_act(out, full[0], chain)
        return
    tr.set_act(out, merge(tr, full, call), None)


def merge(tr: Tracer, full: list[Tensor], call: Call) -> Tensor:
    """Join activations holding different neurons at the same positions into a new ``merge`` set."""
    b = tr.builder
    flat = torch.stack([f.reshape(-1) for f in full], 1) + 1  # [P, k], shifted so "no neuron" is 0
    key = torch.zeros(flat.shape[0], dtype=torch.long)
    for j in range(flat.shape[1]):
        key = key * (b.num_nodes + 1) + flat[:, j]
    ukey, inverse = torch.unique(key, return_inverse=True)
    uniq = torch.stack([(ukey // (b.num_nodes + 1) ** (flat.shape[1] - 1 - j)) % (b.num_nodes + 1)
                        for j in range(flat.shape[1])], 1) - 1
    m = b.new_set(uniq.shape[0], "merge", f"{call.module or 'root'}:{call.name}", call.name)
    for j in range(uniq.shape[1]):
        col = uniq[:, j]
        ok = col >= 0
        if ok.any():
            b.add_edges(None, (int(ok.sum()),), col[ok], m[ok], "identity")
        b.tie(col, m)
    return m[inverse].reshape(full[0].shape)


def _arith_chain(tr: Tracer, call: Call, acts: list[tuple[Tensor, Act]]) -> tuple[int, str] | None:
    """The chain of the result: kept only for one activation times / over a Python number; else broken."""
    chains = [a.chain for _, a in acts if a.chain is not None]
    if not chains:
        return None
    tensors = all_tensors(call)
    scalar_only = len(acts) == 1 and all(t.ndim == 0 and tr.info_of(t) is None for t in tensors
                                         if tr.info_of(t) is None)
    if scalar_only and call.name in _SCALAR_SCALE and not any(t is not acts[0][0] for t in tensors):
        return chains[0]
    for c in chains:
        break_if(tr, c, None)
    return None
