"""Merging same-architecture pairs / triples of the digits-CNN zoo: averaging, weight matching, OT fusion,
PLeaS, model soups; merged test accuracy, and for pairs the loss barrier where a method defines a path.

The digits-CNN zoo (``wsl.data.generate.digits_cnn``) trains 256 runs of small CNNs with sampled architectures
and hyperparameters; 51 architectures appear in two or more runs. For every architecture whose ``--group``
best runs (final checkpoints) all reach ``--min-acc`` test accuracy, this script takes those independently
trained networks (a group: a pair, ``--group 2``, or a triple, ``--group 3``), merges them with every method of
``--methods`` (:func:`wsl.merge`) and reports, on the zoo's own test split:

* the merged network's test accuracy and loss, next to the mean accuracy of the group's own networks;
* for pairs, the test-loss barrier of the linear path that the method's merge is the midpoint of:
  ``(1 - t) A + t B`` for ``average`` / ``uniform_soup`` and ``(1 - t) A + t P(B)`` for ``aligned`` (``P``
  from :func:`wsl.align.weight_matching`). OT fusion, PLeaS, MergeMany and the greedy soup define no such
  path: for them only merged accuracy and loss are reported.

Data (the zoo has a train and a test split only): the test split is used for the reported figures alone.
BatchNorm statistics of every averaged network (interpolated points, ``average``, ``aligned``,
``aligned_iterative``, ``ot_fusion``, each candidate of the greedy soup) are recomputed on the whole training
split (:func:`wsl.merging.reset_bn`); PLeaS folds BatchNorm and computes its statistics on its own ``data=``,
``--pleas-batches`` batches of 256 training digits. The greedy soup's score is accuracy on a validation
slice (``--val-fraction`` of the training digits, drawn with ``--seed``, kept out of PLeaS's data); every
network of the zoo was trained on these digits, so the slice ranks soups but is not unseen data.

Output: one line per group, then a Markdown table (method x merged accuracy mean ± std, merged loss, barrier,
endpoint accuracy) with notes, the command line and the wall time. The README's figures (pairs, averaging vs
weight matching) come from the first command; the full table from the two after it (11 pairs, 3 triples at
``--min-acc 0.8``; 2 pairs / 2 triples of the smallest architectures take 2 / 5 s on one core):

    python scripts/zoo_barrier.py --methods average aligned          # builds the default zoo first (~3 min)
    python scripts/zoo_barrier.py --group 2
    python scripts/zoo_barrier.py --group 3
    python scripts/zoo_barrier.py --group 3 --max-groups 2 --methods average ot_fusion   # a quick look
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

import wsl
from wsl.align import weight_matching
from wsl.data.generate.common import ZooDir
from wsl.data.generate.digits_cnn import DigitsCNNConfig, digits_split, evaluate, generate_digits_cnn
from wsl.merging import METHODS, greedy_soup, loss_barrier, merge, reset_bn

DEFAULT_METHODS = ("average", "aligned", "ot_fusion", "pleas", "greedy_soup")
PATHS = {"average": "naive", "uniform_soup": "naive", "aligned": "aligned"}  # methods with a linear path
BATCH = 256


@dataclass
class Row:
    """One method's results over the groups it merged (``failed``: ``(arch, error)`` of the others)."""

    acc: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    barrier: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)  # mean test accuracy of each merged group's own networks
    best: list[float] = field(default_factory=list)  # test accuracy of each merged group's best network
    seconds: list[float] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)  # greedy soup: ingredients kept
    failed: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class Digits:
    """The zoo's digits as this script uses them: ``bn`` (every training digit, in batches: BatchNorm resets),
    ``val`` (the greedy soup's validation slice of the training digits), ``pleas`` (PLeaS's batches, other
    training digits), ``test`` (the reported figures)."""

    bn: tuple[Tensor, ...]
    val: tuple[Tensor, Tensor]
    pleas: tuple[Tensor, ...]
    test: tuple[Tensor, Tensor]


