"""Loss barrier between two independently trained CNNs, without and with weight-matching alignment.

Trains two small CNNs on scikit-learn's 8x8 digits (different seeds), then prints

* the test-loss barrier on the linear path ``(1 - t) A + t B`` (naive) and ``(1 - t) A + t P(B)`` (aligned),
* test accuracy of A, B, their naive average and their aligned average (``wsl.merge``),

optionally (``--bn``) with BatchNorm and statistics recomputed on training data for every merged point.

    python scripts/align_barrier.py                 # plain CNN, ~10-20 s on 2 cores
    python scripts/align_barrier.py --bn --width 64
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import wsl
from wsl.align import weight_distance, weight_matching
from wsl.merging import loss_barrier, merge, reset_bn


def cnn(width: int, bn: bool) -> nn.Module:
    def block(a: int, b: int) -> list[nn.Module]:
        return [nn.Conv2d(a, b, 3, padding=1), *([nn.BatchNorm2d(b)] if bn else []), nn.ReLU()]

    return nn.Sequential(*block(1, width), *block(width, 2 * width), nn.MaxPool2d(2),
                         *block(2 * width, 2 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(2 * width, 10))


def digits(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    tr, te = perm[:1400], perm[1400:]
    return x[tr], y[tr], x[te], y[te]


def train(model: nn.Module, x: Tensor, y: Tensor, epochs: int, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--bn", action="store_true", help="BatchNorm after every conv (stats reset on merged nets)")
    ap.add_argument("--points", type=int, default=11, help="points on the linear path")
    ap.add_argument("--seeds", type=int, nargs=2, default=(1, 2))
    ap.add_argument("--no-scales", action="store_true", help="match permutations only (no ReLU scale solve)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    xtr, ytr, xte, yte = digits()
    t0 = time.perf_counter()
    models = []
    for s in args.seeds:
        torch.manual_seed(s)
        models.append(train(cnn(args.width, args.bn), xtr, ytr, args.epochs, s))
    t_train = time.perf_counter() - t0
    a, b = models
    ga = wsl.to_graph(a, example_inputs=xte[:2])
    gb = wsl.to_graph(b, example_inputs=xte[:2], spec=ga.spec)
    t0 = time.perf_counter()
    _, gb_aligned = weight_matching(ga, gb, scales=not args.no_scales)
    t_align = time.perf_counter() - t0
    b_aligned = wsl.from_graph(gb_aligned, b)

    def loss(m: nn.Module) -> float:
        if args.bn:
            reset_bn(m, xtr.split(256))
        return evaluate(m, xte, yte)[0]

    naive = loss_barrier(a, b, loss, alphas=args.points, example_inputs=xte[:2])
    aligned = loss_barrier(a, b_aligned, loss, alphas=args.points, example_inputs=xte[:2])
    bn_data = xtr.split(256) if args.bn else None
    avg_naive = merge([a, b], "average", example_inputs=xte[:2], bn_data=bn_data)
    avg_aligned = merge([a, b], "aligned", example_inputs=xte[:2], bn_data=bn_data, scales=not args.no_scales)

    print(f"two CNNs (width {args.width}, {'BatchNorm, ' if args.bn else ''}{sum(p.numel() for p in a.parameters()):,} "
          f"parameters) on sklearn digits 8x8, {args.epochs} epochs each: trained in {t_train:.1f} s; "
          f"weight matching {t_align * 1000:.0f} ms")
    print(f"weight distance |A - B| = {weight_distance(ga, gb):.3f}, |A - P(B)| = {weight_distance(ga, gb_aligned):.3f}")
    for name, m in (("A", a), ("B", b), ("B aligned (same function)", b_aligned), ("naive average", avg_naive),
                    ("aligned average", avg_aligned)):
        lo, acc = evaluate(m, xte, yte)
        print(f"  {name:28s} test loss {lo:.4f}  accuracy {100 * acc:.2f}%")
    print("test loss on the linear path (t = 0 .. 1):")
    print("  naive:   " + " ".join(f"{v:.3f}" for v in naive.losses))
    print("  aligned: " + " ".join(f"{v:.3f}" for v in aligned.losses))
    print(f"loss barrier: naive {naive.barrier:.4f}   aligned {aligned.barrier:.4f}")


if __name__ == "__main__":
    main()
