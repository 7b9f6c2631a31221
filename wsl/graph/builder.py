"""Mutable state collected while a network is traced: neuron sets, tensor placements, symmetry constraints.

The tracer (:mod:`wsl.graph.trace`) walks the executed ops and, through the per-family rules in
:mod:`wsl.graph.rules`, tells the :class:`GraphBuilder`

* which **neuron sets** exist (a run of consecutive global node ids, one per neuron / channel / head /
  position), created in execution order, so creation order is a topological order;
* where every state-dict tensor goes: each element of a weight becomes one edge ``(src, dst, position)``
  (stored in the tensor's row-major element order), each element of a bias / norm statistic becomes one
  column entry of a node's feature vector, and tensors that carry no learnable structure (integer buffers,
  counters) are kept verbatim as pass-through values;
* **constraints** on the neuron permutations that leave the network function unchanged: atoms that must
  stay fixed, runs of atoms that must be permuted identically ("ties"), ranges whose permutation must
  respect a block (head / group) structure, and atom ranges whose permutation must keep them together
  ("refinements", e.g. the q / k / v slices of a fused projection);
* for the scale / sign symmetries, which sets are produced by a plain affine op and consumed only through
  one activation followed by affine ops.

:meth:`GraphBuilder.finish` turns all of that into a frozen :class:`~wsl.graph.spec.NetworkSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

# Node feature columns (``ParamGraph.x``). Weights live on edges; everything per-neuron lives here.
NODE_FEATURES: tuple[str, ...] = ("bias", "running_mean", "running_var")
NODE_COL = {name: i for i, name in enumerate(NODE_FEATURES)}

NODE_TYPES: tuple[str, ...] = (
    "input",  # network input features (pixels' channels, tabular features)
    "hidden",  # output neurons of a linear / conv / transposed conv
    "norm",  # output of a normalization layer (BatchNorm, LayerNorm, GroupNorm, RMSNorm)
    "merge",  # sum / product / concatenation of activations (residual streams, gates)
    "scale",  # output of a learned elementwise scale or shift (layer scale, manual bias)
    "embedding_in",  # one-hot vocabulary entries of an embedding table
    "embedding",  # embedding output neurons
    "position",  # positions of a positional embedding / class token / relative-position table
    "attention",  # q / k / v neurons of an attention layer
    "head",  # one node per attention head / channel group
)
EDGE_TYPES: tuple[str, ...] = (
    "linear",
    "conv",
    "conv_transpose",
    "norm",  # diagonal edge carrying a norm's weight (gamma)
    "scale",  # diagonal edge carrying a learned elementwise scale
    "identity",  # fixed weight 1 (residual sums, products, concatenation joins); not a parameter
    "embedding",
    "position",  # positional embedding / class token / relative position bias
    "attention_in",  # packed q/k/v input projection
)
NODE_TYPE_ID = {n: i for i, n in enumerate(NODE_TYPES)}
EDGE_TYPE_ID = {n: i for i, n in enumerate(EDGE_TYPES)}


@dataclass
class NeuronSet:
    """A run of global node ids ``[start, start + size)`` created by one op."""

    start: int
    size: int
    kind: str
    name: str
    op: str = ""

    @property
    def stop(self) -> int:
        return self.start + self.size


@dataclass
class EdgeBlock:
    """One weight tensor (or a fixed identity block) stored as edges, in the tensor's element order."""

    name: str | None  # state-dict key, None for identity (non-parameter) edges
    shape: tuple[int, ...]
    view: tuple[int, ...]  # shape the per-element arrays broadcast to (same numel as ``shape``)
    src: Tensor  # int64, broadcastable to ``view``
    dst: Tensor  # int64, broadcastable to ``view``
    pos: Tensor | None  # int16, broadcastable to ``view + (3,)``; None = all zero
    edge_type: str

    @property
    def numel(self) -> int:
        return int(torch.Size(self.view).numel())


