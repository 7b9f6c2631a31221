"""``wsl predict``: predict an architecture's parameters with a graph hypernetwork (wired into ``wsl.cli``).

::

    wsl predict --arch torchvision:resnet18 --input-shape 1,3,64,64 -o resnet18_ghn.safetensors
    wsl predict --arch module:wsl.hyper.sampler:demo_cnn --hypernet ghn2-digits --report report.json
    wsl predict --list                                           # packaged hypernetworks

The output is a safetensors state_dict (tied tensors stored once, as ``save_model`` does); the report lists
every tensor as predicted / not predicted (with the reason) / buffer handling.
"""

from __future__ import annotations

import argparse
import time

import torch

ARCH_HELP = "architecture: torchvision:NAME | timm:NAME | hf:CONFIG_JSON_OR_DIR | module:pkg.mod:fn"


def add_predict_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``predict`` subcommand on ``sub`` (the ``wsl`` subparsers)."""
    p = sub.add_parser("predict", help="predict an architecture's parameters with a graph hypernetwork")
    p.add_argument("--arch", help=ARCH_HELP)
    p.add_argument("--hypernet", default="ghn2-digits", help="packaged name or save_pretrained directory")
    p.add_argument("--input-shape", help="example input shape for tracing, e.g. 1,3,224,224")
    p.add_argument("-o", "--output", help="write the predicted state_dict here (.safetensors)")
    p.add_argument("--report", help="write the full report here (.json)")
    p.add_argument("--list", action="store_true", help="list the packaged hypernetworks and exit")
    p.set_defaults(func=cmd_predict)
    return p


def cmd_predict(a: argparse.Namespace) -> int:
    from ..graph.arch import build_arch
    from .api import predict_parameters
    from .hub import from_pretrained, packaged

    if a.list:
        for name in packaged():
            meta = from_pretrained(name).metadata
            print(f"{name}: {meta.get('trained_on', '')} ({meta.get('steps', '?')} steps)")
        return 0
    if not a.arch:
        raise ValueError(f"wsl predict needs --arch ({ARCH_HELP})")
    model = build_arch(a.arch)
    inputs = None
    if a.input_shape:
        inputs = (torch.zeros(tuple(int(s) for s in a.input_shape.replace("x", ",").split(",") if s)),)
    t0 = time.perf_counter()
    model, report = predict_parameters(model, a.hypernet, example_inputs=inputs, inplace=True)
    dt = time.perf_counter() - t0
    n = report.num_predicted_elements(model)
    print(f"predicted {len(report.predicted)} tensors ({n:,} parameters) of {a.arch} with {a.hypernet} "
          f"in {dt:.2f}s")
    for k, why in report.not_predicted.items():
        print(f"  not predicted {k}: {why}")
    reset = sum(v.startswith("reset") for v in report.buffers.values())
    if report.buffers:
        print(f"  buffers: {reset} running statistics reset (recompute with wsl.hyper.calibrate_norm_stats), "
              f"{len(report.buffers) - reset} kept")
    if a.output:
        from safetensors.torch import save_model

        save_model(model, a.output)
        print(f"state_dict written to {a.output}")
    if a.report:
        report.save(a.report)
        print(f"report written to {a.report}")
    return 0
