"""Contractions of activations with each other: ``matmul`` / ``bmm`` / ``einsum`` /
``scaled_dot_product_attention`` (the heart of attention).

A contraction ties the contracted neurons of its two operands (q with k) and the neurons / heads along the
batched dimensions (q heads with v heads); the result keeps the finer labelling (v's neurons). Reducing a
neuron grid over its within-head dimension declares the head blocks (:func:`~wsl.graph.rules.common.blockify`).
Every contraction breaks its operands' scale chains. ``x @ W`` with a parameter ``W`` is the dense rule
(:mod:`wsl.graph.rules.linear`), not this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..labels import Act, compress, labelled_dims, unlabelled
from ..registry import Call, register_op
from .common import acts_of, blockify, break_chains, unknown_op

if TYPE_CHECKING:
    from ..trace import Tracer


# ------------------------------------------------------------------------------------------ contraction
def contract(tr: Tracer, a_ids: Tensor, a_shape, b_ids: Tensor, b_shape) -> Tensor | None:
    """Neuron ids of ``A @ B`` (``A: [..., n, k]``, ``B: [..., k, m]``); records ties. ``None``: give up."""
    batch = torch.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2]))
    nd = len(batch) + 2
    A = a_ids.reshape((1,) * (nd - a_ids.ndim) + tuple(a_ids.shape))
    B = b_ids.reshape((1,) * (nd - b_ids.ndim) + tuple(b_ids.shape))
    a_lab, b_lab = set(labelled_dims(A)), set(labelled_dims(B))
    k_a, k_b = nd - 1 in a_lab, nd - 2 in b_lab
    if nd - 2 in a_lab and k_a or nd - 1 in b_lab and k_b:
        return None  # neurons along both matrix dims of one operand
    if k_a and k_b:
        kA = A.narrow(nd - 2, 0, 1)
        kB = B.narrow(nd - 1, 0, 1).transpose(-1, -2)
        shape = torch.broadcast_shapes(kA.shape, kB.shape)
        tr.builder.tie(kA.expand(shape), kB.expand(shape))
    elif k_a or k_b:
        tr.builder.fix(A if k_a else B)

    def side(X: Tensor, k_dim: int, keep_dim: int, k_lab: bool) -> Tensor:
        lab = labelled_dims(X)
        if k_lab:
            rows = [d for d in lab if d != k_dim]
            if not rows:
                return unlabelled(nd)
            return blockify(tr, X, rows, [k_dim])
        return X

    SA = side(A, nd - 1, nd - 2, k_a)  # labels over batch dims and n (dim nd-2), k dim size 1
    SB = side(B, nd - 2, nd - 1, k_b)
    SA = SA.narrow(nd - 1, 0, 1) if SA.shape[nd - 1] > 1 else SA
    SB = SB.narrow(nd - 2, 0, 1) if SB.shape[nd - 2] > 1 else SB
    la, lb = bool((SA >= 0).any()), bool((SB >= 0).any())
    if la != lb:
        _pin_heads(tr, SA if la else SB, nd - 2 if la else nd - 1, b_shape if la else a_shape, nd)
    if not la:
        return SB if SB.ndim == nd else None
    if not lb:
        return SA
    if (nd - 2) in labelled_dims(SA) and (nd - 1) in labelled_dims(SB):
        return None
    # both carry labels over the batch dims (heads): tie them, keep the finer one
    ba = SA if nd - 2 not in labelled_dims(SA) else None
    bb = SB if nd - 1 not in labelled_dims(SB) else None
    if ba is not None and bb is not None:
        shape = torch.broadcast_shapes(ba.shape, bb.shape)
        tr.builder.tie(ba.expand(shape), bb.expand(shape))
        return SA
    fine, coarse = (SA, bb) if ba is None else (SB, ba)
    fdim = nd - 2 if ba is None else nd - 1
    rows = [d for d in labelled_dims(fine) if d != fdim]
    heads = blockify(tr, fine, rows, [fdim]) if rows else None
    if heads is None or not bool((heads >= 0).any()):
        tr.builder.fix(coarse)
        return fine
    shape = torch.broadcast_shapes(heads.shape, coarse.shape)
    tr.builder.tie(heads.expand(shape), coarse.expand(shape))
    return fine


def _pin_heads(tr: Tracer, X: Tensor, fdim: int, other_shape, nd: int) -> None:
    """The other operand holds no neurons but differs along ``X``'s labelled batch dims (per-head scores
    from fixed q / k): ``X``'s heads stay in place; permutations within a head remain free."""
    shp = (1,) * (nd - len(other_shape)) + tuple(other_shape)
    lab = labelled_dims(X)
    if not any(shp[d] > 1 for d in lab if d < nd - 2):
        return
    rows = [d for d in lab if d != fdim]
    if fdim not in lab or not rows:
        tr.builder.fix(X)
        return
    tr.builder.fix(blockify(tr, X, rows, [fdim]))


@register_op("matmul", "bmm", "__matmul__", "__rmatmul__", op_type="matmul")
def matmul(tr: Tracer, call: Call) -> None:
    acts = acts_of(tr, call)
    a, b = call.args[0], call.args[1]
    if call.name == "__rmatmul__":
        a, b = b, a
    ia, ib = tr.info_of(a), tr.info_of(b)
    if len(acts) != 2 or a.ndim < 2 or b.ndim < 2 or not isinstance(ia, Act) or not isinstance(ib, Act):
        unknown_op(tr, call)
        return
    break_chains(tr, acts)
    ids = contract(tr, ia.ids, a.shape, ib.ids, b.shape)
    if ids is None:
        unknown_op(tr, call)
        return
    tr.set_act(call.out, ids.reshape((1,) * (call.out.ndim - ids.ndim) + tuple(ids.shape)))