@dataclass
class NodeBlock:
    """One per-neuron tensor (bias, norm statistics) stored in a node-feature column."""

    name: str
    shape: tuple[int, ...]
    atoms: Tensor  # [numel] global node id of each element
    column: str


@dataclass
class ScaleCandidate:
    """Bookkeeping for the scale / sign symmetry of one neuron set produced by an affine op."""

    set_index: int
    activations: set[str] = field(default_factory=set)
    consumed_affine: bool = False
    broken: bool = False


def unique_pairs(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Distinct pairs ``(a[i], b[i])`` (non-negative ints), sorted by ``a`` then ``b``."""
    base = int(b.max()) + 1 if b.numel() else 1
    key = torch.unique(a * base + b)
    return key // base, key % base


class ConversionError(ValueError):
    """A network (or one of its modules / tensors) cannot be converted into a parameter graph."""


class GraphBuilder:
    """Collects sets, tensor placements and symmetry constraints during one trace."""

    def __init__(self) -> None:
        self.sets: list[NeuronSet] = []
        self.edge_blocks: list[EdgeBlock] = []
        self.node_blocks: list[NodeBlock] = []
        # tensors whose second usage must be consistent with the first: name -> per-element (src, dst) atoms
        self.tensor_atoms: dict[str, tuple[Tensor, Tensor, tuple[int, ...]]] = {}
        # symmetry constraints, all in global atom ids
        self.fixed: list[Tensor] = []
        self.refine: list[Tensor] = []  # atom sets that each must be mapped onto themselves
        self.ties: list[tuple[Tensor, Tensor]] = []  # position-wise equal permutation
        self.blocks: list[tuple[int, int, int, int]] = []  # (range start, G, m, head set start)
        self.head_of_block: dict[tuple[int, int, int], int] = {}
        self.scale: dict[int, ScaleCandidate] = {}
        self.notes: list[str] = []
        self.buffers_of_state: set[str] = set()  # state-dict keys that are buffers, not parameters

    # ------------------------------------------------------------------ sets
    @property
    def num_nodes(self) -> int:
        return self.sets[-1].stop if self.sets else 0

    def new_set(self, size: int, kind: str, name: str, op: str = "", *, fixed: bool = False) -> Tensor:
        """Allocate ``size`` new nodes; returns their global ids."""
        if kind not in NODE_TYPE_ID:
            raise KeyError(f"unknown node kind {kind!r}")
        start = self.num_nodes
        self.sets.append(NeuronSet(start, int(size), kind, name, op))
        ids = torch.arange(start, start + size)
        if fixed:
            self.fixed.append(ids)
        return ids

    # --------------------------------------------------------------- tensors
    def add_edges(
        self,
        name: str | None,
        shape: tuple[int, ...],
        src: Tensor,
        dst: Tensor,
        edge_type: str,
        pos: Tensor | None = None,
        axes: str = "dst,src",
        view: tuple[int, ...] | None = None,
    ) -> None:
        """Store a tensor as edges, one per element in row-major order.

        ``src`` / ``dst`` (and ``pos`` with a trailing dim of 3) only need to *broadcast* to ``view``
        (default: ``shape``): they are expanded when the spec is frozen, straight into the final edge
        arrays, so a layer costs no per-element memory while tracing. ``axes`` names which endpoint the
        tensor's first and second axes index (``"dst,src"`` for ``[out, in, ...]``, ``"src,dst"`` for
        ``[in, out]`` / embedding tables, ``"dst,dst"`` for one-axis tensors); it ties the usages of a tensor
        shared by several ops.
        """
        view = tuple(shape) if view is None else tuple(view)
        numel = int(torch.Size(view).numel())
        if numel != int(torch.Size(shape).numel()):
            raise ConversionError(f"internal: edge block {name!r} view {view} does not match shape {shape}")
        torch.broadcast_shapes(src.shape, dst.shape, view)  # raises on a layout bug
        if name is not None:
            ends = {"src": src, "dst": dst}
            a0, a1 = (ends[k] for k in axes.split(","))
            if self._already_placed(name, a0, a1, view):
                return
        self.edge_blocks.append(EdgeBlock(name, tuple(shape), view, src.long(), dst.long(),
                                          None if pos is None else pos.to(torch.int16), edge_type))

    def add_nodes(self, name: str, shape: tuple[int, ...], atoms: Tensor, column: str) -> None:
        atoms = atoms.reshape(-1)
        if self._already_placed(name, atoms, atoms, (atoms.numel(),)):
            return
        self.node_blocks.append(NodeBlock(name, tuple(shape), atoms.long(), column))

    def _already_placed(self, name: str, a0: Tensor, a1: Tensor, view: tuple[int, ...]) -> bool:
        """A tensor used twice (tied weights): tie the atoms of both usages instead of storing it twice.

        ``a0`` / ``a1`` (the neurons the tensor's first / second axis refer to, per element) broadcast to
        ``view``; they are only expanded as far as needed to pair them up.
        """
        if name in self.tensor_atoms:
            b0, b1, view0 = self.tensor_atoms[name]
            if int(torch.Size(view0).numel()) != int(torch.Size(view).numel()):
                raise ConversionError(f"tensor {name!r} is used twice with different layouts; cannot convert")
            for x, y in ((b0, a0), (b1, a1)):
                if tuple(view0) == tuple(view) and x.ndim == y.ndim == len(view):
                    shape = [max(p, q) for p, q in zip(x.shape, y.shape)]
                    self.tie(x.expand(shape), y.expand(shape))
                else:
                    self.tie(x.expand(view0).reshape(-1), y.expand(view).reshape(-1))
            self.notes.append(f"{name} is shared by several ops; stored once, its usages tied")
            return True
        self.tensor_atoms[name] = (a0, a1, tuple(view))
        return False

    # ----------------------------------------------------------- constraints
    def fix(self, atoms: Tensor) -> None:
        atoms = atoms.reshape(-1)
        atoms = atoms[atoms >= 0]
        if atoms.numel():
            self.fixed.append(torch.unique(atoms))

    def keep_together(self, atoms: Tensor) -> None:
        atoms = atoms.reshape(-1)
        atoms = atoms[atoms >= 0]
        if atoms.numel():
            self.refine.append(torch.unique(atoms))

    def tie(self, a: Tensor, b: Tensor) -> None:
        """Atoms ``a[i]`` and ``b[i]`` must be moved identically by every symmetry element."""
        a, b = torch.broadcast_tensors(a.reshape(-1), b.reshape(-1))
        keep = (a >= 0) & (b >= 0) & (a != b)
        bad = (a >= 0) ^ (b >= 0)
        if bad.any():
            self.fix(a[bad])
            self.fix(b[bad])
        if keep.any():
            a, b = unique_pairs(a[keep], b[keep])
            self.ties.append((a, b))

    def head_set(self, start: int, groups: int, size: int) -> Tensor:
        """Node ids of the heads (blocks) of the blocked range ``[start, start + groups * size)``."""
        key = (start, groups, size)
        if key not in self.head_of_block:
            ids = self.new_set(groups, "head", f"heads@{start}")
            self.head_of_block[key] = int(ids[0])
            self.blocks.append((start, groups, size, int(ids[0])))
        h0 = self.head_of_block[key]
        return torch.arange(h0, h0 + groups)

    # ------------------------------------------------------ scale symmetries
    def scale_candidate(self, set_start: int) -> None:
        idx = self.set_index(set_start)
        self.scale[idx] = ScaleCandidate(idx)

    def set_index(self, atom: int) -> int:
        lo, hi = 0, len(self.sets) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.sets[mid].start <= atom:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def sets_of(self, atoms: Tensor) -> list[int]:
        atoms = atoms.reshape(-1)
        atoms = atoms[atoms >= 0]
        if atoms.numel() == 0:
            return []
        starts = torch.tensor([s.start for s in self.sets])
        idx = torch.searchsorted(starts, torch.unique(atoms), right=True) - 1
        return sorted(set(idx.tolist()))
