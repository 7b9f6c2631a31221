"""Learned (meta) pruning against plain group-L2 pruning on held-out networks of the digits-CNN zoo.

A :class:`wsl.prune.MetaPruner` (GMN) is meta-trained on the *train* runs of the digits-CNN zoo (every
checkpoint) with :func:`wsl.prune.meta_train`; then every held-out network — the last checkpoint of each
*val* and *test* run whose test accuracy is at least ``--min-acc`` — is pruned to each ``--speedups`` MACs ratio
twice, as it is (plain group-L2) and rewritten by the pruner first (learned), fine-tuned ``--finetune-steps``
Adam steps on identical minibatches, and scored on the zoo's held-out images (:func:`wsl.prune.compare`).
Printed per speed-up: mean accuracy (original, right after pruning, after fine-tuning) of both arms and the
fraction of networks where learned beats plain after fine-tuning (issue #15's target: >= 70 % at 2x).

Full benchmark (builds the default 256-run zoo first if it is not cached, about 3 min; not run on the
development machine, so no figure is quoted here)::

    python scripts/bench_prune.py --steps 2000 --speedups 2,3 --out outputs/bench_prune.json

Quick check that it runs (a 20-run zoo of 2-epoch networks, 6 training / 4 held-out networks, a few steps)::

    python scripts/bench_prune.py --runs 20 --zoo-epochs 2 --train-nets 6 --held-out 4 --min-acc 0 \\
        --steps 5 --finetune-steps 5 --hidden 8 --layers 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from wsl.data.zoos import digits_cnn
from wsl.graph import from_graph
from wsl.prune import MetaPruner, NetworkIndex, compare, meta_train, summarize
from wsl.train.tasks import Pruning


def last_checkpoints(ds, min_acc: float) -> list[int]:
    """Items of ``ds`` that are the last checkpoint of their run and reach ``min_acc`` test accuracy."""
    last: dict[int, tuple[int, int]] = {}
    for i in range(len(ds)):
        j = int(ds.indices[i])
        run, epoch = int(ds.meta["run"][j]), int(ds.meta["epoch"][j])
        if run not in last or epoch > last[run][0]:
            last[run] = (epoch, i)
    return sorted(i for _, i in last.values()
                  if float(ds.meta["test_accuracy"][int(ds.indices[i])]) >= min_acc)


def module_of(ds, i: int) -> torch.nn.Module:
    j = int(ds.indices[i])
    return from_graph(ds.graph(i), ds.architecture(int(ds.meta["arch"][j]))).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=256, help="runs of the digits-CNN zoo (default: the full zoo)")
    ap.add_argument("--zoo-epochs", default=None, help="override the zoo's epoch choices, e.g. 2 (tiny checks)")
    ap.add_argument("--root", default=None, help="zoo directory (default: the cache)")
    ap.add_argument("--train-nets", type=int, default=None, help="at most this many training networks")
    ap.add_argument("--held-out", type=int, default=None, help="at most this many held-out networks")
    ap.add_argument("--min-acc", type=float, default=0.5, help="held-out networks need this test accuracy")
    ap.add_argument("--steps", type=int, default=2000, help="meta-training steps")
    ap.add_argument("--batch", type=int, default=16, help="networks per meta-training step")
    ap.add_argument("--data-batch", type=int, default=128, help="training images per step")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--lam", type=float, default=0.5, help="group-lasso weight (relative)")
    ap.add_argument("--alpha", type=float, default=1.0, help="DepGraph channel weighting (1: plain group lasso)")
    ap.add_argument("--pruned-weight", type=float, default=1.0, help="weight of the after-pruning task loss")
    ap.add_argument("--train-speedup", type=float, default=2.0, help="speed-up of the after-pruning term")
    ap.add_argument("--speedups", default="2,3", help="comma-separated MACs ratios to evaluate")
    ap.add_argument("--finetune-steps", type=int, default=50)
    ap.add_argument("--finetune-lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", default=None, help="write the trained pruner here (.safetensors)")
    ap.add_argument("--out", default=None, help="write rows and summaries here (.json)")
    a = ap.parse_args()

    torch.manual_seed(a.seed)
    extra = {"epochs": int(a.zoo_epochs)} if a.zoo_epochs else {}
    data = digits_cnn(runs=a.runs, root=a.root, normalize=False, progress=True, **extra)
    train, held = data["train"], [data["val"], data["test"]]
    x_tr, y_tr, x_te, y_te = Pruning.classifier_data(train)
    example = x_tr[:1]
    t0 = time.perf_counter()
    index = NetworkIndex.from_zoo([train, *held], example)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(a.seed)).tolist()
    graphs = [train.graph(i) for i in order[: a.train_nets]]
    models = [module_of(ds, i) for ds in held for i in last_checkpoints(ds, a.min_acc)][: a.held_out]
    print(f"[bench_prune] {len(graphs)} training networks, {len(models)} held-out networks, "
          f"{len(index)} architectures ({time.perf_counter() - t0:.0f} s to index)", flush=True)

    pruner = MetaPruner.build("GMN", hidden_dim=a.hidden, num_layers=a.layers)
    t0 = time.perf_counter()
    meta_train(pruner, graphs, index, (x_tr, y_tr), steps=a.steps, lam=a.lam, alpha=a.alpha,
               pruned_weight=a.pruned_weight, speedup=a.train_speedup, lr=a.lr, batch_size=a.batch,
               data_batch=a.data_batch, generator=torch.Generator().manual_seed(a.seed),
               log_every=max(1, a.steps // 20))
    print(f"[bench_prune] meta-training: {time.perf_counter() - t0:.0f} s", flush=True)
    if a.save:
        pruner.save(a.save)

    results = {"args": vars(a), "speedups": {}}
    for sp in (float(s) for s in a.speedups.split(",")):
        t0 = time.perf_counter()
        rows = compare(pruner, models, example, (x_tr, y_tr), (x_te, y_te), speedup=sp,
                       finetune_steps=a.finetune_steps, lr=a.finetune_lr, seed=a.seed)
        s = summarize(rows)
        results["speedups"][f"{sp:g}"] = {"summary": s, "rows": rows}
        print(f"[bench_prune] {sp:g}x ({len(rows)} networks, {time.perf_counter() - t0:.0f} s): original "
              f"{s['original']:.3f} | right after pruning plain {s['plain_pruned']:.3f}, learned "
              f"{s['learned_pruned']:.3f} | fine-tuned plain {s['plain']:.3f}, learned {s['learned']:.3f} | "
              f"learned beats plain on {100 * s['win_fraction']:.1f} % (ties {100 * s['tie_fraction']:.1f} %)",
              flush=True)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(results, indent=1))
        print(f"[bench_prune] written to {a.out}")


if __name__ == "__main__":
    main()
