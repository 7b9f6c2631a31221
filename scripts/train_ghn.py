"""Train a small graph hypernetwork on digits and save it (optionally as a packaged hypernetwork).

    nice -n 10 python scripts/train_ghn.py --steps 1500 --minutes 12 --package ghn2-digits
    python scripts/train_ghn.py --kind ghn3 --decoder lowrank --steps 200 -o outputs/ghn3

``--package NAME`` writes ``wsl/hyper/pretrained/NAME.{json,safetensors}`` (loads offline by name).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from wsl.hyper.ghn import HYPERNETS
from wsl.hyper.hub import PRETRAINED_DIR, save_pretrained
from wsl.hyper.sampler import IN_SHAPE, sample_architectures
from wsl.hyper.train import digits, evaluate_predicted, train_ghn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", default="ghn2", choices=sorted(HYPERNETS))
    p.add_argument("--decoder", default="tiled", choices=["tiled", "lowrank"])
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mip", action="store_true", help="MIP residual decoding: theta = theta0 (the model's init) + s * delta")
    p.add_argument("--minutes", type=float, default=None, help="stop after this much wall time")
    p.add_argument("--eval", type=int, default=20, help="held-out test architectures to evaluate at the end")
    p.add_argument("-o", "--output", default=None, help="directory for save_pretrained")
    p.add_argument("--package", default=None, help="write wsl/hyper/pretrained/NAME.{json,safetensors}")
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    hn = HYPERNETS[a.kind](hidden=a.hidden, decoder=a.decoder, input_shape=[1, *IN_SHAPE], mip=a.mip)
    data = digits()
    t0 = time.time()
    hist = train_ghn(hn, data, steps=a.steps, meta_batch=a.meta_batch, batch_size=a.batch_size, lr=a.lr,
                     generator=torch.Generator().manual_seed(a.seed),
                     time_limit=None if a.minutes is None else 60 * a.minutes)
    minutes = (time.time() - t0) / 60
    torch.manual_seed(1234)
    test = sample_architectures(a.eval, "test", torch.Generator().manual_seed(1234))
    accs = evaluate_predicted(hn, test, data)
    acc = sum(accs) / max(len(accs), 1)
    print(f"held-out test architectures ({len(accs)}): mean accuracy with predicted parameters {acc:.3f}")
    meta = {"trained_on": "sklearn load_digits (1x8x8, 10 classes), wsl.hyper.sampler train split",
            "steps": hist[-1]["step"] if hist else 0, "minutes": round(minutes, 1),
            "final_train_loss": hist[-1]["loss"] if hist else None,
            "test_arch_mean_acc": round(acc, 4), "args": vars(a)}
    if a.output:
        save_pretrained(hn, a.output, metadata=meta)
        print(f"saved to {a.output}")
    if a.package:
        save_pretrained(hn, PRETRAINED_DIR, metadata=meta, name=a.package)
        print(f"packaged as {a.package} in {PRETRAINED_DIR}")
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
