"""Helpers shared by the conversion rules and op handlers: reading a call's activations, placing parameters,
declaring block structure, and the scale-chain steps (see the protocol in :mod:`wsl.graph.registry`).

:func:`unknown_op` is also the registered default for ops on activations that no entry names
(:mod:`wsl.graph.rules.defaults` registers it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten

from ..builder import ConversionError
from ..labels import (
    Act,
    Opaque,
    Param,
    atoms_along,
    occurrence,
    place_along,
    unlabelled,
)
from ..registry import Call

if TYPE_CHECKING:
    from ..trace import Tracer


# ------------------------------------------------------------------------------- a call's tensors
def tensors_of(x: Any) -> list[Tensor]:
    """The tensors of an output (a tensor, or a tuple / list of them)."""
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for t in x if isinstance(t, Tensor)]
    return []


def all_tensors(call: Call) -> list[Tensor]:
    """Every tensor among the call's arguments, in order."""
    return [t for t in tree_flatten((call.args, call.kwargs))[0] if isinstance(t, Tensor)]


def acts_of(tr: Tracer, call: Call) -> list[tuple[Tensor, Act]]:
    """The call's activation arguments with their :class:`Act` labels."""
    out = []
    for t in all_tensors(call):
        i = tr.info_of(t)
        if isinstance(i, Act):
            out.append((t, i))
    return out


# ------------------------------------------------------------------------------------- scale chains
def break_chains(tr: Tracer, acts: list[tuple[Tensor, Act]]) -> None:
    """Mark the scale chains of ``acts`` broken (their values reach a non-affine use)."""
    for _, a in acts:
        if a.chain is not None and a.chain[0] in tr.builder.scale:
            tr.builder.scale[a.chain[0]].broken = True


def break_if(tr: Tracer, old: tuple[int, str] | None, new: tuple[int, str] | None) -> None:
    """An op turned chain ``old`` into ``new``: dropping it (``new is None``) breaks it."""
    if old is not None and new is None and old[0] in tr.builder.scale:
        tr.builder.scale[old[0]].broken = True


def unknown_op(tr: Tracer, call: Call) -> None:
    """Conservative default: neurons seen by an op wsl does not know are never permuted."""
    acts = acts_of(tr, call)
    break_chains(tr, acts)
    for _, a in acts:
        tr.builder.fix(a.ids)
    note = f"unknown op {call.name!r} (module {call.module or '<root>'!r}): its neurons are kept fixed"
    if acts and any(bool((a.ids >= 0).any()) for _, a in acts) and note not in tr.builder.notes:
        tr.builder.notes.append(note)
    outs = tensors_of(call.out)
    if call.out is None and call.args and isinstance(call.args[0], Tensor):
        outs = [call.args[0]]  # in-place op returning None (__setitem__)
    for t in outs:
        tr.set_act(t, unlabelled(t.ndim))


