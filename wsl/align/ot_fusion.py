"""OT fusion: merge networks by optimal transport of their neurons onto a target network's neurons.

Reference: Singh & Jaggi, *Model Fusion via Optimal Transport* (NeurIPS 2020); generalized here from layers
to the permutation classes of any architecture ``wsl.to_graph`` supports (a hidden layer, a residual
stream tied across its layers, ...), visited in the order weight matching visits them.

For each class, with ``alpha`` [n] the masses of the aligned model's neurons and ``beta`` [m] those of the
target's, a transport plan

.. math::
    T = \\arg\\min_{T \\ge 0,\\; T 1 = \\alpha,\\; T^\\top 1 = \\beta} \\langle T, C \\rangle
    \\;(\\,- \\mathrm{reg}\\cdot H(T) \\text{ for Sinkhorn})

from a cost ``C`` [n, m]: ``cost="weight"``: squared distance between neurons' incoming weights, biases and
norm parameters, the sources being transported by the plans of the classes solved before (the paper's
weight-based variant; edges from classes not solved yet, e.g. inside a residual stream, are left out);
``cost="activation"``: mean squared difference of the neurons' activations on example inputs (classes no
hook captures fall back to the weight cost). ``C`` is divided by its largest entry, so ``reg`` is relative.

Transport. A neuron's own parameters (incoming weights, bias, norm parameters and statistics) are mixed with
the column-normalized plan ``T diag(1/beta)`` (the paper's rule: each target neuron gets a convex combination
of the model's neurons). The weights *consumers read from* a neuron are moved with the row-normalized plan
``diag(1/alpha) T``: each neuron hands its outgoing weights to the target neurons it was sent to. For equal
widths and uniform masses both are the paper's ``T diag(1/beta)`` (a permutation for a permuted copy); for
different widths this is what keeps a function-preserving widening (copies of a neuron sharing its outgoing
weights) exact, where the paper's rule would scale the next layer by ``n / m``.

Scales (``scales=True``): both networks are brought to canonical positive scales / signs first
(:mod:`wsl.align.canonical`); costs of positive-scale neurons compare directions (rows normalized), and the
transported network is canonicalized again, then given the target's scales before averaging. A widened copy
of the target (neurons duplicated, outgoing weights split among the copies) fuses back into the target
exactly; fused into the *wider* network it is exact only without scales (``scales=False``): copies whose
outgoing weights are split unevenly have other canonical scales than the narrow network's neuron spread
evenly over them, so the averaged scales differ slightly. Exactness of a widening also needs each neuron's
copies to carry its mass (with uniform masses: every neuron copied equally often). Importance masses are
measured on the networks as given (the paper's definition), so they are not invariant to rescaling.

Different widths: the neuron sets of the two specs are paired by position and must agree in name and kind;
a set whose size differs must be one whole cell of a free, non-blocked permutation class (MLP layers, plain
CNN channels, a residual stream whose tied sets form one class); parameter tensors are paired by key.
Anything else raises ``ValueError`` naming the sets. Block-structured classes (attention heads, grouped
convolutions, GroupNorm groups) are refused: use ``merge(..., method="aligned")``.

Shapes:
    ``plan(root)``: ``T`` [n, m] (aligned model's class neurons x target's); ``ot_align`` returns a
    ParamGraph of the target's spec.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..graph import ParamGraph, SymmetryElement, from_graph
from ..graph.builder import NODE_COL
from ..graph.spec import NetworkSpec
from ..graph.symmetry import POSITIVE
from .activation import capture
from .canonical import canonical_scales, canonicalize
from .structure import Block, align_index

COSTS, SOLVERS, MASSES = ("weight", "activation"), ("emd", "sinkhorn"), ("uniform", "importance")


def _ot() -> Any:
    try:
        import ot
    except ImportError:
        raise ImportError("OT fusion needs the POT package: pip install pot") from None
    return ot


@dataclass
class _Cell:
    """One pair of corresponding cells: B's ``[sb, sb + zb)`` and the target's ``[sa, sa + za)``."""

    sb: int
    zb: int
    sa: int
    za: int
    root: int | None  # the target's class root; None for a fixed (never permuted) cell


def _set_of(spec: NetworkSpec) -> Tensor:
    starts = torch.tensor([s.start for s in spec.sets], dtype=torch.long)
    return torch.searchsorted(starts, torch.arange(spec.num_nodes), right=True) - 1


class Pairing:
    """The correspondence of model B's spec with the target's: cells, classes and parameter blocks."""

    def __init__(self, spec_a: NetworkSpec, spec_b: NetworkSpec, who: str = "model 1") -> None:
        self.spec_a, self.spec_b = spec_a, spec_b
        sa, sb = spec_a.sets, spec_b.sets

        def fail(msg: str) -> None:
            archs = f" ({spec_b.arch} vs {spec_a.arch})" if spec_b.arch != spec_a.arch else ""
            raise ValueError(f"ot_fusion: {who} does not correspond to the target{archs}: {msg}. OT fusion pairs "
                             "neuron sets by position and name, so the models must be of one family (the same "
                             "layers in the same order); only hidden widths may differ")

        if len(sa) != len(sb):
            fail(f"the target has {len(sa)} neuron sets ({', '.join(s.name for s in sa[:8])}{' ...' * (len(sa) > 8)})"
                 f", {who} has {len(sb)} ({', '.join(s.name for s in sb[:8])}{' ...' * (len(sb) > 8)})")
        for i, (x, y) in enumerate(zip(sa, sb)):
            if (x.name, x.kind) != (y.name, y.kind):
                fail(f"neuron set {i} is '{x.name}' ({x.kind}, {x.size}) in the target and '{y.name}' ({y.kind}, "
                     f"{y.size}) in {who}")
        ya, yb = spec_a.symmetry, spec_b.symmetry
        for spec in (spec_a, spec_b):
            sym = spec.symmetry
            for root, gm in sym.class_blocks.items():
                if not sym.class_fixed.get(root, False):
                    names = sorted({spec.sets[int(_set_of(spec)[int(sym.cell_start[c])])].name
                                    for c in range(len(sym.cell_class)) if int(sym.cell_class[c]) == root})
                    raise ValueError(f"ot_fusion: the block-structured permutation class of sets {names} (blocks "
                                     f"{gm}: attention heads, grouped convolutions or GroupNorm groups) is not "
                                     "supported; use merge(..., method='aligned')")
        ca, cb = ya.cell_start.tolist(), yb.cell_start.tolist()
        if len(ca) != len(cb):
            fail(f"the neuron sets are cut into {len(ca)} symmetry cells in the target and {len(cb)} in {who}")
        set_a, set_b = _set_of(spec_a), _set_of(spec_b)
        roots: dict[int, int] = {}
        back: dict[int, int] = {}
        self.cells: list[_Cell] = []
        for c in range(len(ca)):
            za, zb = int(ya.cell_size[c]), int(yb.cell_size[c])
            ra, rb = int(ya.cell_class[c]), int(yb.cell_class[c])
            st = sa[int(set_a[ca[c]])]
            fixed = ya.class_fixed.get(ra, False)
            tied_alike = roots.setdefault(ra, rb) == rb and back.setdefault(rb, ra) == ra
            if fixed != yb.class_fixed.get(rb, False) or not tied_alike:
                fail(f"the neurons of set '{st.name}' are tied / permuted differently in the two architectures")
            if za != zb:
                whole = (ca[c], za) == (st.start, st.size) and (cb[c], zb) == (sb[int(set_b[cb[c]])].start,
                                                                             sb[int(set_b[cb[c]])].size)
                if fixed:
                    fail(f"set '{st.name}' has {za} neurons in the target and {zb} in {who}, but its neurons "
                         "cannot be permuted (inputs, outputs, fixed sets), so its width must agree")
                if not whole:
                    fail(f"set '{st.name}' differs in width ({za} vs {zb}) but is not one whole permutation cell; "
                         "different widths are supported where each class covers whole neuron sets")
            self.cells.append(_Cell(cb[c], zb, ca[c], za, None if fixed else ra))
        self.roots: list[int] = list(dict.fromkeys(c.root for c in self.cells if c.root is not None))
        self.size = {c.root: (c.zb, c.za) for c in self.cells if c.root is not None}
        node_class = torch.full((spec_a.num_nodes,), -1, dtype=torch.long)
        node_off = torch.zeros(spec_a.num_nodes, dtype=torch.long)
        for c in self.cells:
            if c.root is not None:
                node_class[c.sa : c.sa + c.za] = c.root
                node_off[c.sa : c.sa + c.za] = torch.arange(c.za)
        self.blocks: list[tuple[str, Block, Block, bool]] = []
        ta = [k for k, t in spec_a.tensors.items() if t.kind == "edges" and t.numel]
        tb = [k for k, t in spec_b.tensors.items() if t.kind == "edges" and t.numel]
        if ta != tb or set(spec_a.tensors) != set(spec_b.tensors):
            fail(f"the parameter tensors differ ({sorted(set(spec_a.tensors) ^ set(spec_b.tensors))[:4]})")
        for k, ba, bb in zip(ta, align_index(spec_a).blocks, align_index(spec_b).blocks):
            ends_a, ends_b = (int(set_a[ba.d0]), int(set_a[ba.s0])), (int(set_b[bb.d0]), int(set_b[bb.s0]))
            if ba.ncodes != bb.ncodes or ends_a != ends_b:
                fail(f"tensor '{k}' connects other sets or has another kernel size ({spec_a.tensors[k].shape} vs "
                     f"{spec_b.tensors[k].shape})")
            s, d = ba.src + ba.s0, ba.dst + ba.d0
            per_neuron = bool((node_class[d] >= 0).all() and (node_class[s] == node_class[d]).all()
                              and (node_off[s] == node_off[d]).all())
            self.blocks.append((k, ba, bb, per_neuron))

    def node_map(self, b0: int, nb: int, a0: int, na: int, plans: dict[int, dict[str, Tensor]],
                 kind: str) -> tuple[Tensor, Tensor]:
        """``(M [nb, na], known [na])``: B's nodes ``[b0, b0 + nb)`` onto the target's ``[a0, a0 + na)``:
        identity on fixed cells, ``plans[root][kind]`` on solved classes, zero (not known) on the others."""
        out = torch.zeros(nb, na, dtype=torch.float64)
        known = torch.zeros(na, dtype=torch.bool)
        for c in self.cells:
            lo, hi = max(c.sb, b0), min(c.sb + c.zb, b0 + nb)
            if lo >= hi:
                continue
            if c.root is None:
                ra = lo - c.sb + c.sa - a0
                out[lo - b0 : hi - b0, ra : ra + hi - lo] = torch.eye(hi - lo, dtype=torch.float64)
                known[ra : ra + hi - lo] = True
                continue
            if (lo, hi) != (c.sb, c.sb + c.zb):
                raise ValueError(f"ot_fusion: a parameter tensor covers part of the permutation cell at node {c.sa} "
                                 "of the target; this architecture is not supported")
            if c.root in plans:
                out[c.sb - b0 : c.sb - b0 + c.zb, c.sa - a0 : c.sa - a0 + c.za] = plans[c.root][kind]
                known[c.sa - a0 : c.sa - a0 + c.za] = True
        return out, known


def _dense(blk: Block, edge: Tensor) -> Tensor:
    w = torch.zeros(blk.nd, blk.ns, blk.ncodes, dtype=torch.float64)
    w[blk.dst, blk.src, blk.code] = edge[blk.off : blk.off + blk.cnt]
    return w


def _importance(graph: ParamGraph, pairing: Pairing, side: str) -> dict[int, Tensor]:
    """Per class: the norm of each neuron's incoming weights and bias (over all its cells), summing to one."""
    from ..augment.base import param_index

    e = graph.edge_attr[:, 0].double() * param_index(graph.spec).edge_param
    sq = torch.zeros(graph.spec.num_nodes, dtype=torch.float64).index_add_(0, graph.edge_index[1], e * e)
    sq += graph.x[:, NODE_COL["bias"]].double() ** 2
    out: dict[int, Tensor] = {}
    for c in pairing.cells:
        if c.root is not None:
            s, z = (c.sb, c.zb) if side == "b" else (c.sa, c.za)
            out[c.root] = out.get(c.root, 0) + sq[s : s + z]
    for r, v in out.items():
        v = v.sqrt()
        v = v.clamp(min=1e-9 * float(v.max()) if float(v.max()) > 0 else 1.0)
        out[r] = v / v.sum()
    return out


