"""MIP vs standard hypernetworks on a hyperparameter-conditioned task, next to the ``hyperlight`` reference.

Task (Bayesian-hyperparameter style, as in Gonzalez Ortiz et al. 2024): a hypernetwork takes a loss-weighting
coefficient ``γ ∈ [0, 1]`` and predicts all weights of a primary MLP (``digits``: 64-32-10 classifier on
scikit-learn ``load_digits``, standardised; ``wave``: 1-64-64-1 regressor of the generated signal
``y = sin(π(1 + 3γ)x)`` on ``x ∈ [-1, 1]``). Per ``γ`` the primary net minimises

* ``digits``: ``(1 − γ) · CE(f_θ(x), y) + γ · λ · mean(θ²)`` (data term vs weight prior),
* ``wave``: ``MSE(f_θ(x), sin(π(1 + 3γ)x))`` (a family of target signals).

Each step draws 8 ``γ ~ U[0, 1]`` and one data mini-batch, and averages the per-``γ`` losses (``wsl`` runs the 8
weight sets at once with ``ExternalParams.batched``; ``hyperlight`` loops ``using_externals`` per ``γ``). Every
``--eval-every`` steps the objective is evaluated on a fixed grid of 11 ``γ`` values on the full data; a run's
*steps to target* is the first evaluated step at which that mean falls to each of ``--targets``; *final* is
the mean at the end of the step budget. Same seeds, same Adam
(lr 1e-3), same hypernetwork widths for every method.

Methods: ``wsl MIP`` (:class:`wsl.hyper.mip.MIPHypernetwork`, ``mip=True``), ``wsl standard`` (``mip=False``),
``hyperlight MIP`` (``hl.HyperNet`` with ``encoding="cos|sin"`` and independent weights from the primary net's
init), ``hyperlight standard`` (``encoding=None``, no independent weights).

Usage: nice -n 10 python scripts/bench_mip.py [--task wave|digits] [--seeds 3] [--steps 1000] [--targets T ...]
       [--methods "wsl MIP" "wsl standard" "hyperlight MIP" "hyperlight standard"] [--eval-every 25]
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsl.hyper.external import externalize
from wsl.hyper.mip import MIPHypernetwork

GAMMA_BATCH = 8
HIDDEN = (64, 64)
LR = 1e-3


def make_task(name: str) -> tuple[Callable[[], nn.Module], Tensor, Tensor, Callable, list[float]]:
    """Return (primary constructor, x, y, loss(out, y, params, gamma) per γ, default targets)."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.data, dtype=torch.float32)
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)
        y = torch.tensor(d.target)
        lam = 10.0

        def loss(out: Tensor, yb: Tensor, params: dict[str, Tensor], gamma: Tensor) -> Tensor:
            ce = F.cross_entropy(out, yb)
            reg = torch.cat([p.reshape(-1) for p in params.values()]).pow(2).mean()
            return (1 - gamma) * ce + gamma * lam * reg

        return (lambda: nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))), x, y, loss, [0.15, 0.11, 0.1]
    if name == "wave":
        x = torch.linspace(-1, 1, 256).unsqueeze(-1)

        def loss(out: Tensor, xb: Tensor, params: dict[str, Tensor], gamma: Tensor) -> Tensor:
            return F.mse_loss(out, torch.sin(math.pi * (1 + 3 * gamma) * xb))

        def primary() -> nn.Module:
            return nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))

        return primary, x, x, loss, [0.1, 0.05, 0.02]
    raise ValueError(f"bench_mip: unknown task {name!r} (digits|wave)")


def minibatch(x: Tensor, y: Tensor, gen: torch.Generator, n: int = 128) -> tuple[Tensor, Tensor]:
    idx = torch.randint(0, x.shape[0], (n,), generator=gen)
    return x[idx], y[idx]


class WslRunner:
    """wsl: externalize the primary net, MIPHypernetwork predicts all its weights, batched forward over γ."""

    def __init__(self, primary: nn.Module, mip: bool, seed: int, loss: Callable) -> None:
        self.ext = externalize(primary)
        self.hnet = MIPHypernetwork(1, self.ext, hidden=HIDDEN, mip=mip, generator=torch.Generator().manual_seed(seed))
        self.loss = loss
        self.params = list(self.hnet.parameters())

    def objective(self, gammas: Tensor, xb: Tensor, yb: Tensor) -> Tensor:
        theta = self.hnet(gammas.unsqueeze(-1))
        b = gammas.shape[0]
        out = self.ext.batched(theta, xb.expand(b, *xb.shape))
        per = torch.stack([
            self.loss(out[i], yb, {k: v[i] for k, v in theta.items()}, gammas[i]) for i in range(b)
        ])
        return per.mean()


