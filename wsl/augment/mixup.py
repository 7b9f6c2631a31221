"""Pairwise augmentations: mixup of two networks' weights and labels, and a DataLoader collate for them.

.. math::
    \\theta = \\lambda \\theta_a + (1 - \\lambda) \\, T(\\theta_b), \\qquad
    y = \\lambda y_a + (1 - \\lambda) y_b, \\qquad \\lambda \\sim \\mathrm{Beta}(\\alpha, \\alpha)

with ``T`` the identity (:class:`MixUp`), a random element of the permutation group
(:class:`PermutedMixUp`) or the weight-matching alignment of ``b`` to ``a`` (:class:`AlignedMixUp`).
Because hidden neurons of two independently trained networks are in arbitrary order, naive weight mixing
averages unrelated neurons; aligning first mixes corresponding ones.

Class labels (``int``) become soft one-hot vectors ``[1, num_classes]`` (train with a cross-entropy on
probabilities); float labels (regression targets, already-soft labels) are mixed as they are. Mixed are
the parameter edges and all node features (BatchNorm running statistics mixed linearly are only an
approximation of the mixed network's statistics); identity edges and pass-through buffers are ``a``'s.

Reference: Shamsian et al., *Data Augmentations in Deep Weight Spaces* (2023), weight-space mixup;
Zhang et al., *mixup: Beyond Empirical Risk Minimization* (ICLR 2018).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..graph import ParamGraph
from .base import Generator, param_index, register, require_spec, with_values


def _lambda(alpha: float, generator: Generator) -> float:
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def soft_label(y: Any, num_classes: int | None) -> Tensor | None:
    """``y`` as a float row: one-hot ``[1, C]`` for integer class ids, else ``y`` as float ``[1, ...]``."""
    if y is None:
        return None
    y = torch.as_tensor(y)
    if not y.is_floating_point():
        if num_classes is None:
            raise ValueError("mixing integer class labels needs num_classes (e.g. MixUp(num_classes=10))")
        return torch.nn.functional.one_hot(y.reshape(-1)[:1].long(), num_classes).float()
    return y.float().reshape(1, -1)


class PairwiseTransform:
    """Base of pairwise transforms ``t(graph_a, graph_b, generator=None) -> new graph``."""

    pairwise = True
    registry_name: str = ""

    def __init__(self, alpha: float = 0.2, num_classes: int | None = None) -> None:
        if alpha <= 0:
            raise ValueError(f"{type(self).__name__}: alpha must be > 0, got {alpha}")
        self.alpha, self.num_classes = float(alpha), num_classes

    def partner(self, a: ParamGraph, b: ParamGraph, generator: Generator) -> ParamGraph:
        return b

    def __call__(self, graph_a: ParamGraph, graph_b: ParamGraph, generator: Generator = None,
                 lam: float | None = None) -> ParamGraph:
        """Mix ``graph_b`` into ``graph_a``; ``lam`` overrides the Beta draw (weight of ``graph_a``)."""
        name = type(self).__name__
        spec = require_spec(graph_a, name)
        require_spec(graph_b, name)
        if graph_b.spec is not spec and (graph_b.spec.num_edges != spec.num_edges
                                         or not torch.equal(graph_b.spec.edge_index, spec.edge_index)):
            raise ValueError(f"{name}: the two graphs are of different architectures "
                             f"({spec.arch} and {graph_b.spec.arch}); mix graphs of one architecture")
        lam = _lambda(self.alpha, generator) if lam is None else float(lam)
        b = self.partner(graph_a, graph_b, generator)
        keep = ~param_index(spec).edge_param[:, None]
        ea, eb = graph_a.edge_attr, b.edge_attr
        edge = torch.where(keep, ea, (lam * ea.double() + (1 - lam) * eb.double()).to(ea.dtype))
        x = (lam * graph_a.x.double() + (1 - lam) * b.x.double()).to(graph_a.x.dtype)
        out = with_values(graph_a, edge, x)
        ya = soft_label(graph_a._store.get("y", None), self.num_classes)
        yb = soft_label(graph_b._store.get("y", None), self.num_classes)
        if ya is not None and yb is not None:
            out.y = lam * ya + (1 - lam) * yb
        return out

    def apply_state_dict(self, state_a: dict[str, Tensor], state_b: dict[str, Tensor], spec: Any,
                         generator: Generator = None) -> dict[str, Tensor]:
        """Mix two plain state_dicts of ``spec``'s architecture (weights only)."""
        from ..graph.convert import graph_from_state

        return self(graph_from_state(spec, state_a), graph_from_state(spec, state_b), generator).to_state_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha}, num_classes={self.num_classes})"