def final_checkpoints(zoo: ZooDir) -> dict[int, tuple[int, dict[str, Tensor], float]]:
    """Per run: ``(arch index, state_dict, test accuracy)`` of its last checkpoint."""
    best: dict[int, tuple[int, int, dict[str, Tensor], float]] = {}
    for sd, meta in zoo.state_dicts():
        run, epoch = int(meta["run"]), int(meta["epoch"])
        if run not in best or epoch > best[run][0]:
            best[run] = (epoch, int(meta["arch"]), sd, float(meta["test_accuracy"]))
    return {r: (a, sd, acc) for r, (_, a, sd, acc) in best.items()}


def select_groups(runs: dict[int, tuple[int, dict[str, Tensor], float]], k: int,
                  min_acc: float) -> list[tuple[int, list[int]]]:
    """``(arch, its k most accurate runs)`` for every architecture with ``k`` runs of test accuracy >= ``min_acc``."""
    by_arch: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for r, (arch, _, acc) in runs.items():
        by_arch[arch].append((acc, r))
    out = []
    for arch, members in sorted(by_arch.items()):
        good = sorted(m for m in members if m[0] >= min_acc)[::-1]
        if len(good) >= k:
            out.append((arch, [r for _, r in good[:k]]))
    return out


def describe(zoo: ZooDir, arch: int) -> str:
    kw = zoo.manifest["architectures"][arch].get("kwargs", {})
    return (f"d{kw.get('depth')} w{kw.get('width')} k{kw.get('kernel')} {kw.get('activation')}"
            f"{' res' if kw.get('residual') else ''} {kw.get('norm')}")


def merge_one(method: str, models: list[nn.Module], args: argparse.Namespace, data: Digits,
              ex: Tensor) -> tuple[nn.Module, float | None, int | None]:
    """``(merged network, barrier or None, soup ingredients kept or None)`` for one group and method."""
    scales, bn = not args.no_scales, data.bn
    xte, yte = data.test
    kept = None
    if method == "pleas":
        g = torch.Generator().manual_seed(args.seed)
        net = merge(models, "pleas", data=data.pleas, scales=scales, example_inputs=ex, generator=g)
    elif method == "greedy_soup":
        xv, yv = data.val
        net, idx = greedy_soup(models, lambda m: evaluate(m, xv, yv)[0], example_inputs=ex, bn_data=bn)
        kept = len(idx)
    elif method == "ot_fusion":
        net = merge(models, "ot_fusion", solver=args.ot_solver, reg=args.ot_reg, scales=scales, example_inputs=ex,
                    bn_data=bn)
    else:
        net = merge(models, method, example_inputs=ex, bn_data=bn, scales=scales)
    barrier = None
    if len(models) == 2 and method in PATHS:
        a, b = models
        if PATHS[method] == "aligned":
            ga = wsl.to_graph(a, example_inputs=ex)
            _, gb = weight_matching(ga, wsl.to_graph(b, example_inputs=ex, spec=ga.spec), scales=scales)
            b = wsl.from_graph(gb, b)

        def loss(m: nn.Module) -> float:
            return evaluate(reset_bn(m, bn), xte, yte)[1]

        barrier = loss_barrier(a, b, loss, alphas=args.points, example_inputs=ex).barrier
    return net, barrier, kept


def fmt(xs: list[float], scale: float = 1.0, digits: int = 3, spread: bool = False) -> str:
    if not xs:
        return "—"
    m = f"{scale * statistics.fmean(xs):.{digits}f}"
    return f"{m} ± {scale * statistics.stdev(xs):.{digits}f}" if spread and len(xs) > 1 else m


