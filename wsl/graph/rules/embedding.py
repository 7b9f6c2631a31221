"""Embedding tables and parameters added to / multiplied with / concatenated to activations.

* ``F.embedding(idx, W[V, D])``: ``V`` fixed ``embedding_in`` nodes (one per vocabulary entry) with an
  ``embedding`` edge to each of the ``D`` new ``embedding`` neurons — the table is a linear map from a
  one-hot input.
* ``x + p`` / ``x * p`` with a learned ``p`` (a manual bias, a layer scale, an RMSNorm weight, a positional
  embedding, a relative-position bias): a new set ``S`` tied to ``x``'s neurons. A scale ``p`` becomes one
  ``scale`` edge per neuron; a shift whose elements map one-to-one onto neurons is their ``bias``; a shift
  that also varies along positions (positional embeddings, relative position tables) gets ``K`` fixed
  ``position`` nodes with ``position`` edges ``position k -> neuron`` carrying ``p``.
* ``cat([p, x])`` along a non-neuron dimension (class / register / distillation tokens): like a
  positional shift — the token rows become ``position`` nodes feeding ``S``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..builder import ConversionError, unique_pairs
from ..labels import Act, Param, compress, labelled_dims
from ..registry import Call, register_op
from .common import consume, output, place_edges, weight_info

if TYPE_CHECKING:
    from ..trace import Tracer


@register_op("embedding", params=True, op_type="embedding")
def embedding(tr: Tracer, call: Call) -> None:
    w = call.arg(1, "weight")  # the indices (arg 0) select rows at run time; the table is the structure
    pw = weight_info(tr, call, w, "weight")
    vocab = tr.builder.new_set(w.shape[0], "embedding_in", f"{call.module or 'root'}:vocab", call.name,
                               fixed=True)
    out = tr.builder.new_set(w.shape[1], "embedding", call.module or call.name, call.name)
    place_edges(tr, call, pw, w.shape, vocab[:, None], out[None, :], "embedding", axes="src,dst")
    output(tr, call, call.out, out, -1)


def _operands(tr: Tracer, call: Call) -> tuple[Tensor, Act | None, Tensor, Param]:
    acts, params = [], []
    for t in call.args[:2] if len(call.args) >= 2 else list(call.args) + list(call.kwargs.values()):
        if isinstance(t, Tensor):
            i = tr.info_of(t)
            if isinstance(i, Param) and not i.buffer:
                params.append((t, i))
            elif isinstance(i, Act):
                acts.append((t, i))
    if len(params) != 1 or len(acts) > 1:
        raise ConversionError(f"{call.where()} combines parameters in a way wsl does not support")
    if not acts:
        return None, None, params[0][0], params[0][1]  # type: ignore[return-value]
    return acts[0][0], acts[0][1], params[0][0], params[0][1]


_SHIFT = {"add", "__add__", "__radd__", "__iadd__", "add_", "sub", "__sub__", "__rsub__", "__isub__", "sub_",
          "rsub"}
_SCALE = {"mul", "__mul__", "__rmul__", "__imul__", "mul_"}


@register_op(*(_SHIFT | _SCALE), params=True)
def elementwise_param(tr: Tracer, call: Call) -> None:
    x, ax, p, pp = _operands(tr, call)
    weight_info(tr, call, p, "parameter operand")
    out = call.out if isinstance(call.out, Tensor) else x
    nd = out.ndim
    shape = out.shape
    elem = compress(pp.elem.reshape((1,) * (nd - p.ndim) + tuple(p.shape)).expand(shape))
    if ax is None:
        ids = torch.full((1,) * nd, -1, dtype=torch.long)
    else:
        ids = ax.ids.reshape((1,) * (nd - ax.ids.ndim) + tuple(ax.ids.shape))
        consume(tr, x, affine=False)
    lab = labelled_dims(compress(ids.expand(shape)))
    if not lab:  # raw input or unlabelled: the dims the parameter varies along are (fixed) input neurons
        lab = labelled_dims(elem)
        grid = [shape[d] if d in lab else 1 for d in range(nd)]
        n = int(torch.tensor(grid).prod())
        ids = tr.builder.new_set(n, "input", f"input:{call.module or 'root'}", call.name, fixed=True).reshape(grid)
    _shift_or_scale(tr, call, ids, elem, pp, out, "scale" if call.name in _SCALE else "shift")


def _shift_or_scale(tr: Tracer, call: Call, ids: Tensor, elem: Tensor, pp: Param, out: Tensor, kind: str) -> None:
    nd, shape = out.ndim, out.shape
    lab = labelled_dims(compress(ids.expand(shape)))
    grid_shape = [shape[d] if d in lab else 1 for d in range(nd)]
    x_grid = ids.expand(shape)[tuple(slice(None) if d in lab else slice(0, 1) for d in range(nd))]
    x_grid = x_grid.expand(grid_shape)
    uniq, inv = torch.unique(x_grid.reshape(-1), return_inverse=True)
    s = tr.builder.new_set(uniq.numel(), "scale", call.module or call.name, call.name)
    tr.builder.tie(uniq, s)
    # element -> neuron pairs over every position where the element appears
    e_all = elem.expand(shape).reshape(-1)
    a_all = ids.expand(shape).reshape(-1)
    pe, pa = unique_pairs(e_all, a_all + 1)
    pairs = torch.stack([pe, pa - 1], 1)
    if pairs.shape[0] != pp.numel or not torch.equal(pairs[:, 0], torch.arange(pp.numel)):
        raise ConversionError(
            f"parameter {pp.name!r} in {call.where()} is shared across several neurons or only partly used; "
            "wsl needs each element to act on one neuron"
        )
    atom_of_elem = pairs[:, 1]
    s_of_elem = s[torch.searchsorted(uniq, atom_of_elem.contiguous())]
    counts = torch.bincount(torch.searchsorted(uniq, atom_of_elem.contiguous()), minlength=uniq.numel())
    k = int(counts[0])
    if not bool((counts == k).all()):
        raise ConversionError(f"parameter {pp.name!r} in {call.where()} has a different number of entries per neuron")
    pshape = tr.shapes[pp.name]
    if kind == "scale":
        if k != 1:
            raise ConversionError(f"parameter {pp.name!r} in {call.where()} scales neurons position-dependently")
        tr.builder.add_edges(pp.name, pshape, atom_of_elem, s_of_elem, "scale", axes="dst,dst",
                             view=(pp.numel,))
    else:
        tr.builder.add_edges(None, (uniq.numel(),), uniq, s, "identity")
        if k == 1:
            tr.builder.add_nodes(pp.name, pshape, s_of_elem, "bias")
        else:
            _position_edges(tr, call, pp, atom_of_elem, s_of_elem, k)
    tr.set_act(out, s[inv].reshape(grid_shape))


def _position_edges(tr: Tracer, call: Call, pp: Param, atom_of_elem: Tensor, target: Tensor, k: int) -> None:
    """``k`` fixed position nodes; element ``e`` becomes an edge from position (its rank among the elements of
    its neuron) to ``target[e]``."""
    positions = tr.builder.new_set(k, "position", f"{call.module or 'root'}:{pp.name}", call.name, fixed=True)
    order = torch.argsort(atom_of_elem, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel()) % k
    tr.builder.add_edges(pp.name, tr.shapes[pp.name], positions[rank], target, "position", axes="src,dst",
                         view=(pp.numel,))


@register_op("cat", "concat", "concatenate", params=True)
def cat_param(tr: Tracer, call: Call) -> None:
    """``torch.cat([cls_token.expand(...), dist_token.expand(...), x], dim)`` along a non-neuron dimension."""
    parts = list(call.arg(0, "tensors"))
    out = call.out
    dim = call.arg(1, "dim", 0) % out.ndim
    acts = [(t, tr.info_of(t)) for t in parts if isinstance(tr.info_of(t), Act)]
    params = [(t, tr.info_of(t)) for t in parts if isinstance(tr.info_of(t), Param)]
    if len(acts) != 1 or not params or len(acts) + len(params) != len(parts):
        raise ConversionError(f"{call.where()} concatenates parameters in a way wsl does not support "
                              "(supported: learned tokens concatenated to one activation)")
    x, ax = acts[0]
    lab = labelled_dims(ax.ids)
    if dim in lab or not lab:
        raise ConversionError(f"{call.where()} concatenates parameters along a neuron dimension")
    consume(tr, x, affine=False)
    # token rows carry the same neurons as x along x's neuron dims
    row = ax.ids.expand(x.shape).narrow(dim, 0, 1)
    grid_shape = [out.shape[d] if d in lab else 1 for d in range(out.ndim)]
    uniq, inv = torch.unique(compress(row).expand(grid_shape).reshape(-1), return_inverse=True)
    s = tr.builder.new_set(uniq.numel(), "merge", call.module or call.name, call.name)
    tr.builder.tie(uniq, s)
    tr.builder.add_edges(None, (uniq.numel(),), uniq, s, "identity")
    for p, pp in params:
        a = row.expand(p.shape).reshape(-1)
        e = pp.elem.expand(p.shape).reshape(-1)
        pe, pa = unique_pairs(e, a + 1)
        if pe.numel() != pp.numel or not torch.equal(pe, torch.arange(pp.numel)):
            raise ConversionError(f"parameter {pp.name!r} in {call.where()} is shared across neurons")
        atom_of_elem = pa - 1
        where = torch.searchsorted(uniq, atom_of_elem.contiguous())
        k = pp.numel // uniq.numel()
        _position_edges(tr, call, pp, atom_of_elem, s[where], k)
    tr.set_act(out, s[inv].reshape(grid_shape))
