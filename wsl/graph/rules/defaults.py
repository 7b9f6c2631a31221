"""The two defaults of the registry: ops on activations that no entry names, and calls on parameters alone.

* :data:`~wsl.graph.registry.UNKNOWN_OP` is :func:`~wsl.graph.rules.common.unknown_op`: the neurons it sees
  are fixed and their scale chains broken, so derived symmetries stay correct, just smaller.
* :data:`~wsl.graph.registry.PARAMETERS_ONLY` is :func:`derive_param`: a call on parameters / buffers with no
  activation that no parametric rule takes (``cls_token.expand(...)``, ``table[index]``,
  ``logit_scale.exp()``). It computes no neurons; it records, for the outputs, which parameter elements they
  hold (:class:`~wsl.graph.labels.Param`) so that the rule that finally consumes them can place the
  parameter, or :class:`~wsl.graph.labels.Opaque` when the elements cannot be traced back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..labels import Opaque, Param
from ..registry import PARAMETERS_ONLY, UNKNOWN_OP, Call, register_op
from .common import all_tensors, tensors_of, unknown_op
from .elementwise import ARITH, UNARY
from .shape import CREATION, PASS, STRUCTURAL, replay

if TYPE_CHECKING:
    from ..trace import Tracer

register_op(UNKNOWN_OP)(unknown_op)


@register_op(PARAMETERS_ONLY, params=True)
def derive_param(tr: Tracer, call: Call) -> None:
    """An op on parameters / buffers alone (see the module docstring)."""
    outs = tensors_of(call.out)
    if not outs:
        return
    params = [i for i in (tr.info_of(t) for t in all_tensors(call)) if isinstance(i, (Param, Opaque))]
    learned = [p for p in params if not (isinstance(p, Param) and p.buffer)]
    names = tuple(sorted({n for p in params for n in (p.names if isinstance(p, Opaque) else (p.name,))}))
    if call.name in CREATION:
        return
    if len(learned) == 1 and isinstance(learned[0], Param):
        # buffers next to a single parameter are constants here (e.g. a relative-position index)
        p = learned[0]
        src = next(t for t in all_tensors(call) if tr.info_of(t) is p)
        if call.name in PASS:
            for t in outs:
                tr.set_info(t, Param(p.name, p.elem, p.numel, p.buffer, p.direct, p.transformed))
            return
        if call.name in STRUCTURAL:
            res = replay(call, {id(src): p.elem.expand(src.shape)})
            for t, e in zip(outs, tensors_of(res)):
                tr.set_info(t, Param(p.name, e, p.numel, p.buffer, direct=False, transformed=p.transformed))
            return
        if call.name in UNARY or _is_scalar_arith(tr, call):
            for t in outs:
                if t.shape == src.shape:
                    tr.set_info(t, Param(p.name, p.elem, p.numel, p.buffer, p.direct, transformed=True))
                else:
                    tr.set_info(t, Param(p.name, p.elem.expand(src.shape).expand(t.shape), p.numel, p.buffer,
                                         direct=False, transformed=True))
            return
    if all(isinstance(p, Param) and p.buffer for p in params):
        return  # buffer arithmetic (e.g. rotary inv_freq): a constant, not a parameter
    for t in outs:
        tr.set_info(t, Opaque(names, call.name))


def _is_scalar_arith(tr: Tracer, call: Call) -> bool:
    """Arithmetic of one tracked tensor with Python numbers / 0-d constants only."""
    if call.name not in ARITH:
        return False
    tracked = [t for t in all_tensors(call) if tr.info_of(t) is not None]
    return len(tracked) == 1 and all(t.ndim == 0 or tr.info_of(t) is not None for t in all_tensors(call))
