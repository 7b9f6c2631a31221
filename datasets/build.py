"""Build (or resume, or just check) a local zoo: ``python datasets/build.py {digits_cnn,digits_inr} [options]``.

A thin recipe over :mod:`wsl.data.generate`; the zoo lands in ``$WSL_CACHE/zoos/<name>-<config hash>/``
unless ``--root`` says otherwise. Interrupt it any time: running it again continues.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="zoo", required=True)
    cnn = sub.add_parser("digits_cnn", help="small CNN classifiers on sklearn digits (generalization prediction)")
    cnn.add_argument("--runs", type=int, default=256)
    cnn.add_argument("--epochs", type=int, nargs="+", default=[4, 8, 16], help="choices of a run's length")
    cnn.add_argument("--seed", type=int, default=0)
    inr = sub.add_parser("digits_inr", help="SIRENs fitted to sklearn digits (INR classification)")
    inr.add_argument("--views", type=int, default=1)
    inr.add_argument("--variants", type=int, default=1,
                     help="distinct images per digit: itself + (variants - 1) random distortions (12: data=digits_inr_bench)")
    inr.add_argument("--init", choices=["independent", "shared"], default="independent")
    inr.add_argument("--bias-init", choices=["uniform", "zero"], default="uniform",
                     help="zero: DWSNets' INR initialization (data=digits_inr_bench uses it)")
    inr.add_argument("--dws", default=None, metavar="DIR",
                     help="also write the zoo in the DWSNets layout (mnist_splits.json + per-INR .pth) under DIR, "
                          "with the train / val / test split wsl trains on (80/10/10 by source digit, split seed 0)")
    inr.add_argument("--steps", type=int, default=300)
    inr.add_argument("--limit", type=int, default=None)
    inr.add_argument("--seed", type=int, default=0)
    for s in (cnn, inr):
        s.add_argument("--root", default=None, help="zoo directory (default: under $WSL_CACHE)")
        s.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    if args.zoo == "digits_cnn":
        from wsl.data.generate.digits_cnn import DigitsCNNConfig, generate_digits_cnn

        zoo = generate_digits_cnn(DigitsCNNConfig(runs=args.runs, epochs=tuple(args.epochs), seed=args.seed),
                                  args.root, progress=not args.no_progress)
    else:
        from wsl.data.generate import DigitsINRConfig, generate_digits_inr

        zoo = generate_digits_inr(DigitsINRConfig(views=args.views, variants=args.variants, init=args.init,
                                                  bias_init=args.bias_init,
                                                  steps=args.steps, limit=args.limit, seed=args.seed),
                                  args.root, progress=not args.no_progress)
        if args.dws:
            from wsl.data.dataset import split_indices
            from wsl.data.formats.dws_write import write_dws

            groups = torch.cat([meta["image_index"] for _, meta in zoo.shards()])
            write_dws(zoo, args.dws, split_indices(groups), progress=not args.no_progress)
    print(json.dumps({"path": str(zoo.path), "models": len(zoo), "complete": zoo.complete,
                      "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
