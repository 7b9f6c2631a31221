"""Shape ops on activations: views, reshapes, transposes, slicing, concatenation, padding, dtype casts.

A **structural** op is replayed on the activation's neuron-id tensor itself (:func:`replay`), so reshapes,
head splits, channel shuffles and concatenations need no per-op bookkeeping. An output that keeps only part
of its input's neurons (a slice, a chunk) records that those neurons must be permuted among themselves. A
single operand's scale chain passes through; several chained operands break it. **Pass-through** ops
(``contiguous``, ``to``, ``detach``) keep ids and chain; **creation** ops (``zeros_like``, ``size``) read only
an activation's shape and make constants.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils._pytree import tree_map

from ..labels import Act, compress
from ..registry import Call, register_op
from .common import acts_of, break_chains, tensors_of, unknown_op

if TYPE_CHECKING:
    from ..trace import Tracer


class NeedRealValues(RuntimeError):
    """Raised in meta-tensor tracing when an op needs the values of a constant (an index tensor)."""


class Unsupported(Exception):
    """The op cannot be replayed on id tensors (e.g. reflect padding copies neurons)."""


CONCAT = {"cat", "concat", "concatenate", "stack"}
STRUCTURAL = {
    "view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "permute", "transpose", "t",
    "movedim", "moveaxis", "swapaxes", "swapdims", "expand", "expand_as", "repeat", "view_as", "reshape_as",
    "__getitem__", "narrow", "select", "chunk", "split", "unbind", "tensor_split", "index_select", "flip",
    "roll", "cat", "concat", "concatenate", "stack", "pad", "__get__.T", "__get__.mT", "repeat_interleave",
    "tile", "broadcast_to", "unfold", "diagonal",
}
PASS = {
    "contiguous", "clone", "detach", "to", "type", "float", "half", "bfloat16", "double", "cpu", "cuda",
    "__get__.data", "type_as", "requires_grad_", "detach_", "align_to",
}
CREATION = {
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "randint_like",
    "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "size", "dim", "numel", "__len__",
    "__get__.shape", "__get__.dtype", "__get__.device", "__get__.is_cuda", "__get__.ndim", "argmax",
    "argmin", "argsort", "nonzero", "__get__.requires_grad", "__get__.grad", "__get__.is_meta",
    "is_floating_point", "is_complex", "element_size", "__get__.layout", "stride", "data_ptr",
}
_DATA_ONLY = {"cat", "concat", "concatenate", "stack", "hstack", "vstack"}
_VIEW_AS_RESHAPE = {"view": "reshape", "view_as": "reshape_as"}


# ---------------------------------------------------------------------------------------- replay
def _substitute(call: Call, sub: dict[int, Tensor]) -> tuple[tuple, dict]:
    """Arguments with tracked tensors replaced by id tensors; constants must hold real values."""
    data_only = call.name in _DATA_ONLY

    def f(x):
        if isinstance(x, Tensor):
            if id(x) in sub:
                return sub[id(x)]
            if data_only or x.is_floating_point():  # constant data, not an index: holds no neuron
                return torch.full(x.shape, -1, dtype=torch.long)
            if x.is_meta:
                raise NeedRealValues(call.where())
        return x

    return tree_map(f, call.args), tree_map(f, call.kwargs)


def replay(call: Call, sub: dict[int, Tensor]):
    """Run the call's op on id tensors: ``sub`` maps ``id(argument)`` to the ids (or element indices) it holds."""
    args, kwargs = _substitute(call, sub)
    func = call.func
    if call.name in _VIEW_AS_RESHAPE:
        func = getattr(torch.Tensor, _VIEW_AS_RESHAPE[call.name])
    if call.name in ("pad", "constant_pad_nd"):
        mode = call.arg(2, "mode", "constant") if call.name == "pad" else "constant"
        if mode not in (None, "constant"):
            raise Unsupported  # reflect / replicate padding copies neurons: handled conservatively
        return torch.nn.functional.pad(args[0], args[1], value=-1)  # padded positions hold no neuron
    return func(*args, **kwargs)


# -------------------------------------------------------------------------------------- handlers
@register_op(*CONCAT, op_type="concat")
@register_op(*(STRUCTURAL - CONCAT))
def structural(tr: Tracer, call: Call) -> None:
    acts = acts_of(tr, call)
    if call.name in ("pad", "constant_pad_nd") and _pads_only_unlabelled(call, acts):
        a = acts[0][1]
        tr.set_act(call.out, a.ids, a.chain if a.chain is None or a.chain[1] == "post" else None)
        return
    sub = {id(t): a.ids.expand(t.shape) for t, a in acts}
    try:
        res = replay(call, sub)
    except Unsupported:
        unknown_op(tr, call)
        return
    outs, ids_out = tensors_of(call.out), tensors_of(res)
    if len(outs) != len(ids_out):
        unknown_op(tr, call)
        return
    in_atoms = torch.unique(torch.cat([a.ids.reshape(-1) for _, a in acts]))
    in_atoms = in_atoms[in_atoms >= 0]
    chains = {a.chain for _, a in acts}
    chain = chains.pop() if len(chains) == 1 else None
    if len(acts) > 1 and chain is not None:
        break_chains(tr, acts)
        chain = None
    for t, ids in zip(outs, ids_out):
        ids = compress(ids)
        got = torch.unique(ids)
        got = got[got >= 0]
        if got.numel() < in_atoms.numel():
            tr.builder.keep_together(got)
        tr.set_act(t, ids, chain)


def _pads_only_unlabelled(call: Call, acts: list[tuple[Tensor, Act]]) -> bool:
    """Zero padding of spatial / sequence dims only: padded zeros are inert for every neuron."""
    if len(acts) != 1 or call.out is None:
        return False
    x, a = acts[0]
    pad = call.arg(1, "pad")
    mode = call.arg(2, "mode", "constant")
    value = call.arg(3, "value", None)
    if mode not in (None, "constant") or (value not in (None, 0, 0.0)):
        return False
    padded = [x.ndim - 1 - i // 2 for i in range(len(pad)) if pad[i] != 0]
    return all(a.ids.shape[d] == 1 for d in padded)


@register_op(*PASS)
def passthrough(tr: Tracer, call: Call) -> None:
    acts = acts_of(tr, call)
    a = acts[0][1]
    for t in tensors_of(call.out):
        if t.ndim == acts[0][0].ndim:
            tr.set_act(t, a.ids, a.chain)
        else:
            unknown_op(tr, call)


@register_op(*CREATION)
def creation(tr: Tracer, call: Call) -> None:
    """Tensors created from an activation's shape only (zeros_like, new_zeros): constants."""
