"""Symmetry groups of a traced network, solved from the constraints the tracer recorded.

Model
-----
A symmetry element acts on the graph's nodes by a permutation ``perm`` (gather form: new node ``i`` holds
what old node ``perm[i]`` held) and, optionally, a per-node factor ``scale`` (positive scalars for sets
followed by a positively homogeneous activation such as ReLU / LeakyReLU, ``±1`` for sets followed by an
odd activation such as tanh / sin).

The permutation group is described by **cells**: consecutive runs of node ids, each permuted within
itself. Cells that must be permuted identically are in one **class** (union-find over the ties recorded by
the tracer: residual streams, the two operands of a product, q and k of an attention head, the two usages
of a shared tensor). A class is either

* *fixed* (inputs, outputs, anything an op treats position-dependently),
* *flat*: any permutation of its ``size`` elements, or
* *blocked* ``(G, m)``: ``G`` blocks of ``m`` (attention heads, GroupNorm groups); the blocks are permuted
  by the permutation of a linked **head cell** (so q, k and v share one head permutation) and each block
  is permuted within by its own permutation (shared by the class: q and k of a head move together, v on
  its own).

Solving: every constraint becomes cuts (cell boundaries); cuts are propagated across ties to a fixpoint,
then ties become unions of aligned cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

POSITIVE, SIGN = 1, 2
SCALE_KINDS = {POSITIVE: "positive scale", SIGN: "sign flip"}


@dataclass(frozen=True)
class SymmetryElement:
    """One group element: node permutation (gather form) and per-node scale factors."""

    perm: Tensor  # [N] int64
    scale: Tensor | None = None  # [N] float64, 1.0 where no scale symmetry

    def is_identity(self) -> bool:
        ident = torch.equal(self.perm, torch.arange(self.perm.numel()))
        return ident and (self.scale is None or bool((self.scale == 1).all()))


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        p = self.parent
        while p[i] != i:
            p[i] = p[p[i]]
            i = p[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _runs(a: Tensor, b: Tensor, set_id: Tensor) -> list[tuple[int, int, int]]:
    """Split position-wise pairs (a[i], b[i]) into maximal runs where both advance by one inside one set."""
    order = torch.argsort(a * (int(b.max()) + 1) + b)
    a, b = a[order], b[order]
    brk = torch.ones(a.numel(), dtype=torch.bool)
    if a.numel() > 1:
        brk[1:] = (
            (a[1:] != a[:-1] + 1)
            | (b[1:] != b[:-1] + 1)
            | (set_id[a[1:]] != set_id[a[:-1]])
            | (set_id[b[1:]] != set_id[b[:-1]])
        )
    starts = torch.nonzero(brk).flatten().tolist() + [a.numel()]
    return [(int(a[s]), int(b[s]), e - s) for s, e in zip(starts[:-1], starts[1:])]


def _cut_atoms(cut: Tensor, atoms: Tensor, set_id: Tensor) -> None:
    """Cut before every maximal consecutive run of ``atoms`` and right after it."""
    atoms = torch.unique(atoms)
    if atoms.numel() == 0:
        return
    brk = torch.ones(atoms.numel(), dtype=torch.bool)
    brk[1:] = (atoms[1:] != atoms[:-1] + 1) | (set_id[atoms[1:]] != set_id[atoms[:-1]])
    cut[atoms[brk]] = True
    ends = torch.ones(atoms.numel(), dtype=torch.bool)
    ends[:-1] = brk[1:]
    after = atoms[ends] + 1
    cut[after[after < cut.numel()]] = True


@dataclass
class SymmetryGroups:
    """Solved permutation / scale structure of one architecture (part of the frozen ``NetworkSpec``)."""

    num_nodes: int
    cell_start: Tensor  # [C]
    cell_size: Tensor  # [C]
    cell_class: Tensor  # [C] class id (root cell index)
    class_fixed: dict[int, bool]
    class_blocks: dict[int, tuple[int, int]]  # class -> (G, m) for blocked classes
    cell_head: dict[int, int]  # blocked cell -> its head cell
    scale_kind: Tensor  # [N] int8: 0 none, 1 positive, 2 sign

    # --------------------------------------------------------------- solving
    @classmethod
    def solve(
        cls,
        set_starts: list[int],
        num_nodes: int,
        fixed: list[Tensor],
        refine: list[Tensor],
        ties: list[tuple[Tensor, Tensor]],
        blocks: list[tuple[int, int, int, int]],
        scale_kind: Tensor,
    ) -> SymmetryGroups:
        n = num_nodes
        set_id = torch.zeros(n, dtype=torch.long)
        starts = torch.tensor(set_starts, dtype=torch.long)
        if n:
            set_id[starts[starts < n]] = 1
            set_id = torch.cumsum(set_id, 0) - 1
        cut = torch.zeros(n, dtype=torch.bool)
        if n:
            cut[starts[starts < n]] = True
        fixed_atoms = torch.cat(fixed) if fixed else torch.zeros(0, dtype=torch.long)
        _cut_atoms(cut, fixed_atoms, set_id)
        for r in refine:
            _cut_atoms(cut, r, set_id)
        for start, g, m, h0 in blocks:
            cut[start] = True
            if start + g * m < n:
                cut[start + g * m] = True
        runs: list[tuple[int, int, int]] = []
        for a, b in ties:
            runs.extend(_runs(a, b, set_id))
        for a0, b0, ln in runs:
            for x in (a0, b0):
                cut[x] = True
                if x + ln < n:
                    cut[x + ln] = True
        changed = True
        while changed:
            changed = False
            for a0, b0, ln in runs:
                ca, cb = cut[a0 : a0 + ln], cut[b0 : b0 + ln]
                if not torch.equal(ca, cb):
                    merged = ca | cb
                    cut[a0 : a0 + ln] = merged
                    cut[b0 : b0 + ln] = merged
                    changed = True

        cell_of = torch.cumsum(cut.long(), 0) - 1 if n else torch.zeros(0, dtype=torch.long)
        cell_start = torch.nonzero(cut).flatten()
        cell_size = torch.diff(torch.cat([cell_start, torch.tensor([n])]))
        num_cells = cell_start.numel()
        uf = _UnionFind(num_cells)
        for a0, b0, ln in runs:
            ca = torch.unique_consecutive(cell_of[a0 : a0 + ln]).tolist()
            cb = torch.unique_consecutive(cell_of[b0 : b0 + ln]).tolist()
            for x, y in zip(ca, cb):
                uf.union(x, y)

        fixed_cells = set(torch.unique(cell_of[fixed_atoms]).tolist()) if fixed_atoms.numel() else set()
        cell_blocks: dict[int, tuple[int, int]] = {}
        cell_head: dict[int, int] = {}
        for start, g, m, h0 in blocks:
            cells = torch.unique(cell_of[start : start + g * m]).tolist()
            head_cells = torch.unique(cell_of[h0 : h0 + g]).tolist()
            if len(cells) != 1 or len(head_cells) != 1 or int(cell_size[cells[0]]) != g * m:
                fixed_cells.update(cells)
                fixed_cells.update(head_cells)
                continue
            c = cells[0]
            if c in cell_blocks and cell_blocks[c] != (g, m):
                fixed_cells.add(c)  # two different block structures: keep the cell and both head sets fixed
                fixed_cells.add(head_cells[0])
                if c in cell_head:
                    fixed_cells.add(cell_head[c])
                continue
            cell_blocks[c] = (g, m)
            if c in cell_head:
                uf.union(cell_head[c], head_cells[0])
            cell_head[c] = head_cells[0]

        # classes; blocked members force the whole class blocked and tie their head cells
        members: dict[int, list[int]] = {}
        for c in range(num_cells):
            members.setdefault(uf.find(c), []).append(c)
        class_blocks: dict[int, tuple[int, int]] = {}
        class_fixed: dict[int, bool] = {}
        for root, cs in members.items():
            blk = {cell_blocks[c] for c in cs if c in cell_blocks}
            if len(blk) > 1:
                fixed_cells.update(cs)
                for c in cs:
                    if c in cell_head:
                        fixed_cells.add(cell_head[c])
            elif blk:
                class_blocks[root] = blk.pop()
                heads = [cell_head[c] for c in cs if c in cell_head]
                for h in heads[1:]:
                    uf.union(heads[0], h)
        # head unions may have merged head classes only (head cells are never blocked): recompute roots
        cell_class = torch.tensor([uf.find(c) for c in range(num_cells)], dtype=torch.long)
        class_blocks = {int(cell_class[r]): v for r, v in class_blocks.items()}
        for c in range(num_cells):
            root = int(cell_class[c])
            class_fixed[root] = class_fixed.get(root, False) or c in fixed_cells
        # a fixed blocked cell keeps its blocks in place: its head permutation (shared with every cell
        # linked to the same heads) must be the identity
        for c, h in cell_head.items():
            if class_fixed[int(cell_class[c])]:
                class_fixed[int(cell_class[h])] = True
        # every member of a blocked class follows the class's (single, after the unions above) head cell
        class_head: dict[int, int] = {}
        for c, h in cell_head.items():
            class_head.setdefault(int(cell_class[c]), h)
        cell_head = {c: class_head[int(cell_class[c])] for c in range(num_cells) if int(cell_class[c]) in class_head}
        return cls(n, cell_start, cell_size, cell_class, class_fixed, class_blocks, cell_head, scale_kind)

    # ------------------------------------------------------------- sampling
    def sample(self, generator: torch.Generator | None = None, *, scale: bool = True,
               classes_only: set[int] | None = None) -> SymmetryElement:
        """A uniformly random permutation from the group, with random scale factors if ``scale``.

        ``classes_only`` (class ids) moves only those classes, as if every other class were fixed (used to
        find which class breaks a network's function, see :func:`wsl.graph.verify.verify_symmetries`).
        """
        perm = torch.arange(self.num_nodes)
        class_perm: dict[int, Tensor] = {}
        starts, sizes, classes = self.cell_start.tolist(), self.cell_size.tolist(), self.cell_class.tolist()
        order = sorted(range(len(starts)), key=lambda c: classes[c] in self.class_blocks)  # flat (heads) first

        def fixed(root: int) -> bool:
            return self.class_fixed.get(root, False) or (classes_only is not None and root not in classes_only)

        for c in order:
            root, s, size = classes[c], starts[c], sizes[c]
            if fixed(root):
                continue
            if root in self.class_blocks:
                g, m = self.class_blocks[root]
                if root not in class_perm:
                    class_perm[root] = torch.stack([torch.randperm(m, generator=generator) for _ in range(g)])
                within = class_perm[root]
                head = self.cell_head.get(c)
                if head is not None and not fixed(classes[head]):
                    h0 = starts[head]
                    sigma = perm[h0 : h0 + g] - h0
                else:
                    sigma = torch.arange(g)
                local = (sigma[:, None] * m + within[sigma]).reshape(-1)
            else:
                if root not in class_perm:
                    class_perm[root] = torch.randperm(size, generator=generator)
                local = class_perm[root]
            perm[s : s + size] = s + local
        factors = None
        if scale and bool((self.scale_kind > 0).any()):
            factors = torch.ones(self.num_nodes, dtype=torch.float64)
            pos = self.scale_kind == POSITIVE
            sign = self.scale_kind == SIGN
            u = torch.rand(self.num_nodes, generator=generator, dtype=torch.float64)
            factors[pos] = torch.exp2(2 * u[pos] - 1)  # log-uniform in [1/2, 2]
            factors[sign] = torch.where(u[sign] < 0.5, -1.0, 1.0).to(torch.float64)
        return SymmetryElement(perm, factors)

    # ------------------------------------------------------------ reporting
    def describe(self, set_names: list[tuple[int, int, str]]) -> list[dict]:
        """One row per non-fixed class: size, structure and the sets it spans."""
        starts, sizes, classes = self.cell_start.tolist(), self.cell_size.tolist(), self.cell_class.tolist()
        set_starts = torch.tensor([s for s, _, _ in set_names])
        rows: dict[int, dict] = {}
        for c, root in enumerate(classes):
            if self.class_fixed.get(root, False):
                continue
            si = int(torch.searchsorted(set_starts, torch.tensor(starts[c]), right=True)) - 1
            row = rows.setdefault(root, {"size": sizes[c], "blocks": self.class_blocks.get(root), "sets": []})
            row["sets"].append(set_names[si][2])
        return list(rows.values())

    def num_free_classes(self) -> int:
        return sum(1 for r, f in self.class_fixed.items() if not f)
