"""Side-by-side harness: the ScaleGMN authors' reference code on an INR zoo in the DWSNets layout.

Not part of wsl and not run by the tests: it imports the reference implementation from a clone of
https://github.com/jkalogero/scalegmn (``--repo``; its ``src/`` package, unmodified) and needs
``torch_geometric``, ``nfn``, ``einops`` and three packages that ``src/`` imports at module level but this task
never calls: ``random-fourier-features-pytorch`` (``rff``, imported by ``src/scalegmn/inr.py``),
``opencv-python-headless`` (``cv2``, imported by ``src/utils/image_processing.py`` through ``src.data``) and
``pandas`` (imported by ``src/data/cifar10_dataset.py`` through ``src.data``). Install them in a venv that keeps
the system torch, e.g. ``python -m venv --system-site-packages VENV && VENV/bin/pip install --no-deps
random-fourier-features-pytorch opencv-python-headless && VENV/bin/pip install pandas``. Nothing in the clone
is patched (it runs on CPU and torch 2.14 as is).

What the reference does, and this file does through the reference's own code:

* config: ``configs/mnist_cls/scalegmn_bidir.yml`` (ScaleGMN-B: bidirectional, sign symmetry for sine INRs,
  sign symmetrization rho(x) + rho(-x), positional embeddings on nodes and in the message / update functions,
  sum aggregation, dropout 0.2 between layers, SiLU + LayerNorm MLPs, readout from the input and output
  neurons), passed through ``src.utils.helpers.update_common_args`` as ``inr_classification.py`` does;
* data: ``src.data.LabeledINRDataset`` reads the DWS splits JSON and ``.pth`` files and builds each PyG graph
  (raw weights / biases, no normalization; input nodes get feature 1); batches come from
  ``torch_geometric.loader.DataLoader`` (shuffled training set), as in ``inr_classification.py``;
* phase canonicalization (the README's preprocessing step; ``switch_to_canon: True`` in the config) is applied
  in memory with the reference's ``src/phase_canonicalization/shift_params.shift_params`` to every INR of every
  split, instead of writing a ``*_canon`` copy of the zoo; the number of parameters it changes is printed (on
  the benchmark-convention digits zoo it is 0: every |bias| is far below pi/2). ``--no-canon`` skips it;
* model, loss, optimizer: ``src.scalegmn.models.ScaleGMN``, cross-entropy, ``torch.optim.AdamW``;
  ``src.utils.helpers.set_seed`` (which also turns on deterministic algorithms).

Changed from that config, to run the protocol of the other side-by-side runs (README, "Benchmark-convention
zoo, side by side with the reference code"): ``d_hid`` 128 -> ``--hidden`` (32), ``num_epochs`` 200 ->
``--epochs`` (6), ``weight_decay`` 0.001 -> ``--wd`` (5e-4), WarmupLRScheduler (1000 steps) -> none
(``--warmup N`` restores it), gradient clipping at norm 10 -> none (``--clip 10`` restores it), the
training-subset evaluation every epoch dropped (it only logs). ``num_layers`` stays 4 (``--layers``), batch 128
(``--bs``), lr 1e-3 (``--lr``), dropout 0.2 (``--dropout`` overrides). The best epoch is the first with the
highest validation accuracy (wsl's rule; the reference keeps the last of tied epochs, ``>=``). One thread.

    python scripts/reference/scalegmn_reference.py --repo /tmp/scalegmn --dws /tmp/digits-dws \
        --hidden 32 --layers 4 --epochs 6 --seed 0 --out ref_s0.json

wsl's side at the same budget: ``wsl train +experiment=gmn_digits_bench model=scalegmn model.hidden_dim=32
model.num_layers=4 seed=0``.
"""
import argparse
import io
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

ap = argparse.ArgumentParser()
ap.add_argument("--repo", required=True, help="clone of jkalogero/scalegmn")
ap.add_argument("--dws", required=True, help="INR zoo in the DWSNets layout (folder of the splits JSON)")
ap.add_argument("--splits", default="mnist_splits.json")
ap.add_argument("--conf", default="configs/mnist_cls/scalegmn_bidir.yml", help="config, relative to --repo")
ap.add_argument("--epochs", type=int, default=6)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--hidden", type=int, default=32)
ap.add_argument("--layers", type=int, default=4)
ap.add_argument("--bs", type=int, default=128)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--wd", type=float, default=5e-4)
ap.add_argument("--dropout", type=float, default=None, help="default: the config's (0.2)")
ap.add_argument("--clip", type=float, default=None, help="grad-norm clipping (reference: 10; default none)")
ap.add_argument("--warmup", type=int, default=0, help="linear LR warmup steps (reference: 1000; default none)")
ap.add_argument("--no-canon", action="store_true", help="skip the reference's phase canonicalization")
ap.add_argument("--train-limit", type=int, default=None)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--log-every", type=int, default=20, help="print running loss / time every N batches (0: never)")
ap.add_argument("--out", default=None)
args = ap.parse_args()
torch.set_num_threads(args.threads)
repo = Path(args.repo).resolve()
sys.path.insert(0, str(repo))
sys.path.insert(0, str(repo / "src" / "phase_canonicalization"))  # shift_params imports its sibling test_inr
import torch_geometric
from shift_params import shift_params
from src.data import dataset as make_dataset
from src.data.base_datasets import Batch as WBBatch
from src.scalegmn.models import ScaleGMN
from src.utils.helpers import (
    count_parameters,
    mask_hidden,
    mask_input,
    set_seed,
    update_common_args,
)
from src.utils.optim import WarmupLRScheduler

