"""The ``wsl`` command line.

::

    wsl convert CKPT --arch torchvision:resnet18 -o graph.pt      # checkpoint -> parameter graph file
    wsl inspect graph.pt                                          # table: nodes, edges, layers, symmetries
    wsl inspect CKPT --arch timm:resnet18 --plot graph.png        # also draw a (small) network's graph
    wsl inspect CKPT --arch timm:resnet18 --verify                # check the derived symmetries numerically
    wsl demo                                                      # convert + inspect + symmetry check
    wsl merge a.safetensors b.safetensors --arch ARCH -o merged.safetensors   # aligned average
    wsl merge a.safetensors b.safetensors --arch A --arch B --method ot_fusion -o fused.safetensors
    wsl merge a.safetensors b.safetensors --arch ARCH --input-shape 1,3,32,32 --method pleas -o p.pt  # data-free
    wsl prune CKPT --arch ARCH --input-shape 1,3,32,32 --speedup 2 -o pruned.safetensors   # + pruned.json sidecar
    wsl train [HYDRA OVERRIDES]                                   # train a metanetwork (configs/, Hydra)
    wsl train-ghn [HYDRA OVERRIDES]                               # train a graph hypernetwork (configs/ghn.yaml)
    wsl predict --arch torchvision:resnet18 --input-shape 1,3,64,64 -o pred.safetensors --report report.json
    wsl predict --list                                            # packaged hypernetworks
    wsl convert-hypernet ghn3xlm16.pt -o ghn3xlm16/               # published GHN -> safetensors + config.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any


from .arch import ARCH_HELP


def _example_inputs(shape: str | None) -> Any:
    import torch

    if not shape:
        return None
    dims = tuple(int(s) for s in shape.replace("x", ",").split(",") if s)
    return (torch.zeros(dims),)


def check_output(path: str, suffixes: tuple[str, ...], hint: str) -> None:
    """Refuse an output path before any work is done: a wrong suffix (``hint`` says what to use) or a missing
    parent directory."""
    if not path.endswith(suffixes):
        raise SystemExit(f"wsl: -o {path}: {hint}")
    parent = os.path.dirname(path)
    if parent and not os.path.isdir(parent):
        raise SystemExit(f"wsl: -o {path}: directory {parent!r} does not exist")


def _load_any(path: str, arch: str | None, shape: str | None, allow_pickle: bool, check_finite: bool = True):
    from .arch import build_arch
    from .graph import to_graph
    from .graph.serialize import GraphFileError, load_graph

    try:
        return load_graph(path)
    except GraphFileError as e:
        if arch is None:
            if not os.path.exists(path):
                raise SystemExit(f"wsl: {path}: no such file or directory")
            if os.path.isdir(path):
                raise SystemExit(f"wsl: {path} is a directory, not a graph file; to read an HF checkpoint directory "
                                 f"pass --arch ({ARCH_HELP})")
            if "not a wsl graph file" in str(e) or "no wsl metadata" in str(e):
                raise SystemExit(f"wsl: {path} is not a graph file; to read a checkpoint pass --arch ({ARCH_HELP})")
            raise SystemExit(f"wsl: {path} cannot be read as a graph file ({e}); to read a checkpoint (a file or an "
                             f"HF directory) pass --arch ({ARCH_HELP})")
    module = build_arch(arch)
    return to_graph(path, arch=module, example_inputs=_example_inputs(shape), allow_pickle=allow_pickle,
                    check_finite=check_finite)


def cmd_convert(a: argparse.Namespace) -> int:
    from .arch import build_arch
    from .graph import to_graph
    from .graph.serialize import save_graph

    module = build_arch(a.arch)
    t0 = time.perf_counter()
    graph = to_graph(a.checkpoint, arch=module, example_inputs=_example_inputs(a.input_shape),
                     allow_pickle=a.allow_pickle, check_finite=not a.allow_non_finite)
    dt = time.perf_counter() - t0
    save_graph(graph, a.output)
    s = graph.spec.summary()
    print(f"converted {a.checkpoint} ({s['parameters']:,} parameters) in {dt:.2f}s -> {a.output}: "
          f"{s['nodes']:,} nodes, {s['edges']:,} edges")
    return 0


def format_table(graph: Any, *, max_groups: int = 12) -> str:
    spec = graph.spec
    s = spec.summary()
    lines = [
        f"architecture          {s['arch']}",
        f"nodes                 {s['nodes']:,}",
        f"edges                 {s['edges']:,}",
        f"parameters            {s['parameters']:,}"
        + (f" (+ {s['statistics']:,} normalization statistics)" if s.get("statistics") else ""),
        f"tensors               {s['tensors']} ({s['passthrough']} kept verbatim)",
        f"layers (graph depth)  {s['layers']}",
        "node kinds            " + ", ".join(f"{k}={v:,}" for k, v in s["node_kinds"].items()),
        f"permutation classes   {s['free_permutation_classes']} free (input / output neurons stay fixed)",
    ]
    groups = spec.groups()
    for g in groups[:max_groups]:
        blocks = f", {g['blocks'][0]} blocks of {g['blocks'][1]}" if g["blocks"] else ""
        names = ", ".join(dict.fromkeys(g["sets"]))
        if len(names) > 90:
            shown = names[:90].rsplit(", ", 1)[0]
            names = f"{shown}, ... ({len(dict.fromkeys(g['sets']))} sets)"
        lines.append(f"  - S_{g['size']}{blocks}: {names}")
    if len(groups) > max_groups:
        lines.append(f"  ... and {len(groups) - max_groups} more")
    scale = spec.scale_sets()
    lines.append(f"scale / sign symmetries {len(scale)} sets")
    for name, kind in scale[:max_groups]:
        lines.append(f"  - {kind}: {name}")
    if spec.notes:
        lines.append("notes")
        lines += [f"  - {n}" for n in spec.notes[:max_groups]]
    return "\n".join(lines)


def cmd_inspect(a: argparse.Namespace) -> int:
    if a.verify and not a.arch:
        raise SystemExit(f"wsl: --verify runs the network, so it needs the architecture: pass --arch ({ARCH_HELP})")
    graph = _load_any(a.path, a.arch, a.input_shape, a.allow_pickle, not a.allow_non_finite)
    print(format_table(graph))
    if a.plot:
        from .graph.plot import plot_graph

        plot_graph(graph, a.plot)
        print(f"plot written to {a.plot}")
    if a.verify:
        from .arch import build_arch
        from .graph import from_graph, verify_symmetries

        model = from_graph(graph, build_arch(a.arch))
        report = verify_symmetries(model, _example_inputs(a.input_shape), trials=a.verify)
        print(report)
        return 0 if report.ok else 1
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    """Convert a torchvision model, check the round trip and a random symmetry, save and inspect it."""
    import torch

    from .arch import build_arch
    from .graph import from_graph, to_graph
    from .graph.serialize import load_graph, save_graph

    torch.manual_seed(0)
    model = build_arch(a.arch).eval()
    x = torch.randn(2, 3, a.size, a.size)
    t0 = time.perf_counter()
    graph = to_graph(model, example_inputs=x)
    t1 = time.perf_counter()
    exact = all(torch.equal(v, model.state_dict()[k]) for k, v in graph.to_state_dict().items())
    g = graph.spec.sample_symmetry(torch.Generator().manual_seed(0))
    moved = int((g.perm != torch.arange(g.perm.numel())).sum())
    permuted = from_graph(graph.apply_symmetry(g), model)
    with torch.no_grad():
        diff = (model(x) - permuted(x)).abs().max().item()
    os.makedirs(os.path.dirname(a.output) or ".", exist_ok=True)
    save_graph(graph, a.output)
    print(format_table(load_graph(a.output)))
    size = os.path.getsize(a.output) / 1e6
    print(f"\nconverted {a.arch} in {t1 - t0:.2f}s; graph saved to {a.output} ({size:.1f} MB; -o chooses where)")
    print(f"round trip bit-exact: {exact}")
    print(f"random symmetry element moved {moved:,} of {graph.spec.num_nodes:,} neurons; "
          f"max output change {diff:.2e}")
    if a.plot:
        from .graph.plot import plot_graph

        small = build_arch("module:wsl.graph.plot:demo_network")
        plot_graph(to_graph(small), a.plot)
        print(f"plot of a small network's parameter graph: {a.plot}")
    return 0 if exact and diff <= 1e-4 else 1


def cmd_merge(a: argparse.Namespace) -> int:
    """Merge checkpoints of one architecture into one (average / aligned / MergeMany / OT fusion, which also
    fuses checkpoints of one family with different hidden widths: one ``--arch`` per checkpoint)."""
    import torch

    from .arch import build_arch
    from .graph import to_graph
    from .merging import merge

    out = a.output
    check_output(out, (".safetensors", ".pt", ".pth"), "the merged checkpoint must end in .safetensors, .pt or .pth")
    if len(a.checkpoints) < 2:
        raise SystemExit("wsl: merge needs at least two checkpoints")
    weights = [float(w) for w in a.weights.split(",")] if a.weights else None
    if weights is not None and len(weights) != len(a.checkpoints):
        raise SystemExit(f"wsl: --weights has {len(weights)} values for {len(a.checkpoints)} checkpoints")
    archs = a.arch if len(a.arch) > 1 else a.arch * len(a.checkpoints)
    if len(archs) != len(a.checkpoints):
        raise SystemExit(f"wsl: give --arch once, or once per checkpoint ({len(a.checkpoints)}), "
                         f"not {len(a.arch)} times")
    if len(set(archs)) > 1 and a.method != "ot_fusion":
        raise SystemExit("wsl: checkpoints of different architectures merge only with --method ot_fusion")
    example = _example_inputs(a.input_shape)
    graphs, modules, specs = [], {}, {}
    for arch, path in zip(archs, a.checkpoints):
        if arch not in modules:
            modules[arch] = build_arch(arch)
        g = to_graph(path, arch=modules[arch], example_inputs=example, spec=specs.get(arch),
                     allow_pickle=a.allow_pickle, check_finite=not a.allow_non_finite)
        specs.setdefault(arch, g.spec)
        graphs.append(g)
    target = a.target if a.method == "ot_fusion" else 0
    if not -len(graphs) <= target < len(graphs):
        raise SystemExit(f"wsl: --target {target} is not an index into the {len(graphs)} checkpoints")
    module, spec = modules[archs[target]], graphs[target].spec
    opts = {"target": target, "solver": a.solver, "reg": a.reg, "masses": a.masses} if a.method == "ot_fusion" else {}
    items: list[Any] = graphs
    if a.method == "pleas":  # data-free: Gaussian inputs of the example input shape, full width
        from .graph import from_graph

        items = [from_graph(g, module) for g, module in zip(graphs, (modules[x] for x in archs))]
        opts = {"data": "synthetic", "ridge": a.ridge, "example_inputs": example,
                "generator": torch.Generator().manual_seed(0)}
    t0 = time.perf_counter()
    merged = merge(items, a.method, weights=weights, scales=not a.no_scales, **opts)
    state = merged.state_dict() if a.method == "pleas" else merged.to_state_dict()
    if out.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, out)
    else:
        torch.save(state, out)
    each = "each" if len(set(archs)) == 1 else f"in the target, checkpoint {target % len(graphs)}"
    print(f"merged {len(graphs)} checkpoints ({a.method}, {spec.num_parameters:,} parameters {each}) in "
          f"{time.perf_counter() - t0:.2f}s -> {out}")
    if a.method != "pleas" and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        print("note: BatchNorm running statistics were averaged, which is not the statistics of the merged "
              "network; recompute them on data with wsl.merging.reset_bn(model, batches)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wsl", description="weight-space learning: networks as parameter graphs")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="convert a checkpoint into a parameter graph file")
    c.add_argument("checkpoint", help="safetensors / .pt / .pth / .bin file or HF directory")
    c.add_argument("--arch", required=True, help=ARCH_HELP)
    c.add_argument("-o", "--output", required=True, help="graph file (.pt or .safetensors)")
    c.add_argument("--input-shape", help="example input shape for tracing, e.g. 1,3,224,224")
    c.add_argument("--allow-pickle", action="store_true", help="allow checkpoints that run code when loaded")
    c.add_argument("--allow-non-finite", action="store_true", help="convert checkpoints holding NaN / Inf")
    c.set_defaults(func=cmd_convert)
    i = sub.add_parser("inspect", help="summarize a graph file or checkpoint")
    i.add_argument("path")
    i.add_argument("--arch", help=ARCH_HELP + " (needed for checkpoints)")
    i.add_argument("--input-shape")
    i.add_argument("--allow-pickle", action="store_true")
    i.add_argument("--allow-non-finite", action="store_true", help="convert checkpoints holding NaN / Inf")
    i.add_argument("--plot", metavar="PNG", help="draw the parameter graph (small networks only)")
    i.add_argument("--verify", type=int, nargs="?", const=3, default=0, metavar="TRIALS",
                   help="check the derived symmetries numerically on TRIALS random elements (default 3; needs "
                        "--arch); exit status 1 when one changes the outputs")
    i.set_defaults(func=cmd_inspect)
    d = sub.add_parser("demo", help="convert + inspect + symmetry check on a torchvision model")
    d.add_argument("--arch", default="torchvision:resnet18")
    d.add_argument("--size", type=int, default=64, help="input image size")
    d.add_argument("-o", "--output", default="outputs/demo_graph.safetensors",
                   help="where the graph file goes (resnet18: about 300 MB)")
    d.add_argument("--plot", default="outputs/demo_graph.png")
    d.set_defaults(func=cmd_demo)
    mg = sub.add_parser("merge", help="merge checkpoints of one architecture (averaging, weight-matching alignment)")
    mg.add_argument("checkpoints", nargs="+", help="two or more checkpoints (safetensors / .pt / .pth / HF dir)")
    mg.add_argument("--arch", required=True, action="append",
                    help=ARCH_HELP + " (once, or once per checkpoint for --method ot_fusion of different widths)")
    mg.add_argument("--method", default="aligned",
                    choices=["average", "uniform_soup", "aligned", "aligned_iterative", "ot_fusion", "pleas"],
                    help="aligned: weight-match all to the first, then average (default); aligned_iterative: "
                         "MergeMany; average / uniform_soup: plain mean; ot_fusion: optimal-transport fusion onto "
                         "the --target checkpoint (widths may differ); pleas: PLeaS, data-free (activation "
                         "matching and per-layer least squares on Gaussian inputs of --input-shape, full width; "
                         "real data and wider merges: Python API wsl.merge(..., method='pleas', data=, width=, "
                         "build=)) (greedy soups need a score: Python API)")
    mg.add_argument("--target", type=int, default=0, help="ot_fusion: index of the checkpoint fused onto (default 0)")
    mg.add_argument("--solver", default="emd", choices=["emd", "sinkhorn"], help="ot_fusion: transport solver")
    mg.add_argument("--reg", type=float, default=0.01, help="ot_fusion: Sinkhorn regularization (relative)")
    mg.add_argument("--masses", default="uniform", choices=["uniform", "importance"],
                    help="ot_fusion: neuron masses (importance: norm of incoming weights)")
    mg.add_argument("--ridge", type=float, default=1e-4, help="pleas: least-squares ridge (relative)")
    mg.add_argument("--weights", help="comma-separated averaging weights, one per checkpoint")
    mg.add_argument("--no-scales", action="store_true", help="align permutations only (no ReLU / tanh scale solve)")
    mg.add_argument("-o", "--output", required=True, help="merged checkpoint (.safetensors, .pt or .pth)")
    mg.add_argument("--input-shape", help="example input shape for tracing, e.g. 1,3,224,224")
    mg.add_argument("--allow-pickle", action="store_true", help="allow checkpoints that run code when loaded")
    mg.add_argument("--allow-non-finite", action="store_true", help="convert checkpoints holding NaN / Inf")
    mg.set_defaults(func=cmd_merge)
    from .hyper.cli import add_convert_hypernet_parser, add_predict_parser
    from .prune.cli import add_prune_parser

    add_prune_parser(sub)
    add_predict_parser(sub)
    add_convert_hypernet_parser(sub)
    sub.add_parser("train", help="train a metanetwork (Hydra: `wsl train model=nggnn trainer.epochs=5`, "
                                 "`wsl train --help` for the config groups)")
    sub.add_parser("train-ghn", help="train a graph hypernetwork on digits (Hydra: `wsl train-ghn hypernet=ghn3 "
                                     "steps=300`, configs/ghn.yaml)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "train":  # everything after `train` belongs to Hydra
        from .train.entry import main as train_main

        sys.argv = ["wsl train", *argv[1:]]
        train_main()
        return 0
    if argv and argv[0] == "train-ghn":
        from .train.ghn_entry import main as ghn_main

        sys.argv = ["wsl train-ghn", *argv[1:]]
        ghn_main()
        return 0
    args = build_parser().parse_args(argv)
    from .graph import ConversionError
    from .io import CheckpointError

    try:
        return int(args.func(args) or 0)
    except (CheckpointError, ConversionError, FileNotFoundError, ValueError) as e:
        print(f"wsl: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001  user code (a model's forward, a module: constructor) or a bad file
        if os.environ.get("WSL_DEBUG"):
            raise
        lines = str(e).strip().splitlines()
        cause = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
        print(f"wsl: error: {cause} (set WSL_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
