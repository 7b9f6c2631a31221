"""Helpers shared by the per-family conversion rules."""

from __future__ import annotations

import torch
from torch import Tensor

from ..builder import ConversionError
from ..labels import Act, Opaque, Param, atoms_along, occurrence, place_along
from ..trace import Call, Tracer


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
    chain = (tr.builder.set_index(int(atoms[0])), "pre") if chain_set is not None else None
    if chain is not None:
        tr.builder.scale_candidate(int(atoms[0]))
    tr.set_act(out, place_along(atoms, out.ndim, dim), chain)


def group_heads(tr: Tracer, atoms: Tensor, groups: int) -> Tensor:
    """Declare that ``atoms`` split into ``groups`` consecutive blocks permuted as blocks; head ids."""
    from ..contract import blockify

    grid = atoms.reshape(groups, -1)
    return blockify(tr, grid, [0], [1]).reshape(-1)