class Fusion:
    """Transport plans of model B onto the target, class by class, and the transported graph."""

    def __init__(self, pairing: Pairing, a: ParamGraph, b: ParamGraph, *, solver: str, reg: float,
                 masses: dict[str, dict[int, Tensor]] | None, scales: bool,
                 acts: tuple[dict[int, Tensor], dict[int, Tensor]] | None = None) -> None:
        self.p, self.a, self.b = pairing, a, b
        self.ea, self.eb = a.edge_attr[:, 0].double(), b.edge_attr[:, 0].double()
        self.solver, self.reg, self.masses, self.scales, self.acts = solver, reg, masses, scales, acts
        self.plans: dict[int, dict[str, Tensor]] = {}

    def _normalize(self, c: _Cell, fa: Tensor, fb: Tensor) -> tuple[Tensor, Tensor]:
        if self.scales and c.za and int(self.p.spec_a.symmetry.scale_kind[c.sa]) == POSITIVE:
            fa = fa / fa.norm(dim=1, keepdim=True).clamp(min=1e-300)
            fb = fb / fb.norm(dim=1, keepdim=True).clamp(min=1e-300)
        return fa, fb

    def weight_cost(self, root: int) -> Tensor:
        """``C [n, m]``: squared distance of incoming weights (sources transported by solved plans) and node
        features, summed over the class's cells."""
        n, m = self.p.size[root]
        C = torch.zeros(n, m, dtype=torch.float64)
        for c in (c for c in self.p.cells if c.root == root):
            fa, fb = [self.a.x[c.sa : c.sa + c.za].double()], [self.b.x[c.sb : c.sb + c.zb].double()]
            for _, ba, bb, per_neuron in self.p.blocks:
                if not ba.d0 <= c.sa < ba.d0 + ba.nd:
                    continue
                ra, rb = c.sa - ba.d0, c.sb - bb.d0
                wa, wb = _dense(ba, self.ea)[ra : ra + c.za], _dense(bb, self.eb)[rb : rb + c.zb]
                if per_neuron:  # one source per neuron: a feature of the neuron
                    fa.append(wa.sum(1))
                    fb.append(wb.sum(1))
                    continue
                R, known = self.p.node_map(bb.s0, bb.ns, ba.s0, ba.ns, self.plans, "row")
                fa.append((wa * known[None, :, None]).flatten(1))
                fb.append(torch.einsum("qsc,sr->qrc", wb, R).flatten(1))
            ga, gb = self._normalize(c, torch.cat(fa, 1), torch.cat(fb, 1))
            C += torch.cdist(gb, ga).pow(2)
        return C

    def activation_cost(self, root: int) -> Tensor | None:
        """``C [n, m]`` from captured activations (mean squared difference), ``None`` when none is captured."""
        acts_a, acts_b = self.acts
        n, m = self.p.size[root]
        C, hit = torch.zeros(n, m, dtype=torch.float64), False
        for c in (c for c in self.p.cells if c.root == root):
            sa = next((s for s in self.p.spec_a.sets if s.start <= c.sa < s.start + s.size), None)
            sb = next((s for s in self.p.spec_b.sets if s.start <= c.sb < s.start + s.size), None)
            if sa is None or sb is None or sa.start not in acts_a or sb.start not in acts_b:
                continue
            za = acts_a[sa.start][:, c.sa - sa.start : c.sa - sa.start + c.za]
            zb = acts_b[sb.start][:, c.sb - sb.start : c.sb - sb.start + c.zb]
            za, zb = za.T / za.shape[0] ** 0.5, zb.T / zb.shape[0] ** 0.5  # [neurons, samples]: mean squares
            za, zb = self._normalize(c, za, zb)
            C += torch.cdist(zb, za).pow(2)
            hit = True
        return C if hit else None

    def solve(self, root: int, C: Tensor) -> None:
        ot = _ot()
        n, m = C.shape
        if self.masses is None:
            alpha = torch.full((n,), 1.0 / n, dtype=torch.float64)
            beta = torch.full((m,), 1.0 / m, dtype=torch.float64)
        else:
            alpha, beta = self.masses["b"][root], self.masses["a"][root]
        top = float(C.max())
        C = C / top if top > 0 else C
        if self.solver == "emd":
            T = torch.as_tensor(ot.emd(alpha.numpy(), beta.numpy(), C.numpy()), dtype=torch.float64)
        else:
            method = "sinkhorn" if self.reg >= 0.01 else "sinkhorn_log"  # costs in [0, 1]: exp(-1/reg) is safe
            T = torch.as_tensor(ot.sinkhorn(alpha.numpy(), beta.numpy(), C.numpy(), self.reg, method=method,
                                            numItermax=100_000, stopThr=1e-6),
                                dtype=torch.float64)  # the plan is renormalized below: 1e-6 marginals suffice
        col, row = T.sum(0, keepdim=True), T.sum(1, keepdim=True)
        self.plans[root] = {"plan": T, "col": T / col.clamp(min=1e-300), "row": T / row.clamp(min=1e-300)}

    def run(self) -> None:
        for root in self.p.roots:
            C = self.activation_cost(root) if self.acts is not None else None
            self.solve(root, C if C is not None else self.weight_cost(root))

    def transport(self) -> ParamGraph:
        """B's values moved onto the target's neurons (a ParamGraph of the target's spec)."""
        p, a = self.p, self.a
        edge = a.edge_attr[:, 0].double().clone()
        for _, ba, bb, per_neuron in p.blocks:
            M, _ = p.node_map(bb.d0, bb.nd, ba.d0, ba.nd, self.plans, "col")
            wb = _dense(bb, self.eb)
            if per_neuron:
                v = M.T @ wb.sum(1)  # [nd_a, codes]
                edge[ba.off : ba.off + ba.cnt] = v[ba.dst, ba.code]
                continue
            R, _ = p.node_map(bb.s0, bb.ns, ba.s0, ba.ns, self.plans, "row")
            w = torch.einsum("bq,bsc,sr->qrc", M, wb, R)
            edge[ba.off : ba.off + ba.cnt] = w[ba.dst, ba.src, ba.code]
        xb = self.b.x.double()
        x = torch.zeros(a.x.shape, dtype=torch.float64)
        for c in p.cells:
            x[c.sa : c.sa + c.za] = xb[c.sb : c.sb + c.zb] if c.root is None else \
                self.plans[c.root]["col"].T @ xb[c.sb : c.sb + c.zb]
        new = a.clone_structure()
        new.edge_attr = edge.to(a.edge_attr.dtype)[:, None]
        new.x = x.to(a.x.dtype)
        return new


