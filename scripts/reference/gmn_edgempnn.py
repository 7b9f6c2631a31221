"""Side-by-side harness: the GMN authors' reference code on an INR zoo in the DWSNets layout.

Not part of wsl and not run by the tests: it imports the reference implementation from a clone of
https://github.com/cptq/graph_metanetworks (``--repo``; its ``gmn/`` package, unmodified) and needs
``torch_scatter``. That repository has no training script, so this file does only the glue: read the DWS splits
JSON, build each INR's parameter graph with ``gmn.graph_construct.arch_to_graph``, standardize the weight column
per (layer, edge type) with training-split statistics, and train the reference's NodeEdgeFeatEncoder ->
EdgeMPNN (BatchNorm, mean aggregation) -> mean pool + MLP head with AdamW, testing the best validation epoch.

    python datasets/build.py digits_inr --variants 12 --bias-init zero --dws /tmp/digits-dws
    python scripts/reference/gmn_edgempnn.py --repo /tmp/graph_metanetworks --dws /tmp/digits-dws \
        --hidden 32 --layers 4 --epochs 6 --seed 0 --out ref_s0.json

wsl's side at the same budget: ``wsl train +experiment=gmn_digits_bench seed=0`` (README, "Benchmark-convention
zoo, side by side with the reference code").
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ap = argparse.ArgumentParser()
ap.add_argument("--repo", required=True, help="clone of cptq/graph_metanetworks")
ap.add_argument("--dws", required=True, help="INR zoo in the DWSNets layout (folder of the splits JSON)")
ap.add_argument("--cache", default=None, help="graph cache file (default: none)")
ap.add_argument("--splits", default="mnist_splits.json")
ap.add_argument("--epochs", type=int, default=15)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--hidden", type=int, default=64)
ap.add_argument("--layers", type=int, default=4)
ap.add_argument("--bs", type=int, default=128)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--wd", type=float, default=5e-4)
ap.add_argument("--train-limit", type=int, default=None)
ap.add_argument("--readout", default="mean_mlp", choices=["mean_mlp", "ds_node_edge"])
ap.add_argument("--undirected", action="store_true")
ap.add_argument("--out", default=None)
args = ap.parse_args()
sys.path.insert(0, args.repo)
from gmn.feature_extractor_gmn import NodeEdgeFeatEncoder
from gmn.graph_construct.model_arch_graph import arch_to_graph
from gmn.graph_models import EdgeMPNN
from gmn.graph_pooling import DSNodeEdgeReadout
from torch_geometric.data import Batch, Data
from torch_scatter import scatter

torch.manual_seed(args.seed)
root = Path(args.dws)
table = json.loads((root / args.splits).read_text())
cache = Path(args.cache) if args.cache else None

def load_split(s):
    xs, eis, ys = [], [], []
    ea_all = []
    for p, y in zip(table[s]["path"], table[s]["label"]):
        sd = torch.load(root / p, weights_only=True)
        ws = [v for k, v in sd.items() if k.endswith("weight")]
        bs = [v for k, v in sd.items() if k.endswith("bias")]
        arch = [[nn.Linear, w, b] for w, b in zip(ws, bs)]
        x, ei, ea = arch_to_graph(arch)
        ea_all.append(ea); ys.append(int(y))
        if not xs:
            xs.append(x); eis.append(ei)
    return xs[0], eis[0], torch.stack(ea_all), torch.tensor(ys)

t0 = time.time()
if cache is not None and cache.is_file():
    data = torch.load(cache, weights_only=True)
else:
    data = {s: load_split(s) for s in ("train", "val", "test")}
    if cache is not None:
        torch.save(data, cache)
print(f"graphs ready in {time.time()-t0:.0f}s", flush=True)
x, ei, _, _ = data["train"]
for s in data:  # same architecture everywhere
    assert torch.equal(data[s][1], ei)
tr_ea = data["train"][2]
if args.train_limit:
    g = torch.Generator().manual_seed(0)
    keep = torch.randperm(len(tr_ea), generator=g)[: args.train_limit]
    data["train"] = (x, ei, tr_ea[keep], data["train"][3][keep])
    tr_ea = data["train"][2]
# per-(layer, edge type) standardization of the weight column, statistics from the training split
key = tr_ea[0, :, 1] * 100 + tr_ea[0, :, 2]
mean = torch.zeros(tr_ea.shape[1]); std = torch.ones(tr_ea.shape[1])
for k in key.unique():
    m = key == k
    v = tr_ea[:, m, 0]
    mean[m], std[m] = v.mean(), v.std()
def norm(ea):
    ea = ea.clone(); ea[..., 0] = (ea[..., 0] - mean) / std; return ea

class Ref(nn.Module):
    def __init__(self, h, L, out):
        super().__init__()
        self.enc = NodeEdgeFeatEncoder(h)
        self.gnn = EdgeMPNN(h, h, h, h, h, L, use_bn=True, reduce="mean")
        if args.readout == "ds_node_edge":
            self.readout = DSNodeEdgeReadout(h, h, out)
        else:
            self.head = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, out))
    def forward(self, b):
        xx, ea = self.enc(b.x.float(), b.edge_attr)
        ei_ = b.edge_index
        if args.undirected:
            ei_ = torch.cat([ei_, ei_.flip(0)], 1); ea = torch.cat([ea, ea], 0)
        xx, ea = self.gnn(xx, ei_, ea)
        if args.readout == "ds_node_edge":
            return self.readout(xx, ei_, ea, b.batch)
        return self.head(scatter(xx, b.batch, dim=0, reduce="mean"))

def batches(split, order):
    _, _, ea, ys = data[split]
    for i in range(0, len(order), args.bs):
        idx = order[i:i + args.bs]
        yield Batch.from_data_list([Data(x=x, edge_index=ei, edge_attr=norm(ea[j])) for j in idx]), ys[idx]

model = Ref(args.hidden, args.layers, 10)
print("params", sum(p.numel() for p in model.parameters()), "train", len(data["train"][3]), flush=True)
opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd)
@torch.no_grad()
def evaluate(split):
    model.eval(); correct = 0; n = len(data[split][3])
    for b, y in batches(split, torch.arange(n)):
        correct += int((model(b).argmax(-1) == y).sum())
    model.train(); return correct / n
best = (-1, 0, 0)
hist = []
for ep in range(args.epochs):
    t1 = time.time(); tot = 0; cnt = 0
    order = torch.randperm(len(data["train"][3]), generator=torch.Generator().manual_seed(args.seed * 1000 + ep))
    for b, y in batches("train", order):
        loss = F.cross_entropy(model(b), y)
        opt.zero_grad(); loss.backward(); opt.step()
        tot += float(loss) * len(y); cnt += len(y)
    va = evaluate("val"); te = evaluate("test")
    if va > best[0]: best = (va, te, ep + 1)
    hist.append({"epoch": ep + 1, "train_loss": tot / cnt, "val": va, "test": te, "s": time.time() - t1})
    print(f"epoch {ep+1}: loss {tot/cnt:.4f} val {va:.4f} test {te:.4f} ({time.time()-t1:.0f}s)", flush=True)
print(f"RESULT best-val epoch {best[2]}: val {best[0]:.4f} test {best[1]:.4f}; last test {hist[-1]['test']:.4f}")
if args.out:
    Path(args.out).write_text(json.dumps({"args": vars(args), "hist": hist, "best": best}))
