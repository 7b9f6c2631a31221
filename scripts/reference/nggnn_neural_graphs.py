"""Side-by-side harness: the neural-graphs authors' NG-GNN (PNA) on an INR zoo in the DWSNets layout.

Not part of wsl and not run by the tests: it imports ``nn.gnn.GNNForClassification`` (with its
``nn.graph_constructor.GraphConstructor`` and ``nn.gnn.PNA``) and ``experiments.data.INRDataset`` from a clone of
https://github.com/mkofinas/neural-graphs (``--repo``, unmodified), and composes the model from that clone's own
Hydra configs for MNIST INR classification (``experiments/inr_classification/configs``: ``base`` with
``model=pna data=mnist``), then instantiates it the way ``experiments/inr_classification/main.py`` does
(``hydra.utils.instantiate(cfg.model, layer_layout=...)``). Needs ``random-fourier-features-pytorch`` (module
``rff``; pure Python, best in a venv made with ``--system-site-packages``) and torch-geometric. PyG >= 2.5 moved
``torch_geometric.utils.trim_to_layer`` to ``_trim_to_layer``; this file aliases the old name in ``sys.modules``
before the import instead of patching the clone.

One piece of glue is replaced, not the model: ``nn.gnn.to_pyg_batch`` (dense edge features -> PyG batch, one
``Data`` per INR) is swapped for a version that gathers all INRs' edges with one index. On CPU the original's
backward zero-fills a dense ``[B, N, N, d]`` gradient once per INR in the batch, about half of every training step;
logits and every parameter gradient are bit-identical (``--check-batching`` compares the two on one batch).

The reference's INRDataset reads the DWS layout unchanged (``augmentation=False``, ``normalize=False``, as its
val / test sets); every INR is read once through it and kept in memory. This file replaces main.py's CUDA / wandb
/ step-count loop with the epoch loop wsl's side uses: AdamW, no schedule, no clipping, the best validation epoch
tested.

Kept from the reference (``model/pna.yaml`` plus ``scripts/mnist_cls_pna.sh``, the paper's MNIST run): PNA with
aggregators mean / min / max / std and scalers identity / amplification, FiLM edge modulation
(``modulate_edges``), edge updates between layers (no final one), LayerNorm + SiLU between layers, node
positional embeddings (``use_pos_embed``: one learned vector per input neuron, per hidden layer, per output
neuron), random Fourier features of the values (``sin_emb``: 128 Gaussian frequencies, sigma 3), reversed-edge
features (``rev_edge_features=True``, as in mnist_cls_pna.sh: both edge directions, each with ``[w, w^T,
w + w^T]``), per-layer standardization of weights and biases by the graph constructor (``data.stats``), readout
``cat`` of the last layer's (output) nodes -> 3-layer MLP, and the degree histogram main.py derives.

Changed, and why:
  * hidden 32 (``model.d_hid``, already the config's) and 4 layers (``gnn_backbone.num_layers``, already the
    config's): the protocol's width and depth.
  * ``data.stats`` computed from this zoo's training split (per layer: mean / std over all INRs and entries, as
    ``dataset/compute_mnist_statistics.py`` prints them); the config's numbers are for the MNIST zoo.
  * dropout 0.0 (``--dropout``; mnist_cls_pna.sh uses 0.2 for 200 epochs, pna.yaml 0.0): wsl's side has none.
  * no augmentation (``--augment`` turns the reference's train-set augmentation back on): wsl's side has none.
  * AdamW without ``amsgrad`` (``--amsgrad`` turns it on), no warm-up schedule (1000 steps in base.yaml), no
    gradient clipping (max norm 10 in base.yaml), 6 epochs instead of 200-300: the protocol.
  * train order: one seeded permutation per epoch; best validation epoch by strict improvement (main.py keeps
    ties, ``>=``); test evaluated at each new best validation epoch.

About 20-25 minutes per epoch on one CPU thread at batch 128 (the graph constructor works on dense ``[B, N, N,
256]`` random-Fourier edge features), so ``--max-minutes`` stops after the epoch that crosses a time budget; the
JSON is rewritten after every epoch.

    python datasets/build.py digits_inr --variants 12 --bias-init zero --dws /tmp/digits-dws
    python -m venv --system-site-packages /tmp/ngvenv && /tmp/ngvenv/bin/pip install random-fourier-features-pytorch
    OMP_NUM_THREADS=1 /tmp/ngvenv/bin/python scripts/reference/nggnn_neural_graphs.py --repo /tmp/neural-graphs \
        --dws /tmp/digits-dws --hidden 32 --layers 4 --epochs 6 --seed 0 --out ng_s0.json

wsl's side at the same budget: ``wsl train +experiment=gmn_digits_bench model=nggnn model.hidden_dim=32
model.num_layers=4 seed=0`` (README, "Benchmark-convention zoo, side by side with the reference code").
"""
import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("--repo", required=True, help="clone of mkofinas/neural-graphs")
ap.add_argument("--dws", required=True, help="INR zoo in the DWSNets layout (folder of the splits JSON)")
ap.add_argument("--splits", default="mnist_splits.json")
ap.add_argument("--cache", default=None, help="file to keep the loaded zoo in (default: none)")
ap.add_argument("--epochs", type=int, default=6)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--hidden", type=int, default=32)
ap.add_argument("--layers", type=int, default=4)
ap.add_argument("--bs", type=int, default=128)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--wd", type=float, default=5e-4)
ap.add_argument("--dropout", type=float, default=0.0)
ap.add_argument("--no-rev-edge-features", action="store_true", help="pna.yaml's default instead of the paper run's")
ap.add_argument("--no-pos-embed", action="store_true")
ap.add_argument("--augment", action="store_true", help="the reference's training-set augmentation")
ap.add_argument("--amsgrad", action="store_true", help="the reference's optimizer setting")
ap.add_argument("--train-limit", type=int, default=None, help="a seeded random subset of N training INRs (smoke tests)")
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--max-minutes", type=float, default=None,
                help="stop after the epoch that ends past this many minutes of training (the JSON says so)")
