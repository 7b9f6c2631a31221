"""``NetworkSpec``: the frozen description of one architecture's parameter graph.

A spec is computed once per architecture by tracing (see :mod:`wsl.graph.trace`) and shared by every
graph of that architecture. It holds

* the **structure** tensors every graph of the architecture shares (``edge_index``, ``edge_type``,
  ``edge_pos``, ``node_type``, ``node_layer``, ``io``/``io_index``): converting another checkpoint of the
  same architecture only copies weights;
* the **layout** of every state-dict tensor: the edge range it fills (edges follow the tensor's row-major
  element order), the node ids and feature column it fills, or its slot among pass-through values
  (integer buffers, counters, parameters the traced forward never used);
* the **symmetry groups** (:class:`~wsl.graph.symmetry.SymmetryGroups`).

The structure tensors are shared, not copied, between graphs; treat them as read-only (``graph.clone()``
gives private copies).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .builder import EDGE_TYPE_ID, NODE_COL, NODE_FEATURES, NODE_TYPE_ID, NODE_TYPES, ConversionError, GraphBuilder
from .symmetry import POSITIVE, SIGN, SymmetryElement, SymmetryGroups

IO_HIDDEN, IO_INPUT, IO_OUTPUT = 0, 1, 2


@dataclass(frozen=True)
class TensorLayout:
    """Where one state-dict tensor lives in a graph."""

    name: str
    kind: str  # "edges" | "nodes" | "passthrough"
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int = 0  # first edge (edges) or first slot (passthrough)
    atoms: Tensor | None = None  # node ids (nodes)
    column: int = 0  # feature column (nodes)

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())


@dataclass(frozen=True)
class NeuronSetInfo:
    start: int
    size: int
    kind: str
    name: str


@dataclass(eq=False)
class NetworkSpec:
    """Frozen description of an architecture's parameter graph (see module docstring)."""

    arch: str
    sets: tuple[NeuronSetInfo, ...]
    tensors: dict[str, TensorLayout]
    aliases: dict[str, str]  # state-dict key -> canonical key it shares storage with
    keys: tuple[str, ...]  # state-dict keys in the module's order
    num_nodes: int
    num_edges: int
    num_passthrough: int
    dtype: torch.dtype
    edge_index: Tensor
    edge_type: Tensor
    edge_pos: Tensor
    node_type: Tensor
    node_layer: Tensor
    io: Tensor
    io_index: Tensor
    symmetry: SymmetryGroups
    identity_edges: tuple[tuple[int, int], ...]  # (offset, count) of fixed weight-1 edges
    notes: tuple[str, ...] = ()
    example_shapes: tuple[tuple[int, ...], ...] = ()
    _edge_lookup: tuple[Tensor, Tensor, int] | None = field(default=None, repr=False)

    # ----------------------------------------------------------------- API
    @property
    def node_features(self) -> tuple[str, ...]:
        return NODE_FEATURES

    @property
    def num_parameters(self) -> int:
        return sum(t.numel for t in self.tensors.values() if t.kind != "passthrough")

    def sample_symmetry(self, generator: torch.Generator | None = None, *, scale: bool = True) -> SymmetryElement:
        """A random element of the network's symmetry group (permutations, and scale / sign factors)."""
        return self.symmetry.sample(generator, scale=scale)

    def identity(self) -> SymmetryElement:
        return SymmetryElement(torch.arange(self.num_nodes))

    def groups(self) -> list[dict[str, Any]]:
        """Human-readable list of the free permutation classes (size, block structure, sets spanned)."""
        return self.symmetry.describe([(s.start, s.size, s.name) for s in self.sets])

    def scale_sets(self) -> list[tuple[str, str]]:
        out = []
        for s in self.sets:
            k = int(self.symmetry.scale_kind[s.start]) if s.size else 0
            if k:
                out.append((s.name, "positive scale" if k == POSITIVE else "sign flip"))
        return out

    def edge_gather(self, perm: Tensor, *, src_perm: Tensor | None = None) -> Tensor:
        """Index ``g`` with ``new_edge_attr = old_edge_attr[g]`` for the node permutation ``perm``.

        ``src_perm`` (default ``perm``) relabels edge sources separately (used to build deliberately
        inconsistent permutations in tests).
        """
        if self._edge_lookup is None:
            key = self._edge_keys(self.edge_index[0], self.edge_index[1])
            skey, order = torch.sort(key)
            if skey.numel() > 1 and bool((skey[1:] == skey[:-1]).any()):
                raise ConversionError(f"internal: duplicate edges in the parameter graph of {self.arch}")
            object.__setattr__(self, "_edge_lookup", (skey, order, 0))
        skey, order, _ = self._edge_lookup
        sp = perm if src_perm is None else src_perm
        key = self._edge_keys(sp[self.edge_index[0]], perm[self.edge_index[1]])
        pos = torch.searchsorted(skey, key).clamp(max=skey.numel() - 1)
        if not torch.equal(skey[pos], key):
            raise ConversionError("symmetry element does not map the graph's edges onto edges (wrong spec?)")
        return order[pos]

    def _edge_keys(self, src: Tensor, dst: Tensor) -> Tensor:
        """An integer identifying each edge by (dst, src, kernel position, type)."""
        n = max(self.num_nodes, 1)
        p = self.edge_pos.long()
        p = p - p.amin(0) if p.numel() else p
        span = (p.amax(0) + 1).tolist() if p.numel() else [1, 1, 1]
        code = (p[:, 0] * span[1] + p[:, 1]) * span[2] + p[:, 2]
        codes = span[0] * span[1] * span[2]
        types = len(EDGE_TYPE_ID)
        return ((dst * n + src) * codes + code) * types + self.edge_type

    def __repr__(self) -> str:
        return (f"NetworkSpec(arch={self.arch!r}, nodes={self.num_nodes}, edges={self.num_edges}, "
                f"parameters={self.num_parameters}, tensors={len(self.tensors)})")

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for s in self.sets:
            kinds[s.kind] = kinds.get(s.kind, 0) + s.size
        return {
            "arch": self.arch,
            "nodes": self.num_nodes,
            "edges": self.num_edges,
            "parameters": self.num_parameters,
            "tensors": len(self.tensors),
            "passthrough": sum(1 for t in self.tensors.values() if t.kind == "passthrough"),
            "layers": int(self.node_layer.max()) + 1 if self.num_nodes else 0,
            "node_kinds": kinds,
            "free_permutation_classes": self.symmetry.num_free_classes(),
            "scale_sets": len(self.scale_sets()),
        }


