"""Weight matching: permute network B's neurons to make its weights as close as possible to network A's.

Reference: Ainsworth, Hayase & Srinivasa, *Git Re-Basin: Merging Models modulo Permutation Symmetries*
(ICLR 2023), algorithm "weight matching"; generalized here to any architecture ``wsl.to_graph`` supports.

Problem. Over the permutation group of the architecture (``spec.symmetry``), find ``P`` maximizing

.. math::
    \\sum_{e \\in \\text{param edges}} a_e \\, (P \\cdot b)_e + \\sum_{v} \\langle x^a_v, (P \\cdot b)_v \\rangle
    \\;\\Longleftrightarrow\\; \\min_P \\lVert \\theta_a - P \\cdot \\theta_b \\rVert^2

Coordinate descent: one permutation class at a time (a hidden layer, a residual stream tied across all its
layers, the ``q``/``k`` neurons of attention heads, ...), with every other class fixed at its current
permutation, the objective is linear in the class's permutation ``pi`` (edges with both ends in the class
use the current ``pi`` for their other end), so ``pi`` is a linear assignment problem on

.. math::
    C_{qk} = \\sum_{\\text{cells}} \\Big( \\sum_{e: \\, \\mathrm{dst}=q} a_e \\, b_{e[\\mathrm{dst} \\to k]}
           + \\sum_{e: \\, \\mathrm{src}=q} a_e \\, b_{e[\\mathrm{src} \\to k]} \\Big) + \\langle x^a_q, x^b_k \\rangle

(solved with ``scipy.optimize.linear_sum_assignment``). Blocked classes ``(G, m)`` (attention heads,
GroupNorm groups) are solved in two levels: the block permutation ``sigma`` (shared with the linked head
class) maximizes the sum over linked classes of per-block-pair assignment values, then each block's
within-permutation is an ``m x m`` assignment given ``sigma``. Sweeps repeat until no class changes.

Shapes:
    ``graph_a``, ``graph_b``: ParamGraphs of one architecture; returns a :class:`SymmetryElement` with
    ``perm`` [N] (gather form: aligned node ``i`` is B's node ``perm[i]``) and ``aligned_b``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..graph import ParamGraph, SymmetryElement
from .canonical import canonicalize, compose
from .structure import AlignIndex, ClassInfo, align_index

_DENSE_LIMIT = 4_000_000


def _lap(cost: Tensor) -> tuple[Tensor, float]:
    """Maximizing assignment: ``col[q]`` for each row ``q`` and the attained value."""
    c = cost.numpy()
    rows, cols = linear_sum_assignment(c, maximize=True)
    out = torch.empty(cost.shape[0], dtype=torch.long)
    out[torch.from_numpy(rows)] = torch.from_numpy(cols).long()
    return out, float(c[rows, cols].sum())


def check_same_architecture(a: ParamGraph, b: ParamGraph, who: str) -> None:
    sa, sb = a.spec, b.spec
    if sa is sb:
        return
    if (sa.num_nodes, sa.num_edges) != (sb.num_nodes, sb.num_edges) or not torch.equal(sa.edge_index, sb.edge_index):
        raise ValueError(f"{who}: the graphs are of different architectures ({sa.arch}: {sa.num_nodes} nodes, "
                         f"{sa.num_edges} edges vs {sb.arch}: {sb.num_nodes} nodes, {sb.num_edges} edges)")


class Matcher:
    """Coordinate-descent state: the current permutation of B, and the class cost matrices."""

    def __init__(self, a: ParamGraph, b: ParamGraph) -> None:
        check_same_architecture(a, b, "weight matching")
        self.spec = a.spec
        self.index: AlignIndex = align_index(self.spec)
        self.ea = a.edge_attr[:, 0].double()
        self.eb = b.edge_attr[:, 0].double()
        self.xa, self.xb = a.x.double(), b.x.double()
        n = self.spec.num_nodes
        self.perm = torch.arange(n)
        self.inv = torch.arange(n)
        self.local: dict[int, Tensor] = {r: torch.arange(c.size) for r, c in self.index.classes.items()}
        self.kinds = {"anchor", "diag", "cross"}  # edge kinds in the costs (see structure.Touch)

    # ------------------------------------------------------------------ costs
    def cost(self, info: ClassInfo, extra: Tensor | None = None) -> Tensor:
        """``C [size, size]``: similarity of A's neuron ``q`` with B's neuron ``k`` of the class."""
        n = info.size
        C = torch.zeros(n, n, dtype=torch.float64) if extra is None else extra.clone()
        for (start, _), touches in zip(info.cells, info.touches):
            C += self.xa[start : start + n] @ self.xb[start : start + n].T
            for t in touches:
                if t.kind not in self.kinds:
                    continue
                C += self._diag_cost(t, start, n) if t.kind == "diag" else self._block_cost(t, start, n)
        return C

    def _diag_cost(self, t, start: int, n: int) -> Tensor:
        blk = self.index.blocks[t.block]
        rows = blk.dst[t.sel] + blk.d0 - start
        code = blk.code[t.sel]
        fa = torch.zeros(n, blk.ncodes, dtype=torch.float64).index_put_((rows, code), self.ea[blk.off + t.sel], True)
        fb = torch.zeros(n, blk.ncodes, dtype=torch.float64).index_put_((rows, code), self.eb[blk.off + t.sel], True)
        return fa @ fb.T

    def _block_cost(self, t, start: int, n: int) -> Tensor:
        blk = self.index.blocks[t.block]
        sel = t.sel
        a = self.ea[blk.off + sel]
        b = self.eb[blk.off + sel]
        if t.role == "dst":
            rows = blk.dst[sel] + blk.d0 - start
            other_a = blk.src[sel]
            # B's edge (s -> d) sits, after relabelling its source by the current permutation, at inv[s]
            other_b = self.inv[blk.src[sel] + blk.s0] - blk.s0
            width = blk.ns
        else:
            rows = blk.src[sel] + blk.s0 - start
            other_a = blk.dst[sel]
            other_b = self.inv[blk.dst[sel] + blk.d0] - blk.d0
            width = blk.nd
        if bool((other_b < 0).any() | (other_b >= width).any()):
            raise RuntimeError(f"internal: a permutation moves neurons out of weight block at edge {blk.off}")
        cols = width * blk.ncodes
        ca = other_a * blk.ncodes + blk.code[sel]
        cb = other_b * blk.ncodes + blk.code[sel]
        if n * cols <= _DENSE_LIMIT:
            ma = torch.zeros(n, cols, dtype=torch.float64)
            mb = torch.zeros(n, cols, dtype=torch.float64)
            ma[rows, ca] = a
            mb[rows, cb] = b
            return ma @ mb.T
        ma = torch.sparse_coo_tensor(torch.stack([rows, ca]), a, (n, cols)).coalesce()
        mb = torch.sparse_coo_tensor(torch.stack([cb, rows]), b, (cols, n)).coalesce()
        return torch.sparse.mm(ma, mb).to_dense()

    # ---------------------------------------------------------------- updates
    def set_local(self, root: int, local: Tensor) -> bool:
        """Install class ``root``'s local permutation; True if it changed."""
        changed = not torch.equal(local, self.local[root])
        self.local[root] = local
        for start, size in self.index.classes[root].cells:
            self.perm[start : start + size] = start + local
            self.inv[start + local] = torch.arange(start, start + size)
        return changed

    def solve_flat(self, root: int, extra: Tensor | None = None) -> bool:
        local, _ = _lap(self.cost(self.index.classes[root], extra))
        return self.set_local(root, local)

    def solve_heads(self, head: int | None, linked: list[int], fixed: dict[int, Tensor] | None = None) -> bool:
        """Block permutation ``sigma`` (the head class's permutation) and within-block permutations."""
        fixed = fixed or {}
        costs = {r: self.cost(self.index.classes[r], fixed.get(r)) for r in linked}
        G, m = self.index.classes[linked[0]].blocks
        if head is not None:
            H = self.cost(self.index.classes[head])
            for C in costs.values():
                for g in range(G):
                    for h in range(G):
                        H[g, h] += _lap(C[g * m : (g + 1) * m, h * m : (h + 1) * m])[1]
            sigma, _ = _lap(H)
            changed = self.set_local(head, sigma)
        else:
            sigma, changed = torch.arange(G), False
        for r, C in costs.items():
            local = torch.empty(G * m, dtype=torch.long)
            for g in range(G):
                h = int(sigma[g])
                tau, _ = _lap(C[g * m : (g + 1) * m, h * m : (h + 1) * m])
                local[g * m : (g + 1) * m] = h * m + tau
            changed |= self.set_local(r, local)
        return changed

    # ------------------------------------------------------------------ sweeps
    def units(self, skip: set[int]) -> list[tuple[int | None, list[int]]]:
        """Independent update units: ``(flat class, [])`` or ``(head class or None, [linked blocked classes])``."""
        classes = self.index.classes
        out: list[tuple[int | None, list[int]]] = []
        heads_done: set[int | None] = set()
        for r, c in classes.items():
            if r in skip:
                continue
            if c.blocks is None:
                if not self.index.linked(r):
                    out.append((r, []))
                elif r not in heads_done:
                    heads_done.add(r)
                    out.append((r, [x for x in self.index.linked(r) if x not in skip]))
            elif c.head is None:
                out.append((None, [r]))
        return out

    def run(self, max_iter: int, generator: torch.Generator | None, skip: set[int] = frozenset(),
            fixed_costs: dict[int, Tensor] | None = None) -> int:
        """Coordinate descent in three phases. 0: one sweep with only the terms that involve no other free
        class (edges to never-permuted neurons, node features, diagonal in-class edges) — each class's
        best guess on its own, which is exact for a permuted copy; 1: all exactly linear terms (edges to
        other classes at their current permutations), monotone; 2: also the quadratic in-class edges,
        linearized at the current permutation (done last, so the linearization does not lock in the
        start). Returns the number of sweeps."""
        units = self.units(set(skip))
        fixed_costs = fixed_costs or {}
        sweeps = 0
        phases = ({"anchor", "diag"}, {"anchor", "diag", "cross"}, {"anchor", "diag", "cross", "inner"})
        for phase, kinds in enumerate(phases):
            self.kinds = kinds
            for _ in range(1 if phase == 0 else max_iter):
                sweeps += 1
                order = range(len(units)) if generator is None else torch.randperm(len(units), generator=generator).tolist()
                changed = False
                for u in order:
                    head, linked = units[u]
                    if linked:
                        changed |= self.solve_heads(head, linked, fixed_costs)
                    else:
                        changed |= self.solve_flat(head, fixed_costs.get(head))
                if not changed:
                    break
        return sweeps

    def element(self) -> SymmetryElement:
        return SymmetryElement(self.perm.clone())


