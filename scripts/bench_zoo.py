"""INR-zoo fitting throughput: wsl's SIREN fitter next to a plain autograd loop, in the same process.

Setup (issue #13): SIRENs 2-32-32-1 fitted to 28x28 digit images (``wsl.data.generate.digits_inr``), 300 Adam
steps, lr 1e-3, every INR its own random initialization.

* ``reference``: the straightforward way to fit a batch of INRs — stacked parameters, ``einsum`` forward,
  autograd backward, ``torch.optim.Adam`` (what one would write by hand; the whole batch at once).
* ``wsl``: :func:`wsl.data.generate.siren_fit.fit_sirens_on_grid` (hand-written gradients, separable first
  layer on the pixel grid, NumPy's SIMD sines, chunks that stay in cache), in this process.
* ``wsl xN``: the same through :class:`~wsl.data.generate.siren_fit.SirenPool` with N worker processes, one
  thread each — what zoo generation uses (``--workers``, default: one per core).

Rounds alternate between the two so machine noise hits both alike; each figure is the median over rounds.
Prints INRs/s, the ratio, the largest parameter difference between the two fits (they run the same
optimization) and the projected time of a 21,564-INR zoo (``data=digits_inr_bench``).

Usage: python scripts/bench_zoo.py [--n 64] [--steps 300] [--rounds 3] [--threads N] [--chunk 16] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from wsl.data.generate.digits_inr import DigitsINRConfig, digit_images, siren_init
from wsl.data.generate.siren_fit import SirenPool, coordinate_grid, fit_sirens_on_grid


def reference_fit(init: dict[str, torch.Tensor], targets: torch.Tensor, steps: int, lr: float = 1e-3,
                  w0: float = 30.0) -> dict[str, torch.Tensor]:
    params = {k: v.clone().requires_grad_() for k, v in init.items()}
    coords = coordinate_grid(targets.shape[-1])
    flat = targets.reshape(targets.shape[0], -1)
    opt = torch.optim.Adam(params.values(), lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        h = torch.sin(w0 * (torch.einsum("pi,boi->bpo", coords, params["0.weight"]) + params["0.bias"][:, None]))
        h = torch.sin(w0 * (torch.einsum("bpi,boi->bpo", h, params["2.weight"]) + params["2.bias"][:, None]))
        out = (torch.einsum("bpi,boi->bpo", h, params["4.weight"]) + params["4.bias"][:, None])[..., 0]
        ((out - flat) ** 2).mean(1).sum().backward()
        opt.step()
    return {k: v.detach() for k, v in params.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=64, help="INRs per round")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--chunk", type=int, default=16, help="INRs fitted together by wsl")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes of the pooled run")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = DigitsINRConfig()
    images, _ = digit_images(cfg.size)
    inits = [siren_init(cfg, torch.Generator().manual_seed(i)) for i in range(args.n)]
    stacked = {k: torch.stack([p[k] for p in inits]) for k in inits[0]}
    targets = images[: args.n]
    pooled = f"wsl x{args.workers}"
    rates: dict[str, list[float]] = {"reference": [], "wsl": [], pooled: []}
    diff = 0.0
    with SirenPool(args.workers, chunk=args.chunk) as pool:
        pool.fit({k: v[: args.chunk * args.workers] for k, v in stacked.items()}, targets[: args.chunk * args.workers],
                 steps=1)  # start the processes outside the timing
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            ref = reference_fit(stacked, targets, args.steps)
            rates["reference"].append(args.n / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            ours, _ = fit_sirens_on_grid(stacked, targets, steps=args.steps, chunk=args.chunk)
            rates["wsl"].append(args.n / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            pool.fit(stacked, targets, steps=args.steps)
            rates[pooled].append(args.n / (time.perf_counter() - t0))
            diff = max(float((ours[k] - ref[k]).abs().max()) for k in ref)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"SIREN 2-32-32-1 on 28x28, {args.steps} Adam steps, {args.n} INRs x {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads")
    for k, v in med.items():
        print(f"  {k:10s} {v:7.1f} INRs/s   ({', '.join(f'{r:.1f}' for r in rates[k])})")
    print(f"  ratio wsl / reference: {med['wsl'] / med['reference']:.2f}x, {pooled} / reference: "
          f"{med[pooled] / med['reference']:.2f}x   (max parameter difference wsl vs reference {diff:.1e})")
    print(f"  projected 21,564-INR zoo (data=digits_inr_bench) at the {pooled} rate: "
          f"{21564 / med[pooled] / 60:.1f} min (target <= 15 min; >= 25 INRs/s)")


if __name__ == "__main__":
    main()