def ot_align(target: ParamGraph, graph: ParamGraph, *, cost: str = "weight", solver: str = "emd",
             reg: float = 0.01, masses: str = "uniform", scales: bool = True, models: tuple[nn.Module, nn.Module]
             | None = None, data: Any = None, who: str = "model 1") -> tuple[dict[int, Tensor], ParamGraph]:
    """Transport ``graph`` onto ``target``'s neurons (see the module docstring).

    Args:
        target: the target network's graph; the result has its spec (its widths).
        graph: a network of the same family (equal or different hidden widths).
        cost: ``"weight"`` or ``"activation"`` (needs ``models`` = (target module, graph's module) and ``data``).
        solver: ``"emd"`` (exact, ``ot.emd``) or ``"sinkhorn"`` (``ot.sinkhorn``, entropic ``reg`` relative to
            the largest cost; log domain below ``reg=0.01``).
        masses: ``"uniform"`` or ``"importance"`` (norm of each neuron's incoming weights and bias, in the
            networks as given — before canonical scales, so not invariant to rescaling —, normalized per class).
        scales: canonicalize positive scales / sign flips first (:mod:`wsl.align.canonical`).

    Returns:
        ``(plans, aligned)``: ``{target class root: T [n, m]}`` (rows: ``graph``'s neurons of the class, columns:
        the target's) and the transported graph.
    """
    for name, val, allowed in (("cost", cost, COSTS), ("solver", solver, SOLVERS), ("masses", masses, MASSES)):
        if val not in allowed:
            raise ValueError(f"ot_fusion: {name} must be one of {allowed}, got {val!r}")
    if cost == "activation" and (models is None or data is None):
        raise ValueError("ot_fusion: cost='activation' needs the networks as nn.Modules and data=<example inputs>")
    _ot()
    pairing = Pairing(target.spec, graph.spec, who)
    mass = {"a": _importance(target, pairing, "a"), "b": _importance(graph, pairing, "b")} \
        if masses == "importance" else None
    fa, ca = canonicalize(target) if scales else (None, target)
    _, cb = canonicalize(graph) if scales else (None, graph)
    acts = None
    if cost == "activation":  # activations of the canonical networks
        ma = from_graph(ca, models[0]) if ca is not target else models[0]
        mb = from_graph(cb, models[1]) if cb is not graph else models[1]
        acts = (capture(ma, ca, data), capture(mb, cb, data))
    fusion = Fusion(pairing, ca, cb, solver=solver, reg=reg, masses=mass, scales=scales, acts=acts)
    fusion.run()
    aligned = fusion.transport()
    if scales:
        g = canonical_scales(aligned)
        if g is not None or fa is not None:
            n = target.spec.num_nodes
            f = (g if g is not None else torch.ones(n, dtype=torch.float64)) / (fa if fa is not None else 1.0)
            aligned = aligned.apply_symmetry(SymmetryElement(torch.arange(n), f))
    return {r: v["plan"] for r, v in fusion.plans.items()}, aligned