conf = yaml.safe_load((repo / args.conf).read_text())
sa = conf["scalegmn_args"]
sa["d_hid"], sa["num_layers"] = args.hidden, args.layers
if args.dropout is not None:
    sa["gnn_args"]["dropout"] = args.dropout
conf = update_common_args(conf)  # propagates d_hid and the positional-embedding flags, as overwrite_conf does
root = Path(args.dws).resolve()
conf["data"].update(dataset_path=str(root / "mnist-inrs") + "/", split_path=str(root / args.splits),
                    switch_to_canon=False)  # canonicalized in memory below
set_seed(args.seed)


def load_split(split):
    """The reference dataset for one split, every INR loaded once (and phase-canonicalized) into memory; the
    dataset's own ``__getitem__`` then builds the graphs from those in-memory state dicts."""
    ds = make_dataset(conf["data"], split=split, debug=False, direction=sa["direction"],
                      equiv_on_hidden=mask_hidden(conf), get_first_layer_mask=mask_input(conf))
    changed, blobs = 0, []
    for p in ds.dataset["path"]:
        sd = torch.load(root / p, map_location="cpu", weights_only=True)
        if not args.no_canon:
            ws = [v for k, v in sd.items() if "weight" in k]
            bs = [v for k, v in sd.items() if "bias" in k]
            # what the canonicalization script's DataLoader (batch 1, data_format "wb") hands shift_params
            new_w, new_b = shift_params(WBBatch(weights=[w[None] for w in ws], biases=[b[None] for b in bs], label=0))
            wk = [k for k in sd if "weight" in k]
            bk = [k for k in sd if "bias" in k]
            new = dict(sd)
            for k, w in zip(wk, new_w):
                new[k] = w[0].reshape(sd[k].shape)
            for k, b in zip(bk, new_b):
                new[k] = b[0].reshape(sd[k].shape)
            changed += sum(int((new[k] != sd[k]).sum()) for k in sd)
            sd = {k: new[k] for k in sd}  # keep the key order (weights / biases are read in order)
        buf = io.BytesIO()
        torch.save(sd, buf)
        blobs.append(buf.getvalue())
    ds.dataset["path"] = [io.BytesIO(b) for b in blobs]  # BaseDataset.__getitem__ torch.load()s get_path(i)
    return ds, changed


class InMemory(torch.utils.data.Dataset):
    """Index view over a reference dataset whose paths are in-memory buffers (rewound before each load)."""

    def __init__(self, ds, idx=None):
        self.ds, self.idx = ds, list(range(len(ds))) if idx is None else idx

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, i):
        j = self.idx[i]
        self.ds.dataset["path"][j].seek(0)
        return self.ds[j]


t0 = time.time()
sets, n_changed = {}, 0
for s in ("train", "val", "test"):
    ds, c = load_split(s)
    sets[s], n_changed = ds, n_changed + c
print(f"zoo loaded in {time.time() - t0:.0f}s; phase canonicalization "
      f"{'skipped' if args.no_canon else f'changed {n_changed} parameters'}", flush=True)
sa["layer_layout"] = sets["train"].get_layer_layout()
train_idx = None
if args.train_limit:
    g = torch.Generator().manual_seed(0)
    train_idx = torch.randperm(len(sets["train"]), generator=g)[: args.train_limit].tolist()
data = {"train": InMemory(sets["train"], train_idx), "val": InMemory(sets["val"]), "test": InMemory(sets["test"])}
loaders = {s: torch_geometric.loader.DataLoader(data[s], batch_size=args.bs, shuffle=s == "train")
           for s in data}

net = ScaleGMN(sa)
n_params = count_parameters(net=net)
print(f"params {n_params} train {len(data['train'])} val {len(data['val'])} test {len(data['test'])}", flush=True)
opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.wd)
sched = WarmupLRScheduler(opt, warmup_steps=args.warmup) if args.warmup else None


@torch.no_grad()
def evaluate(split):
    net.eval()
    correct = total = 0
    loss = 0.0
    for b in loaders[split]:
        out = net(b)
        loss += float(F.cross_entropy(out, b.label, reduction="sum"))
        correct += int((out.argmax(1) == b.label).sum())
        total += len(b.label)
    net.train()
    return correct / total, loss / total


best = (-1.0, 0.0, 0)
hist = []
net.train()
for ep in range(args.epochs):
    t1 = time.time()
    tot = cnt = 0
    for i, b in enumerate(loaders["train"]):
        opt.zero_grad()
        loss = F.cross_entropy(net(b), b.label)
        loss.backward()
        if args.clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), args.clip)
        opt.step()
        if sched is not None:
            sched.step()
        tot += float(loss.detach()) * len(b.label)
        cnt += len(b.label)
        if args.log_every and (i + 1) % args.log_every == 0:
            print(f"  batch {i + 1}/{len(loaders['train'])}: loss {tot / cnt:.4f} ({time.time() - t1:.0f}s)", flush=True)
    t_train = time.time() - t1
    (va, vl), (te, tl) = evaluate("val"), evaluate("test")
    if va > best[0]:
        best = (va, te, ep + 1)
    hist.append({"epoch": ep + 1, "train_loss": tot / cnt, "val": va, "val_loss": vl, "test": te, "test_loss": tl,
                 "s_train": t_train, "s": time.time() - t1})
    print(f"epoch {ep + 1}: loss {tot / cnt:.4f} val {va:.4f} test {te:.4f} "
          f"(train {t_train:.0f}s, total {time.time() - t1:.0f}s)", flush=True)
print(f"RESULT best-val epoch {best[2]}: val {best[0]:.4f} test {best[1]:.4f}; last test {hist[-1]['test']:.4f}")
if args.out:
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "params": n_params, "canon_changed": n_changed,
                                          "scalegmn_args": sa, "hist": hist, "best": best}, indent=1, default=str))
