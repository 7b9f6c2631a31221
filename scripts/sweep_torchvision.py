"""Convert every torchvision classification model; report round trip, symmetry diff and timings.

Usage: python scripts/sweep_torchvision.py [NAME ...] [--size 64]
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

import wsl
from wsl.testing import inconsistent_graph, max_output_diff, randomize_

FIXED_SIZE = {"vit": 224, "maxvit": 224, "swin": 224, "inception_v3": 299}


def size_for(name: str, default: int) -> int:
    for k, v in FIXED_SIZE.items():
        if name.startswith(k):
            return v
    return default


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--max-params", type=float, default=300, help="skip models above this many M parameters")
    args = ap.parse_args()
    names = args.names or torchvision.models.list_models(module=torchvision.models)
    for name in names:
        torch.manual_seed(0)

        try:
            m = torchvision.models.get_model(name, weights=None).eval()
            n_params = sum(p.numel() for p in m.parameters()) / 1e6
            if n_params > args.max_params:
                print(f"{name:28s} SKIP {n_params:.0f}M parameters > --max-params", flush=True)
                continue
            s = size_for(name, args.size)
            randomize_(m, torch.Generator().manual_seed(0), calibrate=torch.randn(8 if s <= 64 else 4, 3, s, s))
            s = size_for(name, args.size)
            x = torch.randn(1, 3, s, s)
            t1 = time.perf_counter()
            g = wsl.to_graph(m, example_inputs=x)
            t2 = time.perf_counter()
            sd = g.to_state_dict()
            exact = all(torch.equal(sd[k], v) for k, v in m.state_dict().items())
            check = wsl.verify_symmetries(m, x, graph=g, dtype=torch.float32, trials=2)
            d, scale, moved = check.worst, check.output_scale, check.trials[0]["moved"]
            bad = max_output_diff(m, wsl.from_graph(inconsistent_graph(g, torch.Generator().manual_seed(0)), m), x)
            print(f"{name:28s} exact={exact} out={scale:.1e} rel.diff={d:.2e} ok={check.ok} wrong={bad:.1e} moved={moved}/{g.spec.num_nodes} "
                  f"free={g.spec.symmetry.num_free_classes()} scale={len(g.spec.scale_sets())} "
                  f"trace={t2 - t1:.2f}s params={g.spec.num_parameters / 1e6:.1f}M notes={len(g.spec.notes)}",
                  flush=True)
        except Exception as ex:  # noqa: BLE001
            print(f"{name:28s} FAIL {type(ex).__name__}: {str(ex)[:300]}", flush=True)


if __name__ == "__main__":
    main()