def weight_matching(graph_a: ParamGraph, graph_b: ParamGraph, *, max_iter: int = 100,
                    generator: torch.Generator | None = None,
                    scales: bool = True) -> tuple[SymmetryElement, ParamGraph]:
    """Align ``graph_b`` to ``graph_a`` by weight matching (see the module docstring).

    Args:
        graph_a: the anchor network's graph.
        graph_b: a graph of the same architecture.
        max_iter: maximum number of sweeps over the permutation classes.
        generator: randomizes the order classes are visited in each sweep (``None``: fixed order).
        scales: also solve the positive-scale (ReLU) and sign-flip (tanh / sin) symmetries: both graphs are
            brought to canonical scales (:mod:`wsl.align.canonical`) before the permutations are matched.
            ``False``: permutations only.

    Returns:
        ``(element, aligned_b)`` with ``aligned_b = graph_b.apply_symmetry(element)``: the same function as
        ``graph_b``, with weights close to ``graph_a``'s (equal to them when ``graph_b`` is ``graph_a``
        transformed by any element of the group, up to float rounding of the scales).
    """
    fa, ca = canonicalize(graph_a) if scales else (None, graph_a)
    fb, cb = canonicalize(graph_b) if scales else (None, graph_b)
    m = Matcher(ca, cb)
    m.run(max_iter, generator)
    el = compose(m.perm, fa, fb)
    return el, graph_b.apply_symmetry(el)