@register_op("scaled_dot_product_attention", op_type="attention")
def sdpa(tr: Tracer, call: Call) -> None:
    q, k, v = call.args[:3]
    iq, ik, iv = tr.info_of(q), tr.info_of(k), tr.info_of(v)
    if not all(isinstance(i, Act) for i in (iq, ik, iv)) or min(q.ndim, k.ndim, v.ndim) < 2:
        unknown_op(tr, call)
        return
    break_chains(tr, acts_of(tr, call))
    if call.kwargs.get("enable_gqa", False) and q.shape[-3] != k.shape[-3]:
        unknown_op(tr, call)
        return
    kt_shape = tuple(k.shape[:-2]) + (k.shape[-1], k.shape[-2])
    scores_shape = torch.broadcast_shapes(tuple(q.shape[:-2]), tuple(k.shape[:-2])) + (q.shape[-2], k.shape[-2])
    s = contract(tr, iq.ids, q.shape, ik.ids.transpose(-1, -2), kt_shape)
    if s is None:
        unknown_op(tr, call)
        return
    _tie_mask(tr, call.arg(3, "attn_mask"), s, scores_shape)
    out = contract(tr, s, scores_shape, iv.ids, v.shape)
    if out is None:
        unknown_op(tr, call)
        return
    tr.set_act(call.out, out.reshape((1,) * (call.out.ndim - out.ndim) + tuple(out.shape)))


def _tie_mask(tr: Tracer, mask, scores: Tensor, scores_shape) -> None:
    """An additive ``attn_mask`` that holds neurons (a learned per-head bias, e.g. T5's relative-position
    bias) is added to the scores: its head neurons move with the scores' heads; anything else is fixed."""
    info = tr.info_of(mask) if isinstance(mask, Tensor) else None
    if not isinstance(info, Act) or not bool((info.ids >= 0).any()):
        return
    nd = len(scores_shape)
    m = info.ids.reshape((1,) * (nd - info.ids.ndim) + tuple(info.ids.shape))
    s = scores.reshape((1,) * (nd - scores.ndim) + tuple(scores.shape))
    if not set(labelled_dims(m)) <= set(labelled_dims(s)):
        tr.builder.fix(m)  # neurons varying along positions: no permutation of ours can follow them
        tr.builder.fix(s)
        return
    shape = torch.broadcast_shapes(tuple(m.shape), tuple(s.shape))
    tr.builder.tie(m.expand(shape), s.expand(shape))


@register_op("einsum", op_type="matmul")
def einsum(tr: Tracer, call: Call) -> None:
    """Two-operand ``einsum`` without ellipsis, rewritten as a batched ``matmul`` on the id tensors."""
    eq = call.args[0]
    ops_ = list(call.args[1]) if len(call.args) == 2 and isinstance(call.args[1], (list, tuple)) else list(call.args[1:])
    if not isinstance(eq, str) or len(ops_) != 2 or "..." in eq or "->" not in eq:
        unknown_op(tr, call)
        return
    lhs, out_sub = eq.replace(" ", "").split("->")
    sa, sb = lhs.split(",")
    a, b = ops_
    ia, ib = tr.info_of(a), tr.info_of(b)
    if not (isinstance(ia, Act) and isinstance(ib, Act)) or len(set(sa)) != len(sa) or len(set(sb)) != len(sb):
        unknown_op(tr, call)
        return
    batch = [c for c in out_sub if c in sa and c in sb]
    fa = [c for c in out_sub if c in sa and c not in sb]
    fb = [c for c in out_sub if c in sb and c not in sa]
    con = [c for c in sa if c in sb and c not in out_sub]
    if len(fa) > 1 or len(fb) > 1 or len(con) > 1 or set(sa) != set(batch + fa + con) or set(sb) != set(batch + fb + con):
        unknown_op(tr, call)
        return
    break_chains(tr, acts_of(tr, call))
    size = {c: a.shape[i] for i, c in enumerate(sa)} | {c: b.shape[i] for i, c in enumerate(sb)}

    def arrange(x: Tensor, ids: Tensor, sub: str, order: list[str]) -> tuple[Tensor, tuple[int, ...]]:
        ids = ids.expand(x.shape).permute([sub.index(c) for c in order]) if order else ids
        shape = tuple(size[c] for c in order)
        return compress(ids.reshape(shape)), shape

    # A: [batch, n, k], B: [batch, k, m]; absent free / contracted dims become size-1 dims
    A, a_shape = arrange(a, ia.ids, sa, batch + fa + con)
    B, b_shape = arrange(b, ib.ids, sb, batch + con + fb)
    nb = len(batch)
    if not fa:
        A, a_shape = A.unsqueeze(nb), a_shape[:nb] + (1,) + a_shape[nb:]
    if not con:
        A, a_shape = A.unsqueeze(-1), a_shape + (1,)
        B, b_shape = B.unsqueeze(nb), b_shape[:nb] + (1,) + b_shape[nb:]
    if not fb:
        B, b_shape = B.unsqueeze(-1), b_shape + (1,)
    ids = contract(tr, A, a_shape, B, b_shape)
    if ids is None:
        unknown_op(tr, call)
        return
    ids = ids.reshape((1,) * (nb + 2 - ids.ndim) + tuple(ids.shape))
    # drop the size-1 stand-ins, then order as the output subscripts
    keep = list(range(nb)) + ([nb] if fa else []) + ([nb + 1] if fb else [])
    ids = ids.reshape([ids.shape[d] for d in keep]) if ids.numel() else ids
    cur = batch + fa + fb
    tr.set_act(call.out, ids.permute([cur.index(c) for c in out_sub]))
