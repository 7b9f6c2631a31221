"""Per-layer normalization statistics of a zoo, supplied by the dataset to the metanetwork encoders.

Weights of different layers live on very different scales (a SIREN's first layer vs its last, a conv
kernel vs a BatchNorm gain). :class:`WeightStats` records, per architecture and per state-dict tensor, the
mean and standard deviation over a zoo, and attaches them to graphs as ``edge_norm`` ``[E, 2]`` and
``node_norm`` ``[N, 6]`` (means then stds of the three node columns); :class:`~wsl.nn.encoders.GraphEncoder`
standardizes values with them. Statistics are per *tensor*, so they are the same for every element of a
tensor and therefore invariant under the network's permutations.

>>> stats = WeightStats.fit(train_graphs)              # doctest: +SKIP
>>> graph = stats(graph)                               # use as a dataset transform
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ..graph.builder import NODE_FEATURES
from ..graph.paramgraph import ParamGraph


def fingerprint(spec) -> str:
    """Architecture identity: name, graph size and every tensor's key and shape (equal specs -> equal
    fingerprints; a residual and a plain net with the same tensors differ in their graphs' sizes)."""
    parts = [spec.arch, f"{spec.num_nodes}n{spec.num_edges}e"]
    parts += [f"{k}:{'x'.join(map(str, t.shape))}:{t.kind}" for k, t in spec.tensors.items()]
    return "|".join(parts)


def add_moments(acc: dict[str, list[float]], graph: ParamGraph) -> None:
    """Add each parameter tensor's sum, sum of squares and count (from ``graph``) to ``acc[key]``."""
    for key, t in graph.spec.tensors.items():
        if t.kind == "edges":
            v = graph.edge_attr[t.offset : t.offset + t.numel, 0]
        elif t.kind == "nodes":
            v = graph.x[t.atoms, t.column]
        else:
            continue
        v = v.double()
        s = acc.setdefault(key, [0.0, 0.0, 0.0])
        s[0] += float(v.sum())
        s[1] += float((v * v).sum())
        s[2] += v.numel()


class WeightStats:
    """Mean / std per tensor per architecture; call on a graph to attach ``edge_norm`` / ``node_norm``."""

    def __init__(self, stats: dict[str, dict[str, tuple[float, float]]] | None = None, min_std: float = 1e-6) -> None:
        self.stats = stats or {}
        self.min_std = min_std
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}

    @classmethod
    def fit(cls, graphs: Iterable[ParamGraph], min_std: float = 1e-6) -> WeightStats:
        acc: dict[str, dict[str, list[float]]] = {}
        seen = 0
        for g in graphs:
            seen += 1
            spec = g.spec
            add_moments(acc.setdefault(fingerprint(spec), {}), g)
        if not seen:
            raise ValueError("WeightStats.fit needs at least one graph")
        stats: dict[str, dict[str, tuple[float, float]]] = {}
        for fp, per in acc.items():
            stats[fp] = {}
            for key, (s, ss, n) in per.items():
                mean = s / n
                std = max((ss / n - mean * mean), 0.0) ** 0.5
                stats[fp][key] = (mean, std)
        return cls(stats, min_std)

    def state_dict(self) -> dict[str, Any]:
        """Plain-Python (JSON-serializable) form; restore with :meth:`from_state_dict`."""
        return {"min_std": self.min_std, "stats": {fp: {k: list(v) for k, v in d.items()} for fp, d in self.stats.items()}}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> WeightStats:
        stats = {fp: {k: (float(v[0]), float(v[1])) for k, v in d.items()} for fp, d in state["stats"].items()}
        return cls(stats, float(state.get("min_std", 1e-6)))

    def _tensors(self, spec) -> tuple[Tensor, Tensor]:
        fp = fingerprint(spec)
        if fp not in self._cache:
            if fp not in self.stats:
                raise KeyError(f"WeightStats has no statistics for architecture {spec.arch!r} "
                               f"({spec.num_parameters} parameters); fit them on graphs of this architecture")
            k = len(NODE_FEATURES)
            edge = torch.zeros(spec.num_edges, 2)
            edge[:, 1] = 1.0
            node = torch.zeros(spec.num_nodes, 2 * k)
            node[:, k:] = 1.0
            for key, (mean, std) in self.stats[fp].items():
                t = spec.tensors[key]
                std = std if std >= self.min_std else 1.0  # constant tensors: centre only
                if t.kind == "edges":
                    edge[t.offset : t.offset + t.numel] = torch.tensor([mean, std])
                else:
                    node[t.atoms, t.column] = mean
                    node[t.atoms, k + t.column] = std
            self._cache[fp] = (edge, node)
        return self._cache[fp]

    def __call__(self, graph: ParamGraph) -> ParamGraph:
        edge, node = self._tensors(graph.spec)
        out = graph.clone_structure()
        out.edge_norm = edge.to(graph.edge_attr.device)
        out.node_norm = node.to(graph.x.device)
        return out

    def __repr__(self) -> str:
        return f"WeightStats(architectures={len(self.stats)})"