def align_to_reference(graphs: Iterable[ParamGraph], reference: ParamGraph | int = 0, *, max_iter: int = 100,
                       progress: bool = False) -> list[ParamGraph]:
    """Weight-match every graph to one ``reference`` (a graph, or an index into ``graphs``), once.

    A zoo aligned this way can be mixed with plain :class:`~wsl.augment.MixUp`: each pair is then aligned
    through the reference instead of with each other, at no per-sample cost (:class:`~wsl.augment.AlignedMixUp`
    runs a weight matching per pair, milliseconds each). Graphs of another architecture than the reference
    raise ``ValueError`` naming their position. Returns new graphs (the reference itself is copied as is).
    """
    items = list(graphs)
    ref = items[reference] if isinstance(reference, int) else reference
    out = []
    it: Iterable[tuple[int, ParamGraph]] = enumerate(items)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=len(items), desc="aligning to reference", unit="graph")
    for i, g in it:
        if g is ref:
            out.append(g.clone())
            continue
        try:
            out.append(weight_matching(ref, g, max_iter=max_iter)[1])
        except ValueError as e:
            raise ValueError(f"align_to_reference: graph {i}: {e}") from None
    return out


def weight_distance(a: ParamGraph, b: ParamGraph) -> float:
    """Euclidean distance between the learnable values of two graphs of one architecture (parameter edges
    and node features; identity edges excluded)."""
    from ..augment.base import param_index

    check_same_architecture(a, b, "weight_distance")
    mask = param_index(a.spec).edge_param
    de = (a.edge_attr[mask].double() - b.edge_attr[mask].double()).pow(2).sum()
    dx = (a.x.double() - b.x.double()).pow(2).sum()
    return float(torch.sqrt(de + dx))


__all__ = ["Matcher", "align_to_reference", "check_same_architecture", "weight_distance", "weight_matching"]