def finish(
    b: GraphBuilder,
    *,
    arch: str,
    state: dict[str, Tensor],
    aliases: dict[str, str],
    keys: tuple[str, ...],
    used: set[str],
    outputs: list[Tensor],
    example_shapes: tuple[tuple[int, ...], ...],
) -> NetworkSpec:
    """Freeze a builder into a :class:`NetworkSpec` (called once per trace)."""
    notes = list(b.notes)
    for ids in outputs:
        b.fix(ids)
    n = b.num_nodes
    # ---- tensors
    tensors: dict[str, TensorLayout] = {}
    offset = 0
    identity: list[tuple[int, int]] = []
    srcs, dsts, poss, types = [], [], [], []
    for blk in b.edge_blocks:
        cnt = blk.src.numel()
        if blk.name is None:
            identity.append((offset, cnt))
        else:
            tensors[blk.name] = TensorLayout(blk.name, "edges", blk.shape, state[blk.name].dtype, offset)
        srcs.append(blk.src)
        dsts.append(blk.dst)
        poss.append(blk.pos.to(torch.int16))
        types.append(torch.full((cnt,), EDGE_TYPE_ID[blk.edge_type], dtype=torch.long))
        offset += cnt
    seen_nodes: set[tuple[int, int]] = set()
    for nb in b.node_blocks:
        col = NODE_COL[nb.column]
        tensors[nb.name] = TensorLayout(nb.name, "nodes", nb.shape, state[nb.name].dtype, atoms=nb.atoms, column=col)
        first = (int(nb.atoms[0]), col)
        if first in seen_nodes:
            raise ConversionError(f"internal: two tensors write feature {nb.column!r} of the same nodes ({nb.name})")
        seen_nodes.add(first)
    slot = 0
    for k in keys:
        if k in aliases or k in tensors:
            continue
        t = state[k]
        if t.is_complex():
            raise ConversionError(f"tensor {k!r} is complex; wsl does not support complex parameters")
        if t.is_floating_point() and k not in b.buffers_of_state:
            notes.append(f"{k}: does not act on the traced forward pass; kept as a pass-through value")
        tensors[k] = TensorLayout(k, "passthrough", tuple(t.shape), t.dtype, slot)
        slot += t.numel()
    ordered = {k: tensors[k] for k in keys if k in tensors}
    # ---- node structure
    node_type = torch.zeros(n, dtype=torch.long)
    io = torch.zeros(n, dtype=torch.long)
    io_index = torch.full((n,), -1, dtype=torch.long)
    for s in b.sets:
        node_type[s.start : s.stop] = NODE_TYPE_ID[s.kind]
        if s.kind in ("input", "embedding_in", "position"):
            io[s.start : s.stop] = IO_INPUT
            io_index[s.start : s.stop] = torch.arange(s.size)
    for ids in outputs:
        flat = ids.reshape(-1)
        flat = flat[flat >= 0]
        io[flat] = IO_OUTPUT
        io_index[flat] = torch.arange(flat.numel())
    edge_index = torch.stack([torch.cat(srcs), torch.cat(dsts)]) if srcs else torch.zeros(2, 0, dtype=torch.long)
    edge_type = torch.cat(types) if types else torch.zeros(0, dtype=torch.long)
    node_layer = _layers(n, b.edge_blocks, [s.start for s in b.sets])
    # ---- symmetry
    scale_kind = torch.zeros(n, dtype=torch.int8)
    out_atoms = torch.cat([o.reshape(-1) for o in outputs]) if outputs else torch.zeros(0, dtype=torch.long)
    out_sets = set(b.sets_of(out_atoms))
    for idx, cand in b.scale.items():
        if cand.broken or not cand.consumed_affine or idx in out_sets or len(cand.activations) != 1:
            continue
        s = b.sets[idx]
        scale_kind[s.start : s.stop] = POSITIVE if cand.activations == {"positive"} else SIGN
    sym = SymmetryGroups.solve([s.start for s in b.sets], n, b.fixed, b.refine, b.ties, b.blocks, scale_kind)
    float_dtypes = [state[k].dtype for k, t in ordered.items() if t.kind != "passthrough"]
    dtype = torch.float32
    for d in float_dtypes:
        dtype = torch.promote_types(dtype, d)
    return NetworkSpec(
        arch=arch,
        sets=tuple(NeuronSetInfo(s.start, s.size, s.kind, s.name) for s in b.sets),
        tensors=ordered,
        aliases=dict(aliases),
        keys=keys,
        num_nodes=n,
        num_edges=offset,
        num_passthrough=slot,
        dtype=dtype,
        edge_index=edge_index,
        edge_type=edge_type,
        edge_pos=torch.cat(poss) if poss else torch.zeros(0, 3, dtype=torch.int16),
        node_type=node_type,
        node_layer=node_layer,
        io=io,
        io_index=io_index,
        symmetry=sym,
        identity_edges=tuple(identity),
        notes=tuple(dict.fromkeys(notes)),
        example_shapes=example_shapes,
    )


