"""Batching computational graphs for graph hypernetworks: offsets, sweep schedules, distance encodings.

Several :class:`~wsl.hyper.compgraph.CompGraph` s become one disjoint graph (node ids offset per graph).
For GHN-2's sequential sweeps, nodes are grouped into **levels**: the forward level of a node is the length
of the longest path reaching it from a source, the backward level the longest path from it to a sink. All
nodes of a level only depend on nodes of earlier levels, so updating a whole level at once is exactly the
node-by-node sweep in topological order of GHN-2, with one step per level instead of one per node.

Shapes:
    ``op_type`` ``[N]``, ``shape`` ``[N, 4]``, ``graph`` ``[N]`` (graph of each node), ``edge_index``
    ``[2, E]``; each :class:`Sweep` step holds the level's ``nodes`` ``[n_l]`` and its incoming messages
    ``src`` ``[m_l]``, ``dst`` ``[m_l]`` (index into ``nodes``), ``dist`` ``[m_l]`` (1 for real edges, the
    shortest-path length ``1 < s <= s_max`` for virtual ones). ``spd`` ``[B, N_max, N_max]`` holds directed
    shortest-path lengths per graph (-1 unreachable or padding), ``mask`` ``[B, N_max]`` the real nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .compgraph import CompGraph


@dataclass
class SweepStep:
    nodes: Tensor
    src: Tensor
    dst: Tensor
    dist: Tensor


@dataclass
class GraphBatch:
    graphs: list[CompGraph]
    op_type: Tensor
    shape: Tensor
    graph: Tensor
    edge_index: Tensor
    offsets: list[int]
    in_degree: Tensor
    out_degree: Tensor
    forward_sweep: list[SweepStep]
    backward_sweep: list[SweepStep]
    spd: Tensor
    mask: Tensor

    @property
    def num_nodes(self) -> int:
        return int(self.op_type.numel())

    def to(self, device: torch.device | str) -> GraphBatch:
        def mv(s: SweepStep) -> SweepStep:
            return SweepStep(s.nodes.to(device), s.src.to(device), s.dst.to(device), s.dist.to(device))

        return GraphBatch(self.graphs, self.op_type.to(device), self.shape.to(device), self.graph.to(device),
                          self.edge_index.to(device), self.offsets, self.in_degree.to(device),
                          self.out_degree.to(device), [mv(s) for s in self.forward_sweep],
                          [mv(s) for s in self.backward_sweep], self.spd.to(device), self.mask.to(device))


def _levels(edge_index: Tensor, n: int) -> Tensor:
    """Longest-path depth of every node from the sources (nodes are in topological order)."""
    level = [0] * n
    preds: list[list[int]] = [[] for _ in range(n)]
    for s, d in edge_index.t().tolist():
        preds[d].append(s)
    for v in range(n):
        if preds[v]:
            level[v] = 1 + max(level[u] for u in preds[v])
    return torch.tensor(level, dtype=torch.long)


def _sweep(graphs: list[CompGraph], offsets: list[int], s_max: int, reverse: bool) -> list[SweepStep]:
    lv, src, dst, dist = [], [], [], []
    for g, off in zip(graphs, offsets):
        n = g.num_nodes
        d = g.distances(s_max)
        if reverse:
            d = d.t()  # messages from successors: d[v, u] = distance u -> v in the reversed graph
            order = torch.arange(n - 1, -1, -1)
            ei = torch.stack([n - 1 - g.edge_index[1], n - 1 - g.edge_index[0]])
            lev = _levels(ei, n)[order]
        else:
            lev = _levels(g.edge_index, n)
        u, v = torch.nonzero(d > 0, as_tuple=True)  # every ancestor within s_max sends a message
        lv.append(lev)
        src.append(u + off)
        dst.append(v + off)
        dist.append(d[u, v])
    levels = torch.cat(lv)
    src_all, dst_all, dist_all = torch.cat(src), torch.cat(dst), torch.cat(dist)
    steps = []
    for k in range(int(levels.max()) + 1 if levels.numel() else 0):
        nodes = torch.nonzero(levels == k).flatten()
        local = torch.full((levels.numel(),), -1, dtype=torch.long)
        local[nodes] = torch.arange(nodes.numel())
        sel = local[dst_all] >= 0
        steps.append(SweepStep(nodes, src_all[sel], local[dst_all[sel]], dist_all[sel]))
    return steps


def collate(graphs: list[CompGraph], s_max: int = 50) -> GraphBatch:
    """One :class:`GraphBatch` from several computational graphs (see module docstring)."""
    if not graphs:
        raise ValueError("collate() needs at least one computational graph")
    offsets, total = [], 0
    for g in graphs:
        offsets.append(total)
        total += g.num_nodes
    edge_index = torch.cat([g.edge_index + off for g, off in zip(graphs, offsets)], 1)
    nmax = max(g.num_nodes for g in graphs)
    spd = torch.full((len(graphs), nmax, nmax), -1, dtype=torch.long)
    mask = torch.zeros(len(graphs), nmax, dtype=torch.bool)
    for i, g in enumerate(graphs):
        spd[i, : g.num_nodes, : g.num_nodes] = g.distances(s_max)
        mask[i, : g.num_nodes] = True
    return GraphBatch(
        graphs=graphs,
        op_type=torch.cat([g.op_type for g in graphs]),
        shape=torch.cat([g.shape for g in graphs]),
        graph=torch.cat([torch.full((g.num_nodes,), i, dtype=torch.long) for i, g in enumerate(graphs)]),
        edge_index=edge_index,
        offsets=offsets,
        in_degree=torch.bincount(edge_index[1], minlength=total),
        out_degree=torch.bincount(edge_index[0], minlength=total),
        forward_sweep=_sweep(graphs, offsets, s_max, reverse=False),
        backward_sweep=_sweep(graphs, offsets, s_max, reverse=True),
        spd=spd,
        mask=mask,
    )
