"""Side-by-side harness: the DWSNets authors' reference code on an INR zoo in the DWSNets layout.

Not part of wsl and not run by the tests: it imports the reference implementation from a clone of
https://github.com/AvivNavon/DWSNets (``--repo``; its ``experiments/`` and ``nn/`` packages, unmodified; nothing
to install beyond torch, numpy and scikit-learn). Nothing in the clone is patched.

What the reference's ``experiments/mnist/trainer.py`` does, and this file does through the reference's own code:

* statistics: ``experiments/mnist/compute_statistics.compute_stats`` on the training split (per-entry mean and
  std of every weight and bias over one shuffled batch of 10,000 training INRs), written to a temporary
  ``statistics.pth`` and read back by ``experiments.data.INRDataset(normalize=True)``;
* data: ``experiments.data.INRDataset`` for each split (weights transposed to ``[in, out, 1]``, biases
  ``[out, 1]``, normalized), collated by the default ``DataLoader`` collate into its ``Batch``; every item is
  built once and kept in memory (no augmentation, so each epoch would rebuild the same tensors);
* model: ``nn.models.DWSModelForClassification`` with the trainer's defaults: hidden 32, ``n_hidden`` 4,
  max reduction, one linear layer per block, SAB set layers (8 heads), one output layer, batch norm, no
  dropout, not diagonal; loss cross-entropy; the trainer's ``set_seed``.

Changed from the trainer's defaults, to run the protocol of the other side-by-side runs (README,
"Benchmark-convention zoo, side by side with the reference code"): lr 5e-3 -> ``--lr`` (1e-3), batch 512 ->
``--bs`` (128), 100 epochs -> ``--epochs`` (6), AdamW with AMSGrad -> plain AdamW (``--amsgrad`` restores
it; weight decay 5e-4 either way), augmentation on -> off (wsl's side runs without it too). The best epoch
is the first with the highest validation accuracy (wsl's rule; the trainer keeps the last of tied epochs,
``>=``). One thread.

    python scripts/reference/dwsnet_reference.py --repo /tmp/DWSNets --dws /tmp/digits-dws --epochs 6 \
        --seed 0 --out dws_ref_s0.json

wsl's side at the same budget: ``wsl train +experiment=gmn_digits_bench model=dwsnet model.num_layers=5
seed=0`` (``num_layers`` 5 = the reference's first layer + ``n_hidden`` 4).
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("--repo", required=True, help="clone of AvivNavon/DWSNets")
ap.add_argument("--dws", required=True, help="INR zoo in the DWSNets layout (folder of the splits JSON)")
ap.add_argument("--splits", default="mnist_splits.json")
ap.add_argument("--epochs", type=int, default=6)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--hidden", type=int, default=32, help="--dim-hidden")
ap.add_argument("--n-hidden", type=int, default=4)
ap.add_argument("--bs", type=int, default=128)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--wd", type=float, default=5e-4)
ap.add_argument("--amsgrad", action="store_true", help="the trainer's AdamW(amsgrad=True)")
ap.add_argument("--train-limit", type=int, default=None)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--log-every", type=int, default=20, help="print running loss / time every N batches (0: never)")
ap.add_argument("--out", default=None)
args = ap.parse_args()
torch.set_num_threads(args.threads)
out_path = Path(args.out).resolve() if args.out else None
repo = Path(args.repo).resolve()
sys.path.insert(0, str(repo))
sys.path.insert(0, str(repo / "experiments" / "mnist"))
from compute_statistics import compute_stats  # noqa: E402
from experiments.data import INRDataset  # noqa: E402
from experiments.utils import count_parameters, set_seed  # noqa: E402
from nn.models import DWSModelForClassification  # noqa: E402

os.chdir(Path(args.dws).resolve())  # the splits JSON holds paths relative to the zoo folder
set_seed(args.seed)
t0 = time.time()
stats_dir = tempfile.mkdtemp(prefix="dws-stats-")
compute_stats(data_path=args.splits, save_path=stats_dir)
stats = os.path.join(stats_dir, "statistics.pth")


def load_split(split):
    ds = INRDataset(path=args.splits, split=split, normalize=True, augmentation=False, statistics_path=stats)
    return [ds[i] for i in range(len(ds))]


sets = {s: load_split(s) for s in ("train", "val", "test")}
if args.train_limit:
    g = torch.Generator().manual_seed(0)
    sets["train"] = [sets["train"][i] for i in torch.randperm(len(sets["train"]), generator=g)[: args.train_limit]]
print(f"zoo loaded in {time.time() - t0:.0f}s", flush=True)
loaders = {s: torch.utils.data.DataLoader(sets[s], batch_size=args.bs, shuffle=s == "train") for s in sets}
point = sets["train"][0]
net = DWSModelForClassification(
    weight_shapes=tuple(w.shape[:2] for w in point.weights), bias_shapes=tuple(b.shape[:1] for b in point.biases),
    input_features=1, hidden_dim=args.hidden, n_hidden=args.n_hidden, reduction="max", n_fc_layers=1,
    set_layer="sab", n_out_fc=1, dropout_rate=0.0, bn=True, diagonal=False)
n_params = count_parameters(net)
print(f"params {n_params} train {len(sets['train'])} val {len(sets['val'])} test {len(sets['test'])}", flush=True)
opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.wd, amsgrad=args.amsgrad)


@torch.no_grad()
def evaluate(split):
    net.eval()
    correct = total = 0
    loss = 0.0
    for b in loaders[split]:
        out = net((b.weights, b.biases))
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
        loss = F.cross_entropy(net((b.weights, b.biases)), b.label)
        loss.backward()
        opt.step()
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
if out_path:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({"args": vars(args), "params": n_params, "hist": hist, "best": best}, indent=1,
                                   default=str))
