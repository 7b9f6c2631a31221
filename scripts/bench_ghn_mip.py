"""GHN training with and without MIP decoding: steps to reach a target meta-loss (digits, sampled architectures).

Both runs train the same ``GHN2`` (same width, decoder, seed, architecture / batch stream, AdamW and cosine
schedule; :func:`wsl.hyper.train.train_ghn`). Variants (``--variants``): ``plain`` predicts ``θ`` outright with
GHN-2's operation-dependent normalization; ``mip`` (``mip=True, mip_base="learned"``) decodes ``θ₀ + s_role ·
Δθ`` with ``θ₀`` a learned base tile per role / vector per (op, role) and learned per-role scales ``s``;
``mip-init`` (``mip_base="init"``) uses the target model's own fresh initialization as ``θ₀``
(:class:`wsl.hyper.ghn.GraphHyperNetwork`). The curve is the training meta-loss (cross-entropy of freshly sampled
``train``-split architectures run with predicted parameters) averaged over ``--log-every`` steps; a run's
*steps to target* is the first logged step at which it is ``<=`` each of ``--targets``. At the end, held-out
``test``-split architectures are evaluated with predicted parameters and no training.

    nice -n 10 python scripts/bench_ghn_mip.py --seeds 2 --steps 300
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from wsl.hyper.ghn import HYPERNETS
from wsl.hyper.sampler import IN_SHAPE, sample_architectures
from wsl.hyper.train import Digits, digits, evaluate_predicted, train_ghn

VARIANTS = {"plain": {}, "mip": {"mip": True, "mip_base": "learned"}, "mip-init": {"mip": True, "mip_base": "init"}}


def run(kind: str, variant: str, seed: int, a: argparse.Namespace, data: Digits) -> dict:
    torch.manual_seed(seed)
    hn = HYPERNETS[kind](hidden=a.hidden, decoder=a.decoder, input_shape=[1, *IN_SHAPE], **VARIANTS[variant])
    t0 = time.time()
    hist = train_ghn(hn, data, steps=a.steps, meta_batch=a.meta_batch, batch_size=64, lr=a.lr,
                     generator=torch.Generator().manual_seed(seed), log_every=a.log_every, log=lambda s: None)
    secs = time.time() - t0
    hits = [next((h["step"] for h in hist if h["loss"] <= t), None) for t in a.targets]
    torch.manual_seed(1234)
    test = sample_architectures(a.eval, "test", torch.Generator().manual_seed(1234))
    accs = evaluate_predicted(hn, test, data)
    return {"variant": variant, "seed": seed, "hits": hits, "first_loss": hist[0]["loss"], "final_loss": hist[-1]["loss"],
            "test_acc": statistics.fmean(accs), "seconds": secs, "curve": [(h["step"], h["loss"]) for h in hist]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", default="ghn2", choices=sorted(HYPERNETS))
    p.add_argument("--decoder", default="tiled", choices=["tiled", "lowrank"])
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--targets", type=float, nargs="+", default=[2.0, 1.8, 1.6])
    p.add_argument("--eval", type=int, default=20, help="held-out test architectures evaluated at the end")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    data = digits()
    rows = []
    for seed in range(a.seeds):
        for v in a.variants:
            r = run(a.kind, v, seed, a, data)
            rows.append(r)
            print(f"seed {seed} {v:8s}: steps to {a.targets} = {r['hits']}  loss "
                  f"{r['first_loss']:.3f} -> {r['final_loss']:.3f}  held-out acc {r['test_acc']:.3f}  "
                  f"{r['seconds']:.0f}s", flush=True)

    def mean_hits(v: str, i: int) -> tuple[float, bool]:
        hs = [r["hits"][i] for r in rows if r["variant"] == v]
        return statistics.fmean(h if h is not None else a.steps for h in hs), any(h is None for h in hs)

    print(f"\n{a.kind} ({a.decoder}, hidden {a.hidden}), {a.seeds} seeds, {a.steps} steps, meta-batch {a.meta_batch}")
    print(f"{'':8}" + "".join(f"{'steps->' + format(t, 'g'):>14}" for t in a.targets) + f"{'final loss':>12}"
          f"{'held-out acc':>14}")
    for v in a.variants:
        cells = ""
        for i in range(len(a.targets)):
            m, miss = mean_hits(v, i)
            cells += f"{('>' if miss else '') + format(m, '.0f'):>14}"
        sel = [r for r in rows if r["variant"] == v]
        print(f"{v:8}{cells}{statistics.fmean(r['final_loss'] for r in sel):>12.3f}"
              f"{statistics.fmean(r['test_acc'] for r in sel):>14.3f}")
    for v in a.variants:
        if v == "plain" or "plain" not in a.variants:
            continue
        for i, t in enumerate(a.targets):
            (sp, mp), (mm, mmiss) = mean_hits("plain", i), mean_hits(v, i)
            if not mmiss and mm > 0:
                print(f"target {t:g}: plain / {v} steps = {(('>' if mp else '') + format(sp / mm, '.2f'))}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "runs": rows}, f, indent=2)


if __name__ == "__main__":
    main()
