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

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from .builder import (
    EDGE_TYPE_ID,
    NODE_COL,
    NODE_FEATURES,
    NODE_TYPE_ID,
    ConversionError,
    GraphBuilder,
)
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

    # ----------------------------------------------------------------- API
    @property
    def node_features(self) -> tuple[str, ...]:
        return NODE_FEATURES

    @property
    def num_parameters(self) -> int:
        """Learnable values: weights (edges) and biases; normalization running statistics are not counted."""
        return sum(t.numel for t in self.tensors.values()
                   if t.kind == "edges" or (t.kind == "nodes" and t.column == NODE_COL["bias"]))

    @property
    def num_statistics(self) -> int:
        """Running statistics stored as node features (BatchNorm ``running_mean`` / ``running_var``)."""
        return sum(t.numel for t in self.tensors.values() if t.kind == "nodes" and t.column != NODE_COL["bias"])

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

        Works block by block (one block per tensor): a permutation keeps every neuron inside its set, so
        each tensor's edges map onto the same tensor's edges. Dense blocks (linear / conv weights) are
        looked up arithmetically; others through a sorted key. ``src_perm`` (default ``perm``) relabels
        edge sources separately (used to build deliberately inconsistent permutations in tests).
        """
        sp = perm if src_perm is None else src_perm
        out = torch.empty(self.num_edges, dtype=torch.long)
        for off, cnt, info in self._block_index():
            s = self.edge_index[0, off : off + cnt]
            d = self.edge_index[1, off : off + cnt]
            d0, s0, ns, ncodes, code = info["d0"], info["s0"], info["ns"], info["ncodes"], info["code"]
            ns_, nd_ = sp[s] - s0, perm[d] - d0
            if bool((ns_ < 0).any() | (ns_ >= ns).any() | (nd_ < 0).any() | (nd_ > info["nd"] - 1).any()):
                raise ConversionError("symmetry element moves a neuron out of its set (element from another spec?)")
            key = (nd_ * ns + ns_) * ncodes + (code if code is not None else 0)
            if info["dense"]:
                out[off : off + cnt] = off + key
                continue
            skey, order = info.get("sorted") or _sorted_keys(s, d, info)
            pos = torch.searchsorted(skey, key).clamp(max=max(cnt - 1, 0))
            if not torch.equal(skey[pos], key):
                raise ConversionError("symmetry element does not map the graph's edges onto edges (wrong spec?)")
            out[off : off + cnt] = off + order[pos]
        return out

    def _block_index(self) -> list[tuple[int, int, dict]]:
        cached = self.__dict__.get("_blocks_cache")
        if cached is not None:
            return cached
        ranges = sorted([(t.offset, t.numel) for t in self.tensors.values() if t.kind == "edges"]
                        + list(self.identity_edges))
        blocks = []
        for off, cnt in ranges:
            if cnt == 0:
                continue
            s = self.edge_index[0, off : off + cnt]
            d = self.edge_index[1, off : off + cnt]
            p = self.edge_pos[off : off + cnt].long()
            info: dict = {"s0": int(s.min()), "d0": int(d.min())}
            info["ns"] = int(s.max()) - info["s0"] + 1
            info["nd"] = int(d.max()) - info["d0"] + 1
            if bool((p != 0).any()):
                p = p - p.amin(0)
                span = (p.amax(0) + 1).tolist()
                info["code"] = (p[:, 0] * span[1] + p[:, 1]) * span[2] + p[:, 2]
                info["ncodes"] = span[0] * span[1] * span[2]
            else:
                info["code"], info["ncodes"] = None, 1
            key = ((d - info["d0"]) * info["ns"] + (s - info["s0"])) * info["ncodes"]
            if info["code"] is not None:
                key = key + info["code"]
            info["dense"] = cnt == info["ns"] * info["nd"] * info["ncodes"] and bool(
                (key == torch.arange(cnt)).all())
            if not info["dense"] and cnt <= 2_000_000:
                info["sorted"] = torch.sort(key)
            blocks.append((off, cnt, info))
        self.__dict__["_blocks_cache"] = blocks
        return blocks

    def with_dtypes(self, dtypes: Mapping[str, torch.dtype]) -> NetworkSpec:
        """The same spec with the tensors of ``dtypes`` (state-dict key -> dtype) recorded in those dtypes.

        A checkpoint converted against an architecture built in another dtype (a bf16 state dict on a float32
        module) keeps its own dtypes this way: ``to_state_dict()`` returns them. The values container
        (``dtype``) is the promotion of float32 with every weight's dtype, so it holds each exactly. Variants
        are cached on the spec, so every checkpoint with the same dtypes shares one (and its structure)."""
        cache = self.__dict__.setdefault("_dtype_variants", {})
        key = tuple((k, dtypes.get(k, t.dtype)) for k, t in self.tensors.items())
        if all(d == self.tensors[k].dtype for k, d in key):
            return self
        if key not in cache:
            tensors = {k: replace(t, dtype=d) for (k, d), t in zip(key, self.tensors.values())}
            container = torch.float32
            for t in tensors.values():
                if t.kind != "passthrough":
                    container = torch.promote_types(container, t.dtype)
            variant = replace(self, tensors=tensors, dtype=container)
            variant.__dict__["_dtype_variants"] = cache  # variants of a variant come from the same table
            cache[key] = variant
        return cache[key]

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
            "statistics": self.num_statistics,
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
    identity: list[tuple[int, int]] = []
    total = sum(blk.numel for blk in b.edge_blocks)
    edge_index = torch.empty(2, total, dtype=torch.long)
    edge_pos = torch.zeros(total, 3, dtype=torch.int16)
    edge_type = torch.empty(total, dtype=torch.int8)
    offset = 0
    for blk in b.edge_blocks:
        cnt = blk.numel
        if blk.name is None:
            identity.append((offset, cnt))
        else:
            tensors[blk.name] = TensorLayout(blk.name, "edges", blk.shape, state[blk.name].dtype, offset)
        sl = slice(offset, offset + cnt)
        edge_index[0, sl].view(blk.view).copy_(blk.src.expand(blk.view))
        edge_index[1, sl].view(blk.view).copy_(blk.dst.expand(blk.view))
        if blk.pos is not None:
            edge_pos[sl].view(*blk.view, 3).copy_(blk.pos.expand(*blk.view, 3))
        edge_type[sl] = EDGE_TYPE_ID[blk.edge_type]
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
        edge_pos=edge_pos,
        node_type=node_type,
        node_layer=node_layer,
        io=io,
        io_index=io_index,
        symmetry=sym,
        identity_edges=tuple(identity),
        notes=tuple(dict.fromkeys(notes)),
        example_shapes=example_shapes,
    )


def _sorted_keys(s: Tensor, d: Tensor, info: dict) -> tuple[Tensor, Tensor]:
    key = ((d - info["d0"]) * info["ns"] + (s - info["s0"])) * info["ncodes"]
    if info["code"] is not None:
        key = key + info["code"]
    return torch.sort(key)


def _sets_touched(starts: Tensor, atoms: Tensor) -> list[int]:
    lo, hi = int(atoms.min()), int(atoms.max())
    first = int(torch.searchsorted(starts, torch.tensor(lo), right=True)) - 1
    last = int(torch.searchsorted(starts, torch.tensor(hi), right=True)) - 1
    if first == last:
        return [first]
    idx = torch.searchsorted(starts, atoms.reshape(-1).contiguous(), right=True) - 1
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
        if preds.get(i):
            depth[i] = 1 + max(depth[p] for p in preds[i])
    stops = set_starts[1:] + [n]
    for i, (a, z) in enumerate(zip(set_starts, stops)):
        layer[a:z] = depth[i]
    return layer

