"""Loss barriers between members of the digits-CNN zoo, without and with weight-matching alignment.

The digits-CNN zoo (``wsl.data.generate.digits_cnn``) trains 256 runs of small CNNs with sampled architectures
and hyperparameters; 51 architectures appear in two or more runs. For every architecture whose two best runs
(final checkpoints) both reach ``--min-acc`` test accuracy, this script takes those two independently trained
networks ``A`` and ``B`` and reports, on the zoo's own test split:

* the test-loss barrier on the linear path ``(1 - t) A + t B`` (naive) and ``(1 - t) A + t P(B)`` (aligned,
  ``P`` from :func:`wsl.align.weight_matching`),
* test accuracy of ``A``, ``B``, their naive average and their aligned average (:func:`wsl.merge`).

BatchNorm statistics of every interpolated / merged network are recomputed on the training split.

    python scripts/zoo_barrier.py                      # builds the default zoo first if needed (~3 min)
    python scripts/zoo_barrier.py --zoo PATH --min-acc 0.9
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import wsl
from wsl.align import weight_matching
from wsl.data.generate.common import ZooDir
from wsl.data.generate.digits_cnn import (
    DigitsCNNConfig,
    digits_split,
    generate_digits_cnn,
)
from wsl.merging import loss_barrier, merge, reset_bn


def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def final_checkpoints(zoo: ZooDir) -> dict[int, tuple[int, dict[str, Tensor], float]]:
    """Per run: ``(arch index, state_dict, test accuracy)`` of its last checkpoint."""
    best: dict[int, tuple[int, int, dict[str, Tensor], float]] = {}
    for sd, meta in zoo.state_dicts():
        run, epoch = int(meta["run"]), int(meta["epoch"])
        if run not in best or epoch > best[run][0]:
            best[run] = (epoch, int(meta["arch"]), sd, float(meta["test_accuracy"]))
    return {r: (a, sd, acc) for r, (_, a, sd, acc) in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default=None, help="a digits-CNN zoo directory (default: build / open the default zoo)")
    ap.add_argument("--min-acc", type=float, default=0.8, help="both networks of a pair need this test accuracy")
    ap.add_argument("--points", type=int, default=11, help="points on the linear path")
    ap.add_argument("--no-scales", action="store_true", help="match permutations only (no ReLU / tanh scale solve)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    zoo = ZooDir(args.zoo) if args.zoo else generate_digits_cnn(DigitsCNNConfig())
    cfg = zoo.manifest.get("config", {})
    xtr, _, xte, yte = digits_split(cfg.get("test_fraction", 0.25), cfg.get("split_seed", 0))
    runs = final_checkpoints(zoo)
    by_arch: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for r, (arch, _, acc) in runs.items():
        by_arch[arch].append((acc, r))
    pairs = []
    for arch, members in sorted(by_arch.items()):
        good = sorted(m for m in members if m[0] >= args.min_acc)[::-1]
        if len(good) >= 2:
            pairs.append((arch, good[0][1], good[1][1]))
    if not pairs:
        raise SystemExit(f"no architecture in {zoo.path} has two runs with test accuracy >= {args.min_acc}")
    print(f"{zoo.path}: {len(runs)} runs, {len(by_arch)} architectures, {len(pairs)} pairs with both "
          f"test accuracies >= {args.min_acc}")
    print(f"{'arch':>4} {'description':44} {'runs':>9} {'acc A':>6} {'acc B':>6} {'barrier':>8} {'aligned':>8} "
          f"{'avg acc':>8} {'aligned':>8} {'ms':>5}")
    rows = []
    for arch, ra, rb in pairs:
        a, b = zoo.architecture(arch), zoo.architecture(arch)
        a.load_state_dict(runs[ra][1])
        b.load_state_dict(runs[rb][1])
        a.eval(), b.eval()
        ex = xte[:2]
        ga = wsl.to_graph(a, example_inputs=ex)
        gb = wsl.to_graph(b, example_inputs=ex, spec=ga.spec)
        t0 = time.perf_counter()
        _, gb_aligned = weight_matching(ga, gb, scales=not args.no_scales)
        ms = 1000 * (time.perf_counter() - t0)
        b_aligned = wsl.from_graph(gb_aligned, b)

        def loss(m: nn.Module) -> float:
            reset_bn(m, xtr.split(256))
            return evaluate(m, xte, yte)[0]

        naive = loss_barrier(a, b, loss, alphas=args.points, example_inputs=ex)
        aligned = loss_barrier(a, b_aligned, loss, alphas=args.points, example_inputs=ex)
        avg = merge([a, b], "average", example_inputs=ex, bn_data=xtr.split(256))
        avg_al = merge([a, b], "aligned", example_inputs=ex, bn_data=xtr.split(256), scales=not args.no_scales)
        acc_a, acc_b = evaluate(a, xte, yte)[1], evaluate(b, xte, yte)[1]
        acc_avg, acc_al = evaluate(avg, xte, yte)[1], evaluate(avg_al, xte, yte)[1]
        kw = zoo.manifest["architectures"][arch].get("kwargs", {})
        desc = (f"d{kw.get('depth')} w{kw.get('width')} k{kw.get('kernel')} {kw.get('activation')}"
                f"{' res' if kw.get('residual') else ''} {kw.get('norm')}")
        rows.append((naive.barrier, aligned.barrier, acc_avg, acc_al))
        print(f"{arch:>4} {desc:44} {ra:>4},{rb:<4} {100 * acc_a:6.1f} {100 * acc_b:6.1f} {naive.barrier:8.3f} "
              f"{aligned.barrier:8.3f} {100 * acc_avg:8.1f} {100 * acc_al:8.1f} {ms:5.0f}", flush=True)
    nb, ab, na, aa = (list(c) for c in zip(*rows))
    print(f"\nmean over {len(rows)} pairs: loss barrier naive {statistics.fmean(nb):.3f} (median "
          f"{statistics.median(nb):.3f}) -> aligned {statistics.fmean(ab):.3f} (median {statistics.median(ab):.3f}); "
          f"averaged-network accuracy naive {100 * statistics.fmean(na):.1f} % -> aligned "
          f"{100 * statistics.fmean(aa):.1f} %")
    print(f"aligned barrier lower in {sum(x < y for x, y in zip(ab, nb))} of {len(rows)} pairs; aligned average "
          f"more accurate in {sum(x > y for x, y in zip(aa, na))} of {len(rows)}")


if __name__ == "__main__":
    main()
