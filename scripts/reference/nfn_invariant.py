"""Side-by-side harness: the NFN authors' invariant NFN (``nfn`` package + their experiment models) on an INR zoo
in the DWSNets layout.

Not part of wsl and not run by the tests: it imports ``experiments.models.InvariantNFN`` and the Hydra configs of
its SIREN-classification experiment from a clone of https://github.com/AllanYangZhou/nfn (``--repo``,
unmodified), and needs ``einops``. The model is instantiated the way ``experiments/classify_siren.py`` does it
(``hydra.utils.instantiate(cfg.nfnet, spec)`` with the spec from ``network_spec_from_wsfeat``); this file only
replaces that script's data reading (its ``SirenDataset`` wants ``{prefix}_{label}s/net{idx}.pth`` trees) and
its CUDA / wandb / step-count loop with the epoch loop wsl's side uses: AdamW, the best validation epoch tested.

    python datasets/build.py digits_inr --variants 12 --bias-init zero --dws /tmp/digits-dws
    python scripts/reference/nfn_invariant.py --repo /tmp/nfn --dws /tmp/digits-dws --nfnet inv_ff_io_mnist \
        --hchannels 64,64,64 --epochs 6 --seed 0 --out nfn_s0.json

wsl's side at the same budget: ``wsl train +experiment=gmn_digits_bench model=nfn_np model.hidden_dim=64
model.num_layers=3 seed=0`` (README, "Benchmark-convention zoo, side by side with the reference code").
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("--repo", required=True, help="clone of AllanYangZhou/nfn")
ap.add_argument("--dws", required=True, help="INR zoo in the DWSNets layout (folder of the splits JSON)")
ap.add_argument("--splits", default="mnist_splits.json")
ap.add_argument("--nfnet", default="inv_ff_io_mnist", help="config under experiments/classify_siren_configs/nfnet")
ap.add_argument("--hchannels", default=None, help="override the config's hidden channels, e.g. 64,64,64")
ap.add_argument("--epochs", type=int, default=6)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--bs", type=int, default=128)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--wd", type=float, default=5e-4)
ap.add_argument("--train-limit", type=int, default=None, help="first N training INRs only (smoke tests)")
ap.add_argument("--out", default=None)
args = ap.parse_args()

repo = Path(args.repo).resolve()
sys.path[:0] = [str(repo), str(repo / "experiments" / "perceiver-pytorch")]
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from nfn.common import (
    WeightSpaceFeatures,
    network_spec_from_wsfeat,
    state_dict_to_tensors,
)


def load_split(name: str) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    meta = json.loads((Path(args.dws) / args.splits).read_text())[name]
    ws, bs = None, None
    for p in meta["path"]:
        w, b = state_dict_to_tensors(torch.load(Path(args.dws) / p, map_location="cpu", weights_only=True))
        if ws is None:
            ws, bs = [[] for _ in w], [[] for _ in b]
        for acc, t in zip(ws + bs, w + b):
            acc.append(t)
    # [B, 1, out, in] weights and [B, 1, out] biases, as the reference's DataLoader stacks them
    return ([torch.stack(a) for a in ws], [torch.stack(a) for a in bs],
            torch.tensor([int(y) for y in meta["label"]]))


def batches(split, idx):
    ws, bs, y = split
    for s in range(0, len(idx), args.bs):
        j = idx[s: s + args.bs]
        yield WeightSpaceFeatures([w[j] for w in ws], [b[j] for b in bs]), y[j]


@torch.no_grad()
def evaluate(net, split) -> tuple[float, float]:
    net.eval()
    correct, loss, n = 0, 0.0, 0
    for x, y in batches(split, torch.arange(len(split[2]))):
        out = net(x)
        loss += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(-1) == y).sum().item()
        n += len(y)
    net.train()
    return correct / n, loss / n


t0 = time.time()
data = {s: load_split(s) for s in ("train", "val", "test")}
print(f"loaded {[len(d[2]) for d in data.values()]} INRs in {time.time() - t0:.0f} s", flush=True)
torch.manual_seed(args.seed)
with initialize_config_dir(config_dir=str(repo / "experiments" / "classify_siren_configs"), version_base=None):
    overrides = [f"nfnet={args.nfnet}"]
    if args.hchannels:
        overrides.append(f"nfnet.hchannels=[{args.hchannels}]")
    cfg = compose(config_name="main", overrides=overrides)
tr = data["train"]
if args.train_limit:
    tr = ([w[: args.train_limit] for w in tr[0]], [b[: args.train_limit] for b in tr[1]], tr[2][: args.train_limit])
spec = network_spec_from_wsfeat(WeightSpaceFeatures([w[:2] for w in tr[0]], [b[:2] for b in tr[1]]),
                                set_all_dims=True)
net = instantiate(cfg.nfnet, spec)
if net.normalize:  # the reference's own statistics (first ~5k training INRs)
    from experiments.data_utils import compute_mean_std
    loader = [((x.weights, x.biases), y) for x, y in batches(tr, torch.arange(min(5000, len(tr[2]))))]
    net.set_stats(compute_mean_std(loader))
print(f"InvariantNFN ({args.nfnet}, hchannels {list(cfg.nfnet.hchannels)}): "
      f"{sum(p.numel() for p in net.parameters()):,} parameters", flush=True)
opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.wd)
gen = torch.Generator().manual_seed(args.seed)
best, history = (-1.0, None), []
for epoch in range(1, args.epochs + 1):
    t1, total, n = time.time(), 0.0, 0
    for x, y in batches(tr, torch.randperm(len(tr[2]), generator=gen)):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        total, n = total + loss.item() * len(y), n + len(y)
    val_acc, val_loss = evaluate(net, data["val"])
    row = {"epoch": epoch, "train_loss": total / n, "val_loss": val_loss, "val_acc": val_acc,
           "seconds": time.time() - t1}
    if val_acc > best[0]:
        test_acc, test_loss = evaluate(net, data["test"])
        best = (val_acc, {**row, "test_acc": test_acc, "test_loss": test_loss})
    history.append(row)
    print(json.dumps(row), flush=True)
result = {"args": vars(args), "best": best[1], "history": history}
print(f"test accuracy at the best validation epoch ({best[1]['epoch']}): {best[1]['test_acc']:.4f}", flush=True)
if args.out:
    Path(args.out).write_text(json.dumps(result, indent=1))