class HyperlightRunner:
    """hyperlight: hl.hypernetize + hl.HyperNet, one using_externals block per γ."""

    def __init__(self, primary: nn.Module, mip: bool, seed: int, loss: Callable) -> None:
        import hyperlight as hl

        torch.manual_seed(seed)  # hyperlight initialises from the global RNG
        names = [n for n, _ in primary.named_modules() if isinstance(_, nn.Linear)]
        mods = [primary.get_submodule(n) for n in names]
        self.model, values = hl.hypernetize(primary, modules=mods, return_values=True)
        shapes = self.model.external_shapes()
        self.hnet = hl.HyperNet(input_shapes={"gamma": (1,)}, output_shapes=shapes, hidden_sizes=list(HIDDEN),
                                encoding="cos|sin" if mip else None, init_independent_weights=mip)
        if mip:
            self.hnet.set_independent_weights({k: values[k] for k in shapes})
        self.loss = loss
        self.params = list(self.hnet.parameters())

    def objective(self, gammas: Tensor, xb: Tensor, yb: Tensor) -> Tensor:
        per = []
        for g in gammas:
            theta = self.hnet(gamma=g.reshape(1, 1))
            with self.model.using_externals(theta):
                out = self.model(xb)
            per.append(self.loss(out, yb, theta, g))
        return torch.stack(per).mean()


def run(method: str, task: str, seed: int, steps: int, eval_every: int, targets: list[float]) -> dict:
    primary_fn, x, y, loss, _ = make_task(task)
    torch.manual_seed(seed)
    primary = primary_fn()  # identical primary init for every method at a given seed
    runner_cls = WslRunner if method.startswith("wsl") else HyperlightRunner
    runner = runner_cls(copy.deepcopy(primary), mip=method.endswith("MIP"), seed=seed, loss=loss)
    opt = torch.optim.Adam(runner.params, lr=LR)
    gen = torch.Generator().manual_seed(1000 + seed)  # same data / γ stream for every method
    grid = torch.linspace(0, 1, 11)
    hits: list[int | None] = [None] * len(targets)
    curve: list[float] = []
    t0 = time.perf_counter()
    for step in range(steps + 1):
        if step % eval_every == 0 or step == steps:
            with torch.no_grad():
                ev = runner.objective(grid, x, y).item()
            curve.append(ev)
            hits = [h if h is not None or ev > t else step for h, t in zip(hits, targets)]
        if step == steps:
            break
        gammas = torch.rand(GAMMA_BATCH, generator=gen)
        xb, yb = minibatch(x, y, gen)
        opt.zero_grad(set_to_none=True)
        obj = runner.objective(gammas, xb, yb)
        if not torch.isfinite(obj):
            curve.append(float("nan"))
            break
        obj.backward()
        opt.step()
    return {"hits": hits, "final": curve[-1], "init": curve[0], "time": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="wave", choices=["digits", "wave"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--targets", type=float, nargs="+", default=None)
    ap.add_argument("--methods", nargs="+",
                    default=["wsl MIP", "wsl standard", "hyperlight MIP", "hyperlight standard"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    targets = args.targets if args.targets is not None else make_task(args.task)[4]
    print(f"task={args.task}  targets={targets}  steps<={args.steps}  eval every {args.eval_every}  "
          f"seeds={args.seeds}  γ-batch={GAMMA_BATCH}  hidden={HIDDEN}  Adam lr={LR}")
    rows = []
    for method in args.methods:
        res = [run(method, args.task, s, args.steps, args.eval_every, targets) for s in range(args.seeds)]
        per_target = [[r["hits"][i] for r in res] for i in range(len(targets))]
        rows.append((method, per_target, sum(r["init"] for r in res) / len(res),
                     sum(r["final"] for r in res) / len(res), sum(r["time"] for r in res)))
        print(f"  done {method}: steps to {targets} per seed {per_target}", flush=True)

    def mean_steps(hits: list[int | None]) -> float:
        # a run that never reaches the target counts as the step budget (so the mean is a lower bound)
        return sum(h if h is not None else args.steps for h in hits) / len(hits)

    def cell(hits: list[int | None]) -> str:
        return (">" if None in hits else "") + f"{mean_steps(hits):.0f}"

    print()
    head = "".join(f"{'steps→' + format(t, 'g'):>13}" for t in targets)
    print(f"{'method':<21}{head}{'init obj':>10}{'final obj':>11}{'time s':>8}   per-seed steps→{targets[0]:g}")
    for method, per_target, init, final, secs in rows:
        cells = "".join(f"{cell(h):>13}" for h in per_target)
        seeds = ",".join("-" if h is None else str(h) for h in per_target[0])
        print(f"{method:<21}{cells}{init:>10.3f}{final:>11.4f}{secs:>8.1f}   {seeds}")
    print(f"(steps: mean over {args.seeds} seeds of the first evaluated step with objective <= target; '>' = some "
          "seed never reached it and counts as --steps; final obj: mean at the last step)")
    by = {m: pt for m, pt, *_ in rows}
    for mip, std in (("wsl MIP", "wsl standard"), ("hyperlight MIP", "hyperlight standard")):
        if mip in by and std in by:
            ratios = [mean_steps(b) / max(mean_steps(a), 1e-9) for a, b in zip(by[mip], by[std])]
            lb = [">=" if None in b else "" for b in by[std]]
            txt = ", ".join(f"{t:g}: {g}{r:.1f}x" for t, g, r in zip(targets, lb, ratios))
            print(f"fewer steps, {mip} vs {std}: {txt}")


if __name__ == "__main__":
    main()
