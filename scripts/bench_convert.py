"""Conversion throughput: checkpoint -> ParamGraph, next to a plain clone of the same weights.

For ResNet-50, ViT-B/16 and GPT-2 (124M, built from its config: no download) it reports, in one process:

* ``clone``: ``{k: v.clone()}`` of the state_dict (the reference: a plain memory copy);
* ``first``: ``wsl.to_graph(model)`` including the one-time trace of the architecture;
* ``convert``: ``wsl.to_graph(state_dict, arch=model, spec=spec)`` — converting another checkpoint of an
  architecture already traced (the zoo case);
* ``back``: ``graph.to_state_dict()``.

Targets (issue #3): convert >= 50 M parameters/s, <= 5x the clone time, ResNet-50 first conversion < 1 s.

Usage: python scripts/bench_convert.py [--repeat 5] [--models resnet50 vit_b_16 gpt2]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch

import wsl


def build(name: str) -> tuple[torch.nn.Module, object]:
    if name == "gpt2":
        import transformers

        cfg = transformers.GPT2Config()
        return transformers.GPT2LMHeadModel(cfg).eval(), {"input_ids": torch.zeros(1, 8, dtype=torch.long)}
    import torchvision

    return torchvision.models.get_model(name, weights=None).eval(), torch.zeros(1, 3, 224, 224)


def timeit(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--models", nargs="*", default=["resnet50", "vit_b_16", "gpt2"])
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"{'model':10s} {'params':>8s} {'clone':>8s} {'first':>8s} {'convert':>8s} {'back':>8s} "
          f"{'M/s':>7s} {'x clone':>8s} {'graph B/param':>13s}")
    for name in args.models:
        model, x = build(name)
        sd = model.state_dict()
        n = sum(p.numel() for p in {v.data_ptr(): v for v in sd.values()}.values())  # tied tensors once
        clone = timeit(lambda: {k: v.clone() for k, v in sd.items()}, args.repeat)
        t0 = time.perf_counter()
        graph = wsl.to_graph(model, example_inputs=x)
        first = time.perf_counter() - t0
        spec = graph.spec
        conv = timeit(lambda: wsl.to_graph(sd, arch=model, spec=spec), args.repeat)
        back = timeit(graph.to_state_dict, args.repeat)
        per_graph = sum(t.numel() * t.element_size() for t in (graph.x, graph.edge_attr, graph.buffers))
        shared = sum(t.numel() * t.element_size() for t in (spec.edge_index, spec.edge_type, spec.edge_pos))
        print(f"{name:10s} {n / 1e6:7.1f}M {clone:7.3f}s {first:7.3f}s {conv:7.3f}s {back:7.3f}s "
              f"{n / conv / 1e6:7.1f} {conv / clone:7.2f}x {per_graph / n:5.1f} (+{shared / n:.0f} shared)",
              flush=True)
        graph = spec = None  # release before the next model
        gc.collect()


if __name__ == "__main__":
    main()
