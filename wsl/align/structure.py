"""Per-architecture index for alignment: free permutation classes, their cells, and the weight blocks they touch.

Everything is derived from a spec's :class:`~wsl.graph.symmetry.SymmetryGroups` (cells / classes / blocks)
and its edge structure; nothing is architecture-specific. A *weight block* is one parameter tensor's edges
seen as a matrix ``[dst neuron, (src neuron, kernel position)]``; identity edges (fixed weight 1) are not
parameters and take no part in matching.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..graph import NetworkSpec


@dataclass
class Block:
    """The edges ``[off, off + cnt)`` of one parameter tensor, with matrix coordinates."""

    off: int
    cnt: int
    s0: int
    ns: int
    d0: int
    nd: int
    ncodes: int
    src: Tensor  # [cnt] local source index (s - s0)
    dst: Tensor  # [cnt] local target index (d - d0)
    code: Tensor  # [cnt] kernel-position code in [0, ncodes)


@dataclass
class Touch:
    """Edges of ``block`` whose ``role`` endpoint ('dst' or 'src') lies in a cell: ``sel`` local edge ids.

    ``kind``: ``"anchor"`` (the other endpoint is never permuted: inputs, outputs, fixed sets),
    ``"cross"`` (the other endpoint is in another free class), ``"inner"`` (both endpoints in the
    class at different offsets: quadratic in the class permutation, linearized at the current one) or
    ``"diag"`` (both endpoints in the class at the same offset, e.g. a norm gain between tied cells or a
    depthwise kernel: exactly linear, used like a node feature; listed once, under the ``dst`` cell).
    """

    block: int
    role: str
    sel: Tensor
    kind: str = "cross"


@dataclass
class ClassInfo:
    """One free permutation class: its cells (start, size), optional block structure and head class."""

    root: int
    cells: list[tuple[int, int]]
    size: int
    blocks: tuple[int, int] | None = None  # (G, m)
    head: int | None = None  # root of the (flat) head class, None when fixed / absent
    touches: list[list[Touch]] = field(default_factory=list)  # per cell


@dataclass
class AlignIndex:
    blocks: list[Block]
    classes: dict[int, ClassInfo]

    def linked(self, head: int) -> list[int]:
        """Blocked classes whose block permutation is the permutation of head class ``head``."""
        return [r for r, c in self.classes.items() if c.blocks is not None and c.head == head]


_CACHE: weakref.WeakKeyDictionary[NetworkSpec, AlignIndex] = weakref.WeakKeyDictionary()


def _blocks(spec: NetworkSpec) -> list[Block]:
    out = []
    for t in spec.tensors.values():
        if t.kind != "edges" or t.numel == 0:
            continue
        off, cnt = t.offset, t.numel
        s = spec.edge_index[0, off : off + cnt]
        d = spec.edge_index[1, off : off + cnt]
        p = spec.edge_pos[off : off + cnt].long()
        p = p - p.amin(0)
        span = (p.amax(0) + 1).tolist()
        code = (p[:, 0] * span[1] + p[:, 1]) * span[2] + p[:, 2]
        s0, d0 = int(s.min()), int(d.min())
        out.append(Block(off, cnt, s0, int(s.max()) - s0 + 1, d0, int(d.max()) - d0 + 1,
                         span[0] * span[1] * span[2], s - s0, d - d0, code))
    return out


def _touches(blocks: list[Block], lo: int, size: int, root: int, node_class: Tensor,
             node_off: Tensor) -> list[Touch]:
    hi = lo + size
    out: list[Touch] = []
    for bi, b in enumerate(blocks):
        for role in ("dst", "src"):
            base, local, extent = (b.d0, b.dst, b.nd) if role == "dst" else (b.s0, b.src, b.ns)
            if base >= hi or base + extent <= lo:
                continue
            g = local + base
            hit = (g >= lo) & (g < hi)
            other = (b.src + b.s0) if role == "dst" else (b.dst + b.d0)
            same = node_class[other] == root
            diag = same & (node_off[other] == node_off[g])
            anchor = node_class[other] < 0
            for kind, mask in (("anchor", hit & anchor), ("cross", hit & ~same & ~anchor),
                               ("inner", hit & same & ~diag), ("diag", hit & diag)):
                if kind == "diag" and role == "src":
                    continue
                sel = torch.nonzero(mask).flatten()
                if sel.numel():
                    out.append(Touch(bi, role, sel, kind))
    return out


def align_index(spec: NetworkSpec) -> AlignIndex:
    """The (cached) :class:`AlignIndex` of ``spec``."""
    cached = _CACHE.get(spec)
    if cached is not None:
        return cached
    sym = spec.symmetry
    blocks = _blocks(spec)
    starts, sizes, cls = sym.cell_start.tolist(), sym.cell_size.tolist(), sym.cell_class.tolist()
    n = spec.num_nodes
    node_class = torch.full((n,), -1, dtype=torch.long)
    node_off = torch.zeros(n, dtype=torch.long)
    for c, root in enumerate(cls):
        if not sym.class_fixed.get(root, False):
            node_class[starts[c] : starts[c] + sizes[c]] = root
            node_off[starts[c] : starts[c] + sizes[c]] = torch.arange(sizes[c])
    classes: dict[int, ClassInfo] = {}
    for c, root in enumerate(cls):
        if sym.class_fixed.get(root, False) or sizes[c] < 2 and root not in sym.class_blocks:
            continue
        info = classes.get(root)
        if info is None:
            info = classes[root] = ClassInfo(root, [], sizes[c], sym.class_blocks.get(root))
            head = sym.cell_head.get(c)
            g = info.blocks[0] if info.blocks else 0
            if head is not None and g >= 2 and not sym.class_fixed.get(cls[head], False):
                info.head = cls[head]
        info.cells.append((starts[c], sizes[c]))
        info.touches.append(_touches(blocks, starts[c], sizes[c], root, node_class, node_off))
    idx = AlignIndex(blocks, classes)
    _CACHE[spec] = idx
    return idx