def table(rows: dict[str, Row], k: int, n_groups: int, args: argparse.Namespace, data: Digits) -> str:
    lines = [f"| method | groups | merged acc % (mean ± std) | merged loss | loss barrier | endpoint acc % | "
             f"> best endpoint | s / group |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for method, r in rows.items():
        best = sum(a > b for a, b in zip(r.acc, r.best))
        lines.append(f"| {method} | {len(r.acc)}/{n_groups} | {fmt(r.acc, 100, 1, True)} | {fmt(r.loss)} | "
                     f"{fmt(r.barrier)} | {fmt(r.ends, 100, 1)} | {best}/{len(r.acc)} | {fmt(r.seconds, 1, 2)} |")
    n_tr, n_val, n_pl = (sum(len(b) for b in bs) for bs in (data.bn, data.val[:1], data.pleas))
    what = "pairs" if k == 2 else "triples"
    notes = [
        f"{n_groups} {what} of independently trained networks of one architecture (the {k} most accurate runs of "
        f"each architecture with {k} runs >= {args.min_acc:g} test accuracy); all accuracies and losses on the "
        f"zoo's test split ({len(data.test[1])} digits). Endpoint acc: mean over the group's own networks; "
        f"> best endpoint: groups where the merged network beats the group's best network.",
        (f"Loss barrier: max over {args.points} points t of the test loss on the linear path above its chord, "
         f"A to B for average / uniform_soup, A to P(B) after weight matching for aligned; the other methods "
         f"define no interpolation path, so only merged accuracy and loss are reported for them.") if k == 2 else
        "Loss barrier: defined for pairs only (run with --group 2).",
        f"BatchNorm: running statistics of every averaged network (interpolated points, average, aligned, "
        f"aligned_iterative, ot_fusion, each greedy-soup candidate) recomputed on the {n_tr} training digits "
        f"(reset_bn); PLeaS folds BatchNorm into its least-squares layers with statistics of its own data.",
        f"PLeaS data: {n_pl} training digits ({args.pleas_batches} batches of {BATCH}), disjoint from the greedy "
        f"soup's validation slice ({n_val} training digits, seed {args.seed}; the zoo has no validation split, so "
        f"every network saw these digits in training). Greedy soup: ingredients in order of validation accuracy, "
        f"each kept if the soup's validation accuracy does not drop" +
        (f" (kept {fmt([float(x) for x in rows['greedy_soup'].kept], 1, 2)} of {k} on average)."
         if "greedy_soup" in rows and rows["greedy_soup"].kept else "."),
        f"Alignment: {'permutations only' if args.no_scales else 'permutations and activation scales / signs'} "
        f"(weight matching, OT fusion, PLeaS); OT fusion: weight cost, {args.ot_solver}"
        f"{f' (reg {args.ot_reg:g})' if args.ot_solver == 'sinkhorn' else ''}, uniform masses, onto the first network.",
    ]
    if k == 2 and rows.get("average") and rows.get("aligned") and not rows["average"].failed + rows["aligned"].failed:
        nb, ab, na, aa = rows["average"].barrier, rows["aligned"].barrier, rows["average"].acc, rows["aligned"].acc
        notes.append(f"aligned vs average: barrier lower in {sum(x < y for x, y in zip(ab, nb))} of {len(ab)} pairs "
                     f"(median {statistics.median(nb):.3f} -> {statistics.median(ab):.3f}), merged accuracy higher "
                     f"in {sum(x > y for x, y in zip(aa, na))} of {len(aa)}.")
    for method, r in rows.items():
        for arch, err in r.failed:
            notes.append(f"{method} failed on arch {arch}: {err}")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default=None, help="a digits-CNN zoo directory (default: build / open the default zoo)")
    ap.add_argument("--group", type=int, choices=(2, 3), default=2, help="merge pairs (2) or triples (3)")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(DEFAULT_METHODS), metavar="METHOD",
                    help=f"merge methods, of {', '.join(METHODS)} (default: {' '.join(DEFAULT_METHODS)})")
    ap.add_argument("--min-acc", type=float, default=0.8, help="every network of a group needs this test accuracy")
    ap.add_argument("--max-groups", type=int, default=None, help="use only the first N groups (default: all)")
    ap.add_argument("--points", type=int, default=11, help="points on the linear path")
    ap.add_argument("--no-scales", action="store_true", help="match permutations only (no ReLU / tanh scale solve)")
    ap.add_argument("--seed", type=int, default=0, help="draws the validation slice and PLeaS's data batches")
    ap.add_argument("--val-fraction", type=float, default=0.2, help="training digits held out to score greedy soups")
    ap.add_argument("--pleas-batches", type=int, default=4, help=f"batches of {BATCH} training digits for PLeaS")
    ap.add_argument("--ot-solver", choices=("emd", "sinkhorn"), default="emd", help="OT fusion's transport solver")
    ap.add_argument("--ot-reg", type=float, default=0.01, help="Sinkhorn's entropic term (relative to the cost)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    torch.set_num_threads(1)
    zoo = ZooDir(args.zoo) if args.zoo else generate_digits_cnn(DigitsCNNConfig())
    cfg = zoo.manifest.get("config", {})
    xtr, ytr, xte, yte = digits_split(cfg.get("test_fraction", 0.25), cfg.get("split_seed", 0))
    perm = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(args.seed))
    n_val = round(args.val_fraction * len(xtr))
    rest = perm[n_val:][: args.pleas_batches * BATCH]
    if n_val < 1 or len(rest) < 1:
        raise SystemExit(f"--val-fraction {args.val_fraction} leaves {n_val} validation / {len(rest)} PLeaS digits "
                         f"of {len(xtr)}; choose a fraction in (0, 1)")
    data = Digits(xtr.split(BATCH), (xtr[perm[:n_val]], ytr[perm[:n_val]]), xtr[rest].split(BATCH), (xte, yte))
    runs = final_checkpoints(zoo)
    groups = select_groups(runs, args.group, args.min_acc)
    if not groups:
        raise SystemExit(f"no architecture in {zoo.path} has {args.group} runs with test accuracy >= {args.min_acc}")
    n_all = len(groups)
    groups = groups[: args.max_groups] if args.max_groups is not None else groups
    print(f"{zoo.path}: {len(runs)} runs, {n_all} groups of {args.group} with test accuracies >= {args.min_acc}; "
          f"using {len(groups)}", flush=True)
    rows = {m: Row() for m in args.methods}
    for arch, members in groups:
        models = []
        for r in members:
            m = zoo.architecture(arch)
            m.load_state_dict(runs[r][1])
            models.append(m.eval())
        ex = xte[:2]
        accs = [evaluate(m, xte, yte)[0] for m in models]
        cells = []
        for method in args.methods:
            t0 = time.perf_counter()
            try:
                net, barrier, kept = merge_one(method, models, args, data, ex)
            except (ValueError, NotImplementedError, RuntimeError) as e:
                rows[method].failed.append((arch, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"))
                cells.append(f"{method} failed")
                continue
            acc, loss = evaluate(net.float(), xte, yte)
            r = rows[method]
            r.seconds.append(time.perf_counter() - t0)
            r.acc.append(acc), r.loss.append(loss), r.ends.append(statistics.fmean(accs)), r.best.append(max(accs))
            if barrier is not None:
                r.barrier.append(barrier)
            if kept is not None:
                r.kept.append(kept)
            cells.append(f"{method} {100 * acc:.1f}" + (f" (B {barrier:.3f})" if barrier is not None else ""))
        print(f"{arch:>4} {describe(zoo, arch):34} runs {','.join(map(str, members))} acc "
              f"{' '.join(f'{100 * a:.1f}' for a in accs)} | " + " | ".join(cells), flush=True)
    print()
    print(table(rows, args.group, len(groups), args, data))
    print(f"\ncommand: python {shlex.join(sys.argv)}")
    print(f"wall time: {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