def ot_fusion(graphs: Sequence[ParamGraph], *, target: int = 0, weights: Sequence[float] | None = None,
              cost: str = "weight", solver: str = "emd", reg: float = 0.01, masses: str = "uniform",
              scales: bool = True, models: Sequence[nn.Module] | None = None, data: Any = None) -> ParamGraph:
    """Align every graph to ``graphs[target]`` by :func:`ot_align`, then average (``weights`` per graph, in
    the order given; default uniform). Returns a ParamGraph of the target's spec."""
    from ..merging import average_graphs

    if not -len(graphs) <= target < len(graphs):
        raise ValueError(f"ot_fusion: target={target} is not an index into {len(graphs)} models")
    if weights is not None and len(weights) != len(graphs):
        raise ValueError(f"ot_fusion: need {len(graphs)} weights (one per model), got {len(weights)}")
    target %= len(graphs)
    ref = graphs[target]
    aligned = []
    for i, g in enumerate(graphs):
        if i == target:
            aligned.append(ref)
            continue
        pair = None if models is None else (models[target], models[i])
        aligned.append(ot_align(ref, g, cost=cost, solver=solver, reg=reg, masses=masses, scales=scales,
                                models=pair, data=data, who=f"model {i}")[1])
    order = [target] + [i for i in range(len(graphs)) if i != target]  # the target first: its buffers stay
    w = None if weights is None else [float(weights[i]) for i in order]
    return average_graphs([aligned[i] for i in order], w)


__all__ = ["Pairing", "ot_align", "ot_fusion"]