ap.add_argument("--check-batching", action="store_true",
                help="compare this file's to_pyg_batch with nn.gnn's on one batch (outputs and gradients), then exit")
ap.add_argument("--out", default=None)
args = ap.parse_args()
torch.set_num_threads(args.threads)

repo = Path(args.repo).resolve()
sys.path.insert(0, str(repo))
import torch_geometric.utils._trim_to_layer as _trim

sys.modules.setdefault("torch_geometric.utils.trim_to_layer", _trim)  # moved in PyG 2.5
import nn.gnn as ng_gnn
from experiments.data import INRDataset
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf


class _FlatBatch:
    """What GNNForClassification.forward reads from the PyG Batch: x, edge_index, edge_attr, batch, num_graphs."""

    def __init__(self, x, edge_index, edge_attr, batch, num_graphs):
        self.x, self.edge_index, self.edge_attr, self.batch, self.num_graphs = x, edge_index, edge_attr, batch, num_graphs


def to_pyg_batch(node_features, edge_features, edge_index):
    """Same tensors as ``nn.gnn.to_pyg_batch`` (one ``Data`` per graph, ``edge_attr = edge_features[i,
    edge_index[0], edge_index[1]]``, collated), gathered with one index over the batch instead of ``B`` selects.
    On CPU the original's backward allocates and zero-fills a dense ``[B, N, N, d]`` gradient per graph (about
    half of each training step); forward values and gradients are identical (checked with ``--check-batching``)."""
    b, n = node_features.shape[:2]
    e = edge_index.shape[1]
    ea = edge_features[:, edge_index[0], edge_index[1]]  # [B, E, d]
    offs = torch.arange(b, device=edge_index.device) * n
    ei = (edge_index[:, None, :] + offs[None, :, None]).reshape(2, b * e)
    batch = torch.arange(b, device=edge_index.device).repeat_interleave(n)
    return _FlatBatch(node_features.reshape(b * n, -1), ei, ea.reshape(b * e, -1), batch, b)


original_to_pyg_batch = ng_gnn.to_pyg_batch
ng_gnn.to_pyg_batch = to_pyg_batch


def load_split(name: str, augment: bool = False):
    ds = INRDataset(dataset_dir=args.dws, splits_path=args.splits, split=name, normalize=False,
                    augmentation=augment, permutation=False, statistics_path=None)
    items = [ds[i] for i in range(len(ds))]
    # [B, in, out, 1] weights and [B, out, 1] biases, as the reference's DataLoader stacks them
    ws = [torch.stack([it.weights[k] for it in items]) for k in range(len(items[0].weights))]
    bs = [torch.stack([it.biases[k] for it in items]) for k in range(len(items[0].biases))]
    return ws, bs, torch.tensor([it.label for it in items])


t0 = time.time()
cache = Path(args.cache) if args.cache else None
if cache is not None and cache.is_file():
    data = torch.load(cache, weights_only=True)
else:
    data = {s: load_split(s) for s in ("train", "val", "test")}
    if cache is not None:
        torch.save(data, cache)
print(f"loaded {[len(d[2]) for d in data.values()]} INRs in {time.time() - t0:.0f} s", flush=True)
random.seed(args.seed)
np.random.seed(args.seed)
torch.manual_seed(args.seed)  # experiments.utils.set_seed, minus the CUDA calls
tr = data["train"]
if args.train_limit:
    keep = torch.randperm(len(tr[2]), generator=torch.Generator().manual_seed(0))[: args.train_limit]
    tr = ([w[keep] for w in tr[0]], [b[keep] for b in tr[1]], tr[2][keep])
    data["train"] = tr
aug_ds = None
if args.augment:  # items come from the reference's dataset class on every step, as in its DataLoader
    aug_ds = INRDataset(dataset_dir=args.dws, splits_path=args.splits, split="train", normalize=False,
                        augmentation=True, permutation=False, statistics_path=None)
    if args.train_limit:
        aug_ds.dataset = {k: [v[i] for i in keep.tolist()] for k, v in aug_ds.dataset.items()}

