"""What every metanetwork layer needs to know about a batch of parameter graphs, computed once per forward."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Batch

from ..graph.paramgraph import ParamGraph
from .scatter import count

REQUIRED = ("x", "edge_index", "edge_attr", "edge_type", "edge_pos", "node_type", "node_layer", "io", "io_index")


def as_batch(graphs: ParamGraph | Batch | Sequence[ParamGraph]) -> ParamGraph | Batch:
    """Accept one ParamGraph, a PyG ``Batch`` of them, or a list of them (batched here)."""
    if isinstance(graphs, (list, tuple)):
        if not graphs:
            raise ValueError("empty list of graphs")
        graphs = Batch.from_data_list(list(graphs))
    missing = [k for k in REQUIRED if getattr(graphs, k, None) is None]
    if missing:
        raise TypeError(f"metanetworks take ParamGraphs (wsl.to_graph) or a PyG Batch of them; "
                        f"got {type(graphs).__name__} without {', '.join(missing)}")
    return graphs


def specs_of(batch: ParamGraph | Batch) -> list:
    spec = getattr(batch, "spec", None)
    if spec is None:
        return []
    return list(spec) if isinstance(spec, (list, tuple)) else [spec]


@dataclass
class GraphContext:
    """Index tensors and counts of a batch (``src -> dst`` edges, node / edge graph ids, degrees)."""

    src: Tensor
    dst: Tensor
    node_batch: Tensor
    edge_batch: Tensor
    num_nodes: int
    num_graphs: int
    in_count: Tensor  # [N] float, edges into each node
    out_count: Tensor  # [N] float, edges out of each node
    node_count: Tensor  # [G] float, nodes per graph
    specs: list = field(default_factory=list)
    io: Tensor | None = None  # [N] long: 0 hidden, 1 input, 2 output neuron
    io_index: Tensor | None = None  # [N] long: index among the inputs / outputs (-1 elsewhere)
    _extra: dict = field(default_factory=dict)

    @classmethod
    def from_batch(cls, batch: ParamGraph | Batch, dtype: torch.dtype = torch.float32) -> GraphContext:
        src, dst = batch.edge_index[0].long(), batch.edge_index[1].long()
        n = int(batch.x.shape[0])
        nb = getattr(batch, "batch", None)
        if nb is None:
            nb = torch.zeros(n, dtype=torch.long, device=src.device)
            g = 1
        else:
            g = int(batch.num_graphs)
        return cls(src=src, dst=dst, node_batch=nb, edge_batch=nb[src], num_nodes=n, num_graphs=g,
                   in_count=count(dst, n, dtype), out_count=count(src, n, dtype),
                   node_count=count(nb, g, dtype), specs=specs_of(batch),
                   io=batch.io.long() if getattr(batch, "io", None) is not None else None,
                   io_index=batch.io_index.long() if getattr(batch, "io_index", None) is not None else None)

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()``, computed once per batch: layers share index tensors derived from the batch (hop
        pairs appended to the edge list, sort orders, ...) instead of rebuilding them in every layer."""
        if key not in self._extra:
            self._extra[key] = make()
        return self._extra[key]

    def scale_kind(self) -> Tensor:
        """Per-node scale symmetry kind from the specs (0 none, 1 positive scale, 2 sign flip)."""
        if "scale_kind" not in self._extra:
            if not self.specs:
                raise ValueError("this batch carries no NetworkSpec (graph.spec), so its scale / sign "
                                 "symmetries are unknown; build graphs with wsl.to_graph")
            kinds = torch.cat([s.symmetry.scale_kind.long() for s in self.specs]).to(self.src.device)
            if kinds.numel() != self.num_nodes:
                raise ValueError(f"specs describe {kinds.numel()} nodes but the batch has {self.num_nodes}")
            self._extra["scale_kind"] = kinds
        return self._extra["scale_kind"]

    def hop_edges(self, hops: int) -> tuple[Tensor, Tensor]:
        """Pairs ``(src, dst)`` joined by a directed path of ``2..hops`` edges but not by one edge, with the
        shortest such path length; a join over the sorted edge list (no N x N tensor)."""
        key = f"hops{hops}"
        if key not in self._extra:
            n = self.num_nodes
            pairs = torch.unique(self.src * n + self.dst)  # sorted by source, then target
            a, b = pairs // n, pairs % n
            outdeg = torch.bincount(a, minlength=n)
            first = torch.cumsum(outdeg, 0) - outdeg  # first pair leaving each node
            seen, frontier = pairs, pairs
            codes, lengths = [], []
            for k in range(2, hops + 1):
                fa, fb = frontier // n, frontier % n
                cnt = outdeg[fb]
                rep = torch.repeat_interleave(torch.arange(frontier.numel(), device=pairs.device), cnt)
                step = torch.arange(int(cnt.sum()), device=pairs.device) - (torch.cumsum(cnt, 0) - cnt)[rep]
                reach = torch.unique(fa[rep] * n + b[first[fb][rep] + step])
                new = reach[~torch.isin(reach, seen)]
                codes.append(new)
                lengths.append(torch.full_like(new, k))
                seen = torch.cat([seen, new])
                frontier = reach
            code = torch.cat(codes) if codes else pairs.new_zeros(0)
            length = torch.cat(lengths) if lengths else pairs.new_zeros(0)
            self._extra[key] = (torch.stack([code // n, code % n]), length)
        return self._extra[key]
