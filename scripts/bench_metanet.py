"""Metanetwork training throughput on INR-shaped parameter graphs, next to a plain PyG reference.

Setup (issue #4): a batch of 128 SIREN 2-32-32-1 parameter graphs (67 nodes, 1,120 edges each), width 32,
4 layers, 10-way classification, one Adam training step = forward + cross-entropy + backward + update.

* ``reference``: a straightforward edge-MPNN written with ``torch_geometric.nn.MessagePassing`` here in
  the script (``message`` = MLP([x_i, x_j, e]) giving the new edge state, sum aggregation, node MLP on
  ``[x, aggregate]``, mean-pool readout): the way one would write GMN's reference model in PyG.
* ``GMN``, ``NGGNN``, ``RelationalTransformer``, ``ScaleGMN`` from :mod:`wsl.nn`, and the ``NFN-NP`` /
  ``StatNN`` baselines, all at the same width and depth.

Rounds alternate between models so machine noise hits all of them alike; each figure is the median over
rounds. Prints INRs/s, the speed relative to the reference (target: GMN >= 2x), each model's step time as a
multiple of GMN's (issue #13 target: NG-GNN, the relational transformer and ScaleGMN at <= 2x; ``*`` marks a
model above it), and memory per graph: on CUDA the peak allocated memory of a step, on CPU the bytes autograd
saves for backward (the activation memory that dominates a step's peak).

``--work`` adds what a step costs independently of the machine: counted op by op (a ``TorchDispatchMode``
over one training step), the floating-point operations of matrix products with an edge-sized dimension
(``edge GFLOP``) and the number of other edge-sized tensor operations (``edge ops``: gathers, scatters,
elementwise passes, reductions over ``[E, ...]`` tensors), each also as a multiple of GMN's. Edges outnumber
nodes 17:1 here, so these two numbers are what a step's time follows.

Usage: python scripts/bench_metanet.py [--device cpu|cuda] [--batch-size 128] [--steps 5] [--rounds 5]
       [--models reference GMN NGGNN RelationalTransformer ScaleGMN NFN-NP StatNN] [--threads N] [--work]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch_geometric.data import Batch
from torch_geometric.nn import MessagePassing, global_mean_pool

import wsl
from wsl.nn import GMN, NGGNN, RelationalTransformer, ScaleGMN
from wsl.nn import scatter as scatter_mod  # the dispatch module


class Sine(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(30.0 * x)


def siren() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 32), Sine(), nn.Linear(32, 32), Sine(), nn.Linear(32, 1))


def inr_batch(n: int, seed: int = 0) -> tuple[Batch, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    base = wsl.to_graph(siren())
    graphs = []
    for _ in range(n):
        g = base.clone_structure()
        g.edge_attr = torch.randn(base.edge_attr.shape, generator=gen) * 0.2
        g.x = base.x.clone()
        g.x[:, 0] = torch.randn(base.num_nodes, generator=gen) * 0.1 * (base.io != 1)
        graphs.append(g)
    return Batch.from_data_list(graphs), torch.randint(0, 10, (n,), generator=gen)


# ------------------------------------------------------------------------------------------- reference
class RefLayer(MessagePassing):
    def __init__(self, d: int) -> None:
        super().__init__(aggr="add")
        self.edge_mlp = nn.Sequential(nn.Linear(3 * d, d), nn.ReLU(), nn.Linear(d, d))
        self.node_mlp = nn.Sequential(nn.Linear(2 * d, d), nn.ReLU(), nn.Linear(d, d))

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> tuple[Tensor, Tensor]:
        self._new_edges = None
        aggr = self.propagate(edge_index, x=x, edge_attr=edge_attr)
        x = x + self.node_mlp(torch.cat([x, aggr], dim=-1))
        return x, edge_attr + self._new_edges

    def message(self, x_i: Tensor, x_j: Tensor, edge_attr: Tensor) -> Tensor:
        m = self.edge_mlp(torch.cat([x_i, x_j, edge_attr], dim=-1))
        self._new_edges = m
        return m


class RefEdgeMPNN(nn.Module):
    def __init__(self, out_dim: int, d: int, layers: int) -> None:
        super().__init__()
        self.node_enc = nn.Sequential(nn.Linear(3, d), nn.ReLU(), nn.Linear(d, d))
        self.edge_enc = nn.Sequential(nn.Linear(1, d), nn.ReLU(), nn.Linear(d, d))
        self.layers = nn.ModuleList([RefLayer(d) for _ in range(layers)])
        self.head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, out_dim))

    def forward(self, batch: Batch) -> Tensor:
        x, e = self.node_enc(batch.x), self.edge_enc(batch.edge_attr)
        for layer in self.layers:
            x, e = layer(x, batch.edge_index, e)
        return self.head(global_mean_pool(x, batch.batch))


# ------------------------------------------------------------------------------------------- harness
TARGET_2X = ("NGGNN", "RelationalTransformer", "ScaleGMN")  # issue #13: <= 2x GMN's step time


def build(name: str, d: int, layers: int, batch: Batch) -> nn.Module:
    if name == "reference":
        return RefEdgeMPNN(10, d, layers)
    if name in ("NFN-NP", "StatNN"):
        from wsl.nn.baselines import NFN, StatNN

        return NFN(batch.get_example(0).spec, out_dim=10, hidden_dim=d, num_layers=layers, mode="NP") \
            if name == "NFN-NP" else StatNN(out_dim=10, hidden_dim=d * 4, num_layers=layers)
    cls = {"GMN": GMN, "NGGNN": NGGNN, "RelationalTransformer": RelationalTransformer, "ScaleGMN": ScaleGMN}[name]
    return cls(out_dim=10, hidden_dim=d, num_layers=layers)


def step_fn(model: nn.Module, batch: Batch, labels: Tensor):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(batch), labels)
        loss.backward()
        opt.step()

    return step


def saved_bytes(model: nn.Module, batch: Batch, labels: Tensor) -> int:
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(batch), labels)
    loss.backward()
    return total


MATMULS = frozenset({"mm", "addmm", "addmm_", "bmm", "baddbmm"})
FREE = frozenset({"view", "t", "expand", "detach", "slice", "split", "split_with_sizes", "select", "alias",
                  "unsqueeze", "squeeze", "transpose", "permute", "_unsafe_view", "as_strided", "unbind", "reshape"})


class EdgeWork(TorchDispatchMode):
    """Counts, per op of a step, matrix products touching a dimension of size ``num_edges`` (their FLOPs)
    and every other op with an input or output of ``num_edges`` rows; views and metadata ops are free."""

    def __init__(self, num_edges: int) -> None:
        super().__init__()
        self.num_edges, self.flops, self.ops = num_edges, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in FREE:
            return out
        tensors = [a for a in args if isinstance(a, Tensor)] + ([out] if isinstance(out, Tensor) else [])
        if not any(self.num_edges in t.shape for t in tensors):
            return out
        if name in MATMULS:
            a, b = (args[-2], args[-1]) if name.startswith(("add", "badd")) else args[:2]
            self.flops += 2 * a.numel() * b.shape[-1]
        else:
            self.ops += 1
        return out


def edge_work(model: nn.Module, batch: Batch, labels: Tensor) -> tuple[float, int]:
    """(GFLOP of edge-sized matrix products, number of other edge-sized ops) of one training step."""
    step = step_fn(model, batch, labels)
    with EdgeWork(int(batch.edge_index.shape[1])) as w:
        step()
    return w.flops / 1e9, w.ops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--hidden-dim", type=int, default=32)
    ap.add_argument("--num-layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    ap.add_argument("--work", action="store_true", help="also count edge-sized matmul FLOPs and ops per step")
    ap.add_argument("--models", nargs="+", default=["reference", "GMN", "NGGNN", "RelationalTransformer",
                                                    "ScaleGMN", "NFN-NP", "StatNN"])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    batch, labels = inr_batch(args.batch_size)
    batch, labels = batch.to(dev), labels.to(dev)
    g0 = batch.get_example(0)
    print(f"device={dev} threads={torch.get_num_threads()} scatter={scatter_mod.get_backend()} "
          f"batch={args.batch_size} graphs x ({g0.num_nodes} nodes, {g0.edge_attr.shape[0]} edges) "
          f"width={args.hidden_dim} layers={args.num_layers}")
    torch.manual_seed(0)
    models = {n: build(n, args.hidden_dim, args.num_layers, batch).to(dev) for n in args.models}
    steps = {n: step_fn(m, batch, labels) for n, m in models.items()}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for s in steps.values():  # warm-up (lazy modules, allocator, kernels)
        s()
        s()
    sync()
    times: dict[str, list[float]] = {n: [] for n in models}
    for _ in range(args.rounds):
        for n, s in steps.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                s()
            sync()
            times[n].append((time.perf_counter() - t0) / args.steps)
    ref = statistics.median(times["reference"]) if "reference" in times else None
    gmn = statistics.median(times["GMN"]) if "GMN" in times else None
    print(f"{'model':24s} {'params':>9s} {'step ms':>9s} {'INRs/s':>9s} {'vs ref':>7s} {'GMN x':>7s} {'mem/graph':>10s}")
    for n, m in models.items():
        t = statistics.median(times[n])
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            steps[n]()
            sync()
            mem = (torch.cuda.max_memory_allocated() - base) / args.batch_size
            label = "peak"
        else:
            mem = saved_bytes(m, batch, labels) / args.batch_size
            label = "saved"
        nparams = sum(p.numel() for p in m.parameters())
        ratio = f"{ref / t:6.2f}x" if ref else "   -"
        slower = "   -" if gmn is None else f"{t / gmn:5.2f}{'*' if n in TARGET_2X and t > 2 * gmn else ' '}"
        print(f"{n:24s} {nparams:9d} {t * 1e3:9.1f} {args.batch_size / t:9.0f} {ratio:>7s} {slower:>7s} "
              f"{mem / 1024:7.1f} KiB ({label})")
    if gmn is not None and any(n in TARGET_2X for n in models):
        print(f"GMN x: step time / GMN's step time; target <= 2.00 for {', '.join(TARGET_2X)} (* = above)")
    if args.work:
        work = {n: edge_work(m, batch, labels) for n, m in models.items()}
        g = work.get("GMN")
        print(f"\n{'model':24s} {'edge GFLOP':>10s} {'GMN x':>6s} {'edge ops':>9s} {'GMN x':>6s}   (one step, counted)")
        for n, (fl, ops) in work.items():
            rf = f"{fl / g[0]:6.2f}" if g and g[0] else "     -"
            ro = f"{ops / g[1]:6.2f}" if g and g[1] else "     -"
            print(f"{n:24s} {fl:10.2f} {rf} {ops:9d} {ro}")


if __name__ == "__main__":
    main()