@register("mixup")
class MixUp(PairwiseTransform):
    """Vanilla weight-space mixup (no alignment)."""


@register("permuted_mixup")
class PermutedMixUp(PairwiseTransform):
    """Mixup with the partner randomly permuted first (a random element of its permutation group)."""

    def partner(self, a: ParamGraph, b: ParamGraph, generator: Generator) -> ParamGraph:
        return b.apply_symmetry(b.spec.sample_symmetry(generator, scale=False))


@register("aligned_mixup")
class AlignedMixUp(PairwiseTransform):
    """Mixup with the partner aligned to the anchor by weight matching first (one matching per pair, a few ms
    for small nets; for large zoos align once with :func:`wsl.align.align_to_reference` and use :class:`MixUp`)."""

    def __init__(self, alpha: float = 0.2, num_classes: int | None = None, max_iter: int = 20) -> None:
        super().__init__(alpha, num_classes)
        self.max_iter = max_iter

    def partner(self, a: ParamGraph, b: ParamGraph, generator: Generator) -> ParamGraph:
        from ..align import weight_matching

        return weight_matching(a, b, max_iter=self.max_iter)[1]


class PairwiseCollate:
    """DataLoader ``collate_fn`` that mixes each item with a random partner of the same architecture.

    Items are ParamGraphs carrying ``y`` (what :class:`~wsl.data.ZooDataset` yields) — returns a PyG
    ``Batch`` — or ``(graph, label)`` pairs — returns ``(Batch, labels [B, ...])``. Each item is mixed with
    probability ``p`` (partner: a random permutation of the batch within its architecture); unmixed items
    still get soft labels so the batch collates.

    >>> loader = DataLoader(dataset, batch_size=64, collate_fn=PairwiseCollate(AlignedMixUp(num_classes=10)))
    """

    def __init__(self, mixup: PairwiseTransform, generator: Generator = None, p: float = 1.0) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"PairwiseCollate: p must be in [0, 1], got {p}")
        self.mixup, self.generator, self.p = mixup, generator, p

    def __call__(self, items: Sequence[Any]) -> Any:
        from torch_geometric.data import Batch

        pairs = isinstance(items[0], (tuple, list))
        graphs = []
        for it in items:
            if pairs:
                g = it[0].clone_structure()
                g.y = torch.as_tensor(it[1])
                graphs.append(g)
            else:
                graphs.append(it)
        groups: dict[tuple, list[int]] = {}
        for i, g in enumerate(graphs):
            s = g.spec
            key = (s.arch, s.num_nodes, s.num_edges, s.keys, s.symmetry.scale_kind.numpy().tobytes())
            groups.setdefault(key, []).append(i)
        out: list[ParamGraph] = list(graphs)
        for members in groups.values():
            order = torch.randperm(len(members), generator=self.generator).tolist()
            for i, j in zip(members, (members[k] for k in order)):
                if i != j and float(torch.rand((), generator=self.generator)) < self.p:
                    out[i] = self.mixup(graphs[i], graphs[j], self.generator)
                else:
                    g = graphs[i].clone_structure()
                    y = soft_label(g._store.get("y", None), self.mixup.num_classes)
                    if y is not None:
                        g.y = y
                    out[i] = g
        if pairs:
            labels = torch.cat([g.y for g in out])
            for g in out:
                del g.y
            return Batch.from_data_list(out), labels
        return Batch.from_data_list(out)
