"""Drawing a small network's parameter graph (matplotlib, optional dependency ``wsl[plot]``)."""

from __future__ import annotations

import os

import torch
from torch import nn

from .builder import NODE_TYPES
from .paramgraph import ParamGraph

MAX_NODES, MAX_EDGES = 3000, 60000


def demo_network() -> nn.Module:
    """A small CNN with a residual block, BatchNorm and a classifier: readable when drawn."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(6, 6, 3, padding=1)
            self.bn = nn.BatchNorm2d(6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.relu(self.bn(self.conv(x)))

    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), Block(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))


def plot_graph(graph: ParamGraph, path: str | os.PathLike[str], *, title: str | None = None) -> None:
    """Draw ``graph`` to a PNG: neurons in columns by depth, edges coloured by weight sign and magnitude.

    A network above ``MAX_NODES`` neurons or ``MAX_EDGES`` weights is drawn as a summary instead: one marker
    per neuron set (a layer's outputs, a norm, a residual sum, ...; area by its size), one line per pair of
    connected sets (width by the number of weights, shade by their mean magnitude)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.collections import LineCollection
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'wsl[plot]'") from e
    n, e = graph.num_nodes, graph.edge_index.shape[1]
    if n > MAX_NODES or e > MAX_EDGES:
        _plot_summary(graph, path, title, plt, LineCollection)
        return
    layer = graph.node_layer.float()
    y = _spread(graph.node_layer)
    src, dst = graph.edge_index
    # collapse the kernel elements of a channel pair into one drawn line (mean weight)
    key = src * n + dst
    uniq, inv = torch.unique(key, return_inverse=True)
    w = torch.zeros(uniq.numel()).index_add_(0, inv, graph.edge_attr[:, 0].float())
    cnt = torch.zeros(uniq.numel()).index_add_(0, inv, torch.ones(e))
    w = w / cnt
    s, d = uniq // n, uniq % n
    segs = torch.stack([torch.stack([layer[s], y[s]], 1), torch.stack([layer[d], y[d]], 1)], 1).numpy()
    mag = (w.abs() / (w.abs().max() + 1e-12)).numpy()
    colors = [(0.8, 0.1, 0.1, 0.15 + 0.7 * m) if v > 0 else (0.1, 0.2, 0.8, 0.15 + 0.7 * m) for v, m in zip(w.tolist(), mag)]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * float(layer.max() + 1)), 6))
    ax.add_collection(LineCollection(segs, colors=colors, linewidths=0.6))
    cmap = plt.get_cmap("tab10")
    for t in torch.unique(graph.node_type).tolist():
        m = graph.node_type == t
        ax.scatter(layer[m].numpy(), y[m].numpy(), s=14, color=cmap(t % 10), label=NODE_TYPES[t], zorder=3)
    _finish(fig, ax, title or f"{graph.spec.arch}: {n} neurons, {e} weights (red > 0, blue < 0)", path, 130, plt)



def _plot_summary(graph: ParamGraph, path, title, plt, LineCollection) -> None:
    sets = graph.spec.sets
    starts = torch.tensor([s.start for s in sets])
    sizes = torch.tensor([s.size for s in sets], dtype=torch.float32)
    depth = graph.node_layer[starts].float()
    y = _spread(depth)
    src, dst = graph.edge_index
    a = torch.searchsorted(starts, src, right=True) - 1  # the set each edge leaves / enters
    b = torch.searchsorted(starts, dst, right=True) - 1
    k = len(sets)
    uniq, inv = torch.unique(a * k + b, return_inverse=True)
    count = torch.zeros(uniq.numel()).index_add_(0, inv, torch.ones(inv.numel()))
    mag = torch.zeros(uniq.numel()).index_add_(0, inv, graph.edge_attr[:, 0].float().abs()) / count
    sa, sb = uniq // k, uniq % k
    segs = torch.stack([torch.stack([depth[sa], y[sa]], 1), torch.stack([depth[sb], y[sb]], 1)], 1).numpy()
    shade = (mag / (mag.max() + 1e-12)).tolist()
    width = (0.3 + torch.log10(count)).tolist()
    fig, ax = plt.subplots(figsize=(min(40, max(8, 0.25 * float(depth.max() + 1))), 6))
    ax.add_collection(LineCollection(segs, colors=[(0.2, 0.2, 0.2, 0.2 + 0.7 * m) for m in shade], linewidths=width))
    cmap = plt.get_cmap("tab10")
    kinds = [NODE_TYPES.index(s.kind) if s.kind in NODE_TYPES else 0 for s in sets]
    for t in sorted(set(kinds)):
        m = torch.tensor([kk == t for kk in kinds])
        ax.scatter(depth[m].numpy(), y[m].numpy(), s=(6 * torch.log2(sizes[m] + 1)).numpy(), color=cmap(t % 10),
                   label=NODE_TYPES[t], zorder=3)
    _finish(fig, ax, title or f"{graph.spec.arch}: summary of {graph.num_nodes:,} neurons in {k:,} sets, "
                             f"{graph.edge_index.shape[1]:,} weights", path, 110, plt)


def _spread(depth: torch.Tensor) -> torch.Tensor:
    """Vertical positions: the items of each depth spread evenly over [-1, 1]."""
    y = torch.zeros(depth.numel())
    for lay in torch.unique(depth).tolist():
        idx = torch.nonzero(depth == lay).flatten()
        y[idx] = torch.linspace(-1, 1, idx.numel()) if idx.numel() > 1 else torch.zeros(1)
    return y


def _finish(fig, ax, title: str, path, dpi: int, plt) -> None:
    ax.set_xlabel("depth (node_layer)")
    ax.set_yticks([])
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=7, frameon=False)
    ax.autoscale()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
