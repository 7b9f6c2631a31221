"""``wsl prune`` (wired into ``wsl.cli``): group-L2 structured pruning of a checkpoint to a MACs speed-up.

::

    wsl prune model.safetensors --arch timm:resnet18 --input-shape 1,3,64,64 --speedup 2 -o pruned.safetensors
    wsl prune ckpt.pt --arch ARCH --input-shape 1,1,8,8 --metanet run/meta_pruner.safetensors -o pruned.pt

The pruned network has another architecture than ``--arch`` builds, so it is written safely as its state_dict
(``.safetensors``, or a ``.pt`` of plain tensors) plus a JSON sidecar (``pruned.json``: the ``--arch`` string,
input shape, every tensor's shape, every layer's widths, the report); ``wsl.prune.load_pruned("pruned.pt")``
rebuilds it without unpickling code. ``--metanet`` rewrites the weights with a trained meta pruner first.
"""

from __future__ import annotations

import argparse
import os
import time

from ..arch import ARCH_HELP


def add_prune_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``prune`` subcommand on ``sub`` (the ``wsl`` subparsers)."""
    p = sub.add_parser("prune", help="structured (channel) pruning to a MACs speed-up, group-L2 via torch-pruning; "
                                     "optionally rewritten by a trained meta pruner first")
    p.add_argument("checkpoint", help="safetensors / .pt / .pth / .bin file or HF directory")
    p.add_argument("--arch", required=True, help=ARCH_HELP)
    p.add_argument("--input-shape", help="example input shape for tracing and counting MACs, e.g. 1,3,224,224 "
                                         "(default: a guess from the first layer)")
    p.add_argument("--speedup", type=float, default=2.0, help="target MACs ratio before / after (default 2)")
    p.add_argument("--importance", default="group_l2", choices=["group_l2", "group_l1"],
                   help="channel criterion (group norm over every coupled layer)")
    p.add_argument("--iterative-steps", type=int, default=64, help="pruning-ratio steps (more: closer to the target)")
    p.add_argument("--metanet", metavar="PATH", help="a trained meta pruner (.safetensors from wsl train "
                                                       "task=pruning or MetaPruner.save): rewrite the weights first")
    p.add_argument("-o", "--output", required=True,
                   help="pruned state_dict (.safetensors, .pt or .pth) + a .json sidecar next to it")
    p.add_argument("--allow-pickle", action="store_true", help="allow checkpoints that run code when loaded")
    p.add_argument("--allow-non-finite", action="store_true", help="convert checkpoints holding NaN / Inf")
    p.set_defaults(func=cmd_prune)
    return p


def cmd_prune(a: argparse.Namespace) -> int:
    from ..cli import _example_inputs, check_output
    from .saving import SUFFIXES, sidecar_path

    out = a.output
    check_output(out, SUFFIXES, "the pruned state_dict must end in .safetensors, .pt or .pth (a .json sidecar "
                                "with the layer widths is written next to it)")
    if os.path.abspath(str(sidecar_path(out))) == os.path.abspath(a.checkpoint):
        raise SystemExit(f"wsl: -o {out}: its sidecar {sidecar_path(out)} would overwrite the input checkpoint")
    if not a.speedup >= 1:
        raise SystemExit(f"wsl: --speedup {a.speedup}: the MACs ratio must be >= 1")
    if a.metanet and not os.path.isfile(a.metanet):
        raise SystemExit(f"wsl: --metanet {a.metanet}: no such file")
    from .depgraph import require_torch_pruning

    try:
        require_torch_pruning()
    except ImportError as e:
        raise SystemExit(f"wsl: {e}") from None

    from ..arch import build_arch
    from ..graph import from_graph, to_graph
    from .saving import save_pruned
    from .structured import prune

    module = build_arch(a.arch)
    example = _example_inputs(a.input_shape)
    graph = to_graph(a.checkpoint, arch=module, example_inputs=example, allow_pickle=a.allow_pickle,
                     check_finite=not a.allow_non_finite)
    model = from_graph(graph, module).eval()
    t0 = time.perf_counter()
    how = "group-L2" if a.importance == "group_l2" else "group-L1"
    if a.metanet:
        from .meta import MetaPruner

        model = MetaPruner.load(a.metanet).rewrite(model, example, spec=graph.spec)
        how = f"rewritten by {a.metanet}, then {how}"
    pruned, report = prune(model, example, a.speedup, a.importance, iterative_steps=a.iterative_steps)
    side = save_pruned(pruned, out, arch=a.arch, report=report,
                       input_shape=tuple(example[0].shape) if example is not None else None,
                       extra={"metanet": a.metanet, "importance": a.importance})
    print(f"pruned {a.checkpoint} ({how}) in {time.perf_counter() - t0:.2f}s -> {out} (+ {side})")
    print(report.summary())
    if report.speedup < a.speedup:
        print(f"note: reached {report.speedup:.2f}x, short of {a.speedup:g}x (layers at one channel or at the "
              f"maximum pruning ratio)")
    print(f"reload: wsl.prune.load_pruned({out!r})  (builds --arch, shrinks its layers to the sidecar's widths)")
    return 0
