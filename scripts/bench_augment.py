"""Per-sample cost of each weight-space augmentation, next to a plain ``graph.clone()``.

Graphs: a digits-INR-sized SIREN (2-32-32-1, 1,153 parameters) and a small CNN with BatchNorm and a
residual block. Prints the median time per call (microseconds) and its ratio to cloning the graph.

    python scripts/bench_augment.py            # about a minute on 2 shared cores
    python scripts/bench_augment.py --repeats 50
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import wsl
import wsl.augment as A
from wsl.data.generate import siren


class SmallCNN(nn.Module):
    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.stem(x)))
        x = F.relu(x + self.bn2(self.conv(x)))
        return self.fc(x.mean((2, 3)))


def timeit(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def transforms() -> dict[str, object]:
    return {
        "RandomPermutation": A.RandomPermutation(),
        "RandomScaling": A.RandomScaling(),
        "RandomSignFlip": A.RandomSignFlip(),
        "SirenBiasShift": A.SirenBiasShift(w0=30.0),
        "RandomSymmetry": A.RandomSymmetry(),
        "GaussianNoise": A.GaussianNoise(0.01),
        "WeightDropout": A.WeightDropout(0.1),
        "NeuronDropout": A.NeuronDropout(0.05),
        "MagnitudePruning": A.MagnitudePruning(),
        "Quantization": A.Quantization((4, 8)),
        "INRTranslate": A.INRTranslate(),
        "INRRotate": A.INRRotate(),
        "INRScale": A.INRScale(),
        "MixUp": A.MixUp(num_classes=10),
        "PermutedMixUp": A.PermutedMixUp(num_classes=10),
        "AlignedMixUp": A.AlignedMixUp(num_classes=10),
        "Compose(perm, noise)": A.Compose([A.RandomPermutation(), A.GaussianNoise(0.01)]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    nets = {"SIREN 2-32-32-1": (siren(), torch.zeros(4, 2)), "CNN BN+res 16ch": (SmallCNN(), torch.zeros(2, 1, 8, 8))}
    graphs = {}
    for name, (model, x) in nets.items():
        a = wsl.to_graph(model, example_inputs=x)
        b = wsl.to_graph({k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
                          for k, v in model.state_dict().items()}, arch=model, spec=a.spec)
        a.y, b.y = torch.tensor([1]), torch.tensor([2])
        graphs[name] = (a, b)
    g = torch.Generator().manual_seed(0)
    cols = list(graphs)
    base = {n: timeit(lambda a=a: a.clone(), args.repeats) for n, (a, _) in graphs.items()}
    head = f"{'transform':24s}" + "".join(f" | {c:>26s}" for c in cols)
    print(f"median microseconds per sample (ratio to graph.clone()), {args.repeats} repeats, 1 thread")
    print(head)
    print("-" * len(head))
    print(f"{'graph.clone()':24s}" + "".join(f" | {base[c]:10.1f} us ({1.0:6.1f}x)   " for c in cols))
    for tname, t in transforms().items():
        row = f"{tname:24s}"
        for c in cols:
            a, b = graphs[c]
            fn = (lambda t=t, a=a, b=b: t(a, b, g)) if A.is_pairwise(t) else (lambda t=t, a=a: t(a, g))
            try:
                us = timeit(fn, args.repeats)
                row += f" | {us:10.1f} us ({us / base[c]:6.1f}x)   "
            except ValueError:
                row += f" | {'n/a (not an INR)':>26s}"
        print(row)
    num = {c: graphs[c][0].spec.num_parameters for c in cols}
    print("parameters: " + ", ".join(f"{c}: {n:,}" for c, n in num.items()))


if __name__ == "__main__":
    main()