# per-layer statistics of the training split, what dataset/compute_mnist_statistics.py prints for data.stats
stats = {"weights_mean": [w.mean().item() for w in tr[0]], "weights_std": [w.std().item() for w in tr[0]],
         "biases_mean": [b.mean().item() for b in tr[1]], "biases_std": [b.std().item() for b in tr[1]]}
print("data.stats", json.dumps(stats), flush=True)

with initialize_config_dir(config_dir=str(repo / "experiments" / "inr_classification" / "configs"), version_base=None):
    cfg = compose(config_name="base", overrides=[
        "model=pna", "data=mnist", f"model.d_hid={args.hidden}", f"model.gnn_backbone.num_layers={args.layers}",
        f"model.gnn_backbone.dropout={args.dropout}", f"model.rev_edge_features={not args.no_rev_edge_features}",
        f"model.graph_constructor.use_pos_embed={not args.no_pos_embed}"])
OmegaConf.update(cfg, "data.stats", stats, merge=False)
cfg.data.num_classes = int(max(int(d[2].max()) for d in data.values()) + 1)
weight_shapes = tuple(w.shape[1:3] for w in tr[0])
layer_layout = [weight_shapes[0][0]] + [b.shape[1] for b in tr[1]]  # as main.py: [2, 32, 32, 1]
print("model config:\n" + OmegaConf.to_yaml(cfg.model), flush=True)
net = instantiate(cfg.model, layer_layout=layer_layout)
print(f"GNNForClassification (PNA), layer layout {layer_layout}: "
      f"{sum(p.numel() for p in net.parameters() if p.requires_grad):,} parameters", flush=True)


def check_batching(n: int = 32) -> None:
    x, y = next(batches(tr, torch.arange(n)))
    res = []
    for fn in (to_pyg_batch, original_to_pyg_batch):
        ng_gnn.to_pyg_batch = fn
        net.zero_grad(set_to_none=True)
        out = net(x)
        F.cross_entropy(out, y).backward()
        res.append((out.detach(), [p.grad.clone() for p in net.parameters() if p.requires_grad]))
    ng_gnn.to_pyg_batch = to_pyg_batch
    net.zero_grad(set_to_none=True)
    d_out = (res[0][0] - res[1][0]).abs().max().item()
    d_grad = max((a - b).abs().max().item() for a, b in zip(res[0][1], res[1][1]))
    print(f"to_pyg_batch vs nn.gnn.to_pyg_batch on {n} INRs: max |d logits| {d_out:.3g}, max |d grad| {d_grad:.3g}")


def batches(split, idx):
    ws, bs, y = split
    for s in range(0, len(idx), args.bs):
        j = idx[s: s + args.bs]
        if aug_ds is not None and split is tr:
            items = [aug_ds[int(i)] for i in j]
            yield ((tuple(torch.stack([it.weights[k] for it in items]) for k in range(len(ws))),
                    tuple(torch.stack([it.biases[k] for it in items]) for k in range(len(bs)))),
                   torch.tensor([it.label for it in items]))
        else:
            yield (tuple(w[j] for w in ws), tuple(b[j] for b in bs)), y[j]


@torch.no_grad()
def evaluate(split) -> tuple[float, float]:
    net.eval()
    correct, loss, n = 0, 0.0, 0
    for x, y in batches(split, torch.arange(len(split[2]))):
        out = net(x)
        loss += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(-1) == y).sum().item()
        n += len(y)
    net.train()
    return correct / n, loss / n


if args.check_batching:
    check_batching()
    sys.exit(0)
opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=args.lr, weight_decay=args.wd,
                        amsgrad=args.amsgrad)
gen = torch.Generator().manual_seed(args.seed)
best, history = (-1.0, None), []
t_start = time.time()


def write(stopped: bool) -> None:
    if args.out:
        result = {"args": vars(args), "stats": stats, "model_config": OmegaConf.to_container(cfg.model),
                  "best": best[1], "history": history, "epochs_run": len(history),
                  "stopped_by_max_minutes": stopped}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


net.train()
for epoch in range(1, args.epochs + 1):
    t1, total, n = time.time(), 0.0, 0
    for x, y in batches(tr, torch.randperm(len(tr[2]), generator=gen)):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        total, n = total + loss.item() * len(y), n + len(y)
    train_s = time.time() - t1
    val_acc, val_loss = evaluate(data["val"])
    row = {"epoch": epoch, "train_loss": total / n, "val_loss": val_loss, "val_acc": val_acc,
           "train_seconds": train_s, "seconds": time.time() - t1}
    if val_acc > best[0]:
        test_acc, test_loss = evaluate(data["test"])
        best = (val_acc, {**row, "test_acc": test_acc, "test_loss": test_loss})
    history.append(row)
    print(json.dumps(row), flush=True)
    stop = args.max_minutes is not None and epoch < args.epochs and time.time() - t_start > 60 * args.max_minutes
    write(stop)
    if stop:
        print(f"stopped after epoch {epoch} of {args.epochs} (--max-minutes {args.max_minutes})", flush=True)
        break
print(f"test accuracy at the best validation epoch ({best[1]['epoch']}): {best[1]['test_acc']:.4f}", flush=True)
