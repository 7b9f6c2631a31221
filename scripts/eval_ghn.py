"""Evaluate a graph hypernetwork on held-out digits architectures (GHN-2's protocol at digits scale).

For each of ``--n`` unseen architectures (``test`` split of :mod:`wsl.hyper.sampler`; ``--split ood`` for
unseen families): digits test accuracy with predicted parameters and no training vs PyTorch's random
initialization (BatchNorm statistics recomputed on training images for both), then after one epoch of the
same fine-tuning (Adam, lr 1e-3 by default) from each initialization; prints mean / median / max and
the share of architectures where the predicted initialization beats the random one.

    nice -n 10 python scripts/eval_ghn.py --hypernet ghn2-digits --n 50 --json outputs/eval_ghn.json

``--torchvision resnet18,mobilenet_v2,...`` evaluates torchvision classifiers instead, built with 10 classes
and their stem adapted to ``1×8×8`` input (:func:`wsl.hyper.adapt.torchvision_for_inputs`: stride-1 3×3 stem
conv from 1 channel, the stem's max pool removed), same protocol.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from wsl.hyper.adapt import torchvision_for_inputs
from wsl.hyper.api import calibrate_norm_stats, load_hypernet
from wsl.hyper.sampler import IN_SHAPE, sample_architectures
from wsl.hyper.train import accuracy, digits, finetune


def _stats(xs: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(xs), "median": statistics.median(xs), "max": max(xs), "min": min(xs)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hypernet", default="ghn2-digits")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--split", default="test", choices=["test", "ood"])
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--optimizer", default="adam", choices=["adam", "sgd"], help="fine-tuning optimizer (both inits)")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (both inits)")
    p.add_argument("--torchvision", default=None, help="comma-separated torchvision model names (adapted to 8x8)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    hn = load_hypernet(a.hypernet)
    data = digits()
    calib = [data.x_train[i::4] for i in range(4)]
    torch.manual_seed(a.seed)
    if a.torchvision:
        names = [n.strip() for n in a.torchvision.split(",") if n.strip()]
        models = [torchvision_for_inputs(n) for n in names]
    else:
        models = sample_architectures(a.n, a.split, torch.Generator().manual_seed(a.seed))
        names = [m.arch_config.name for m in models]
    rows = []
    t0 = time.time()
    for i, (name, rand) in enumerate(zip(names, models)):
        pred = copy.deepcopy(rand)
        hn.predict_into(pred, torch.zeros(1, *IN_SHAPE))
        calibrate_norm_stats(pred, calib)
        calibrate_norm_stats(rand, calib)
        r0, p0 = accuracy(rand, data.x_test, data.y_test), accuracy(pred, data.x_test, data.y_test)
        r1 = finetune(rand, data, epochs=1, lr=a.lr, optimizer=a.optimizer, generator=torch.Generator().manual_seed(i))
        p1 = finetune(pred, data, epochs=1, lr=a.lr, optimizer=a.optimizer, generator=torch.Generator().manual_seed(i))
        rows.append({"arch": name, "params": sum(q.numel() for q in rand.parameters()), "random": r0,
                     "predicted": p0, "random_1ep": r1,
                     "predicted_1ep": p1})
        print(f"{i:3d} {name:45s} no training: random {r0:.3f} predicted {p0:.3f} | "
              f"1 epoch: random {r1:.3f} predicted {p1:.3f}", flush=True)
    summary = {
        "hypernet": a.hypernet, "split": "torchvision" if a.torchvision else a.split, "optimizer": a.optimizer, "lr": a.lr, "n": len(rows), "seconds": round(time.time() - t0, 1),
        "random_init": _stats([r["random"] for r in rows]),
        "predicted": _stats([r["predicted"] for r in rows]),
        "random_1ep": _stats([r["random_1ep"] for r in rows]),
        "predicted_1ep": _stats([r["predicted_1ep"] for r in rows]),
        "share_predicted_beats_random_no_training": statistics.fmean(r["predicted"] > r["random"] for r in rows),
        "share_predicted_beats_random_1ep": statistics.fmean(r["predicted_1ep"] > r["random_1ep"] for r in rows),
    }
    for k in ("random_init", "predicted", "random_1ep", "predicted_1ep"):
        s = summary[k]
        print(f"{k:14s} mean {s['mean']:.3f}  median {s['median']:.3f}  max {s['max']:.3f}")
    print(f"predicted beats random: no training {summary['share_predicted_beats_random_no_training']:.0%}, "
          f"after 1 epoch {summary['share_predicted_beats_random_1ep']:.0%}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"summary": summary, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