def _sets_touched(starts: Tensor, atoms: Tensor) -> list[int]:
    lo, hi = int(atoms.min()), int(atoms.max())
    first = int(torch.searchsorted(starts, torch.tensor(lo), right=True)) - 1
    last = int(torch.searchsorted(starts, torch.tensor(hi), right=True)) - 1
    if first == last:
        return [first]
    idx = torch.searchsorted(starts, atoms, right=True) - 1
    return torch.nonzero(torch.bincount(idx - first)).flatten().add(first).tolist()


def _layers(n: int, blocks: list, set_starts: list[int]) -> Tensor:
    """Depth of each node: 0 for sets with no incoming edge, else 1 + max depth of its predecessors.

    Sets are created in execution order, so one pass over them in order is a topological sweep.
    """
    layer = torch.zeros(n, dtype=torch.long)
    if n == 0:
        return layer
    starts = torch.tensor(set_starts)
    preds: dict[int, set[int]] = {}
    for blk in blocks:
        d_sets = _sets_touched(starts, blk.dst)
        s_sets = _sets_touched(starts, blk.src)
        for d in d_sets:
            preds.setdefault(d, set()).update(x for x in s_sets if x != d)
    depth = [0] * len(set_starts)
    for i in range(len(set_starts)):
        if i in preds and preds[i]:
            depth[i] = 1 + max(depth[p] for p in preds[i])
    stops = set_starts[1:] + [n]
    for i, (a, z) in enumerate(zip(set_starts, stops)):
        layer[a:z] = depth[i]
    return layer


_ = (NODE_TYPES, SIGN)
