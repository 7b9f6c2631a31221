"""``wsl predict`` and ``wsl convert-hypernet`` (wired into ``wsl.cli``).

::

    wsl predict --arch torchvision:resnet18 --input-shape 1,3,64,64 -o resnet18_ghn.safetensors
    wsl predict --arch module:wsl.hyper.sampler:demo_cnn --hypernet ghn2-digits --report report.json
    wsl predict --list                                           # packaged hypernetworks
    wsl convert-hypernet ghn3xlm16.pt -o ghn3xlm16/              # published GHN file -> safetensors + config

The output is a safetensors state_dict (tied tensors stored once, as ``save_model`` does); the report lists
every tensor as predicted / not predicted (with the reason) / buffer handling.
"""

from __future__ import annotations

import argparse
import time
import warnings


from ..arch import ARCH_HELP


def add_predict_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``predict`` subcommand on ``sub`` (the ``wsl`` subparsers)."""
    p = sub.add_parser("predict", help="predict an architecture's parameters with a graph hypernetwork")
    p.add_argument("--arch", help=ARCH_HELP)
    p.add_argument("--hypernet", default="ghn2-digits",
                   help="packaged name, save_pretrained directory, published GHN file (ppuda .pt / ghn3 release) "
                        "or a directory from wsl convert-hypernet")
    p.add_argument("--input-shape", help="example input shape for tracing, e.g. 1,3,224,224")
    p.add_argument("-o", "--output", help="write the predicted state_dict here (.safetensors)")
    p.add_argument("--report", help="write the full report here (.json)")
    p.add_argument("--list", action="store_true", help="list the packaged hypernetworks and exit")
    p.set_defaults(func=cmd_predict)
    return p


def add_convert_hypernet_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``convert-hypernet``: a published GHN file (ppuda / ghn3, read without running its pickle) ->
    ``config.json`` + ``model.safetensors``."""
    p = sub.add_parser("convert-hypernet", help="convert a published GHN-2 / GHN-3 file (ppuda .pt, ghn3 joblib "
                                                "or training checkpoint) into safetensors + config.json")
    p.add_argument("input", help="the published file, e.g. ghn2_imagenet.pt or ghn3xlm16.pt")
    p.add_argument("-o", "--output", required=True, help="directory to write (must be new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.set_defaults(func=cmd_convert_hypernet)
    return p


def cmd_convert_hypernet(a: argparse.Namespace) -> int:
    from .published import read_checkpoint
    from .published.convert import write_converted

    t0 = time.perf_counter()
    ckpt = read_checkpoint(a.input)
    out = write_converted(ckpt, a.output, overwrite=a.overwrite)
    n = sum(v.numel() for v in ckpt.state_dict.values())
    cfg = ", ".join(f"{k}={v}" for k, v in ckpt.config.items())
    print(f"read {a.input} ({ckpt.format}, {ckpt.family.upper()}, {len(ckpt.state_dict)} tensors, {n:,} parameters; "
          f"config {ckpt.config_source}: {cfg}) in {time.perf_counter() - t0:.2f}s -> {out}/config.json, "
          f"{out}/model.safetensors")
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    import torch

    from ..arch import build_arch
    from .api import predict_parameters
    from .hub import from_pretrained, packaged

    if a.list:
        for name in packaged():
            meta = from_pretrained(name).metadata
            print(f"{name}: {meta.get('trained_on', '')} ({meta.get('steps', '?')} steps)")
        return 0
    if not a.arch:
        raise ValueError(f"wsl predict needs --arch ({ARCH_HELP})")
    if a.output:  # checked before the work, so a typo does not cost a prediction
        from ..cli import check_output

        check_output(a.output, (".safetensors",),
                     "the predicted state_dict is written as safetensors; name the file *.safetensors")
    model = build_arch(a.arch)
    inputs = None
    if a.input_shape:
        inputs = (torch.zeros(tuple(int(s) for s in a.input_shape.replace("x", ",").split(",") if s)),)
    t0 = time.perf_counter()
    with warnings.catch_warnings():  # printed below, once, with the rest of the report
        warnings.simplefilter("ignore", UserWarning)
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
    for w in report.warnings:
        print(f"  warning: {w}")
    if a.output:
        from safetensors.torch import save_model

        save_model(model, a.output)
        print(f"state_dict written to {a.output}")
    if a.report:
        report.save(a.report)
        print(f"report written to {a.report}")
    if not a.output:
        print("nothing written: pass -o FILE.safetensors to keep the predicted weights")
    return 0