# ---------------------------------------------------------------------------------- block structure
def blockify(tr: Tracer, ids: Tensor, rows: list[int], cols: list[int]) -> Tensor:
    """Reduce a neuron grid over ``cols``: one head id per row; declares the block structure.

    Each row must hold a whole consecutive run of ``m`` neurons and the distinct rows must tile a run of
    ``G * m`` neurons; otherwise the neurons are fixed and the result is unlabelled.
    """
    nd = ids.ndim
    perm = rows + cols + [d for d in range(nd) if d not in rows and d not in cols]
    g = ids.permute(perm)
    rshape = [ids.shape[d] for d in rows]
    grid = g.reshape(int(torch.tensor(rshape).prod()), -1)
    out_shape = [ids.shape[d] if d in rows else 1 for d in range(nd)]
    lo, hi = grid.min(1).values, grid.max(1).values
    m = hi - lo + 1
    ok = bool((lo >= 0).all()) and bool((m == m[0]).all())
    if ok:
        srt = torch.sort(grid, 1).values
        ok = bool((srt[:, 1:] != srt[:, :-1]).all()) and srt.shape[1] == int(m[0])
    if ok:
        starts = torch.unique(lo)
        size = int(m[0])
        ok = bool(((starts - starts[0]) % size == 0).all()) and int(starts[-1] - starts[0]) // size + 1 == starts.numel()
        ok = ok and len(tr.builder.sets_of(torch.stack([starts[0], starts[-1] + size - 1]))) == 1
    if not ok:
        tr.builder.fix(ids)
        return unlabelled(nd)
    start, size = int(starts[0]), int(m[0])
    heads = tr.builder.head_set(start, starts.numel(), size)
    return heads[(lo - start) // size].reshape(out_shape)


def group_heads(tr: Tracer, atoms: Tensor, groups: int) -> Tensor:
    """Declare that ``atoms`` split into ``groups`` consecutive blocks permuted as blocks; head ids."""
    grid = atoms.reshape(groups, -1)
    return blockify(tr, grid, [0], [1]).reshape(-1)


# --------------------------------------------------------------------------- parametric rules


def input_atoms(tr: Tracer, call: Call, x: Tensor, dim: int) -> Tensor:
    """Node ids along ``dim`` of the activation ``x`` (length ``x.shape[dim]``).

    Positions that hold no neuron yet (raw network inputs, constants) get new *fixed* ``input`` nodes;
    the activation is relabelled so that every later consumer reuses them.
    """
    info = tr.info_of(x)
    ids = info.ids if isinstance(info, Act) else torch.full((1,) * x.ndim, -1, dtype=torch.long)
    dim = dim % x.ndim
    seq = atoms_along(ids, dim)
    if seq is None:
        raise ConversionError(
            f"{call.where()} consumes dimension {dim} of an activation whose neurons also vary along another "
            "dimension (e.g. an MLP-Mixer token-mixing layer); wsl cannot represent this layout yet"
        )
    n = x.shape[dim]
    seq = seq.expand(n).clone() if seq.numel() == 1 else seq.clone()
    missing = seq < 0
    if bool(missing.any()):
        new = tr.builder.new_set(int(missing.sum()), "input", f"input:{call.module or 'root'}", call.name,
                                 fixed=True)
        seq[missing] = new
        if bool(missing.all()):
            tr.set_act(x, place_along(seq, x.ndim, dim), None)
    return seq


def consume(tr: Tracer, x: Tensor, affine: bool) -> None:
    """Record that a rule consumed ``x``: affine consumers complete a scale-symmetry chain, others break it."""
    info = tr.info_of(x)
    if not isinstance(info, Act) or info.chain is None:
        return
    idx, stage = info.chain
    cand = tr.builder.scale.get(idx)
    if cand is None:
        return
    if affine and stage == "post":
        cand.consumed_affine = True
    else:
        cand.broken = True


def weight_info(tr: Tracer, call: Call, t: Tensor | None, what: str) -> Param | None:
    if t is None:
        return None
    info = tr.info_of(t)
    if isinstance(info, Param):
        return info
    if isinstance(info, Opaque):
        raise ConversionError(
            f"{what} of {call.where()} is computed from parameter(s) {', '.join(info.names)} by op {info.op!r} "
            "(e.g. weight normalization or a low-rank product); wsl stores parameters as they are in the "
            "state_dict and cannot map this computed tensor back to them. Fold the computation into a plain "
            "parameter first (e.g. torch.nn.utils.parametrize.remove_parametrizations)."
        )
    raise ConversionError(
        f"{what} of {call.where()} is an activation or an untracked constant, not a parameter; wsl does not "
        "support data-dependent weights here"
    )


def _first_occurrence(p: Param, shape: torch.Size, call: Call) -> Tensor:
    """For each element of the parameter, the flat position in the argument where it first appears."""
    elem = p.elem.expand(shape).reshape(-1)
    order = torch.argsort(elem, stable=True)
    s = elem[order]
    first = torch.ones_like(s, dtype=torch.bool)
    first[1:] = s[1:] != s[:-1]
    idx = order[first]
    if idx.numel() != p.numel:
        raise ConversionError(
            f"parameter {p.name!r} is only partly used by {call.where()} ({idx.numel()} of {p.numel} elements); "
            "wsl needs every element of a parameter to be placed"
        )
    return idx


def place_edges(
    tr: Tracer,
    call: Call,
    p: Param,
    arg_shape: torch.Size,
    src: Tensor,
    dst: Tensor,
    edge_type: str,
    pos: Tensor | None = None,
    axes: str = "dst,src",
) -> None:
    """Place a weight seen as an argument of shape ``arg_shape`` (after any views) as edges.

    ``src`` / ``dst`` / ``pos`` are broadcastable to ``arg_shape`` (``pos`` with a trailing dim of 3).
    """
    numel = int(torch.Size(arg_shape).numel())
    if p.direct and numel == p.numel:
        tr.builder.add_edges(p.name, tr.shapes[p.name], src, dst, edge_type, pos, axes, view=tuple(arg_shape))
        return
    idx = _first_occurrence(p, arg_shape, call)
    src = src.expand(arg_shape).reshape(-1)[idx]
    dst = dst.expand(arg_shape).reshape(-1)[idx]
    if pos is not None:
        pos = pos.to(torch.int16).expand(*arg_shape, 3).reshape(-1, 3)[idx]
    tr.builder.add_edges(p.name, tr.shapes[p.name], src, dst, edge_type, pos, axes, view=(p.numel,))


def place_nodes(tr: Tracer, call: Call, p: Param | None, arg_shape: torch.Size, atoms: Tensor, column: str) -> None:
    if p is None:
        return
    atoms = atoms.expand(arg_shape).reshape(-1)
    if not (p.direct and atoms.numel() == p.numel):
        atoms = atoms[_first_occurrence(p, arg_shape, call)]
    tr.builder.add_nodes(p.name, tr.shapes[p.name], atoms, column)


def kernel_positions(kernel: tuple[int, ...]) -> Tensor:
    """``[*kernel, 3]`` offsets of each kernel element from the kernel centre (zero-padded to 3 dims)."""
    grids = torch.meshgrid(*[torch.arange(k) - (k - 1) // 2 for k in kernel], indexing="ij")
    pos = torch.zeros(*kernel, 3, dtype=torch.long)
    for i, g in enumerate(grids[-3:]):
        pos[..., i] = g
    return pos


def flatten_positions(seq: Tensor) -> Tensor:
    """``[len(seq), 3]`` positions for inputs that repeat a neuron (flattened feature maps)."""
    pos = torch.zeros(seq.numel(), 3, dtype=torch.long)
    pos[:, 0] = occurrence(seq)
    return pos


def output(tr: Tracer, call: Call, out: Tensor, atoms: Tensor, dim: int, chain_set: int | None = None) -> None:
    """Label ``out`` with the new neurons ``atoms`` along ``dim``. ``chain_set`` given (rules producing a set by a
    plain affine map pass 0): the set becomes a scale-symmetry candidate and ``out`` opens its chain ("pre")."""
    chain = (tr.builder.set_index(int(atoms[0])), "pre") if chain_set is not None else None
    if chain is not None:
        tr.builder.scale_candidate(int(atoms[0]))
    tr.set_act(out, place_along(atoms, out.ndim, dim), chain)
