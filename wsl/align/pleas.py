"""PLeaS: merge networks by partial permutation matching and per-layer least squares.

Reference: Nasery, Hayase, Koh & Oh, *PLeaS — Merging Models with Permutations and Least Squares* (2024).

1. **Partial matching.** Every model is brought to canonical scales (``scales=True``,
   :mod:`wsl.align.canonical`) and run on ``data``; per free permutation class (a hidden layer, a residual
   stream tied across its layers) the neurons of model ``j`` are matched to the first model's by the
   correlation of their activations, summed over the class's captured sets (as in
   :func:`~wsl.align.activation_matching`). With a budget of ``m`` merged neurons for a class of ``n``
   (``n <= m <= 2n``), the best matching of exactly ``p = 2n - m`` pairs is found (one linear assignment on
   an augmented matrix: ``n - p`` dummy rows and columns, dummy-dummy pairs forbidden); the ``p`` pairs become
   one neuron each, the ``n - p`` least-correlated neurons of *each* model are kept separately. More than
   two models: each is matched fully to the first (``m = n``).
2. **Least squares.** The matching gives, per class and model, a merge matrix ``A_j`` [n, m] (``A_j[i, k]``:
   the weight of model ``j``'s neuron ``i`` in merged neuron ``k``; each group's weights sum to one).
   Layer by layer in call order, for every ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` (``groups=1``,
   zero padding) with ``X`` [N, d] the *merged network's own* input features on ``data`` (im2col for
   convolutions; a ones column for the bias) and ``Z_j`` model ``j``'s output of the layer,

   .. math::
       W = \\arg\\min_W \\tfrac1N \\lVert X W - \\textstyle\\sum_j Z_j A_j \\rVert^2
           + \\lambda \\lVert W_{\\setminus \\mathrm{bias}} \\rVert^2, \\qquad
       \\lambda = \\mathrm{ridge} \\cdot \\operatorname{mean}_i \\operatorname{Var}(X_{:, i})

   (the mean second moment for layers without a bias, whose features are not centred by an intercept;
   normal equations accumulated over batches, float64; ``ridge=0`` gives the minimum-norm solution).
   Output sets never permuted (the logits) get the plain average, so the last layer fits the ensemble.
3. **BatchNorm** directly after a solved layer is *folded*: its output is the layer's target, and the solved
   map ``y = W x + b`` is written back as the layer's weight ``W`` (its bias zero) and a BatchNorm whose running
   statistics are *recomputed* on ``data`` (the population mean / variance of ``W x``) with weight
   ``sqrt(var + eps)`` and bias ``b + mean``: in eval mode the pair computes ``W x + b`` exactly, and its
   statistics are the merged network's own.

Data: a tensor of inputs, an iterable of batches (``(x, y)`` pairs are fine), or ``"synthetic"`` (data-free:
standard Gaussian inputs of the example input shape, ``spec.example_shapes``); single-tensor inputs only.

Wider networks (``m > n``): a module of new widths cannot be instantiated generically, so the caller passes
``build(widths)`` returning the architecture with ``widths`` (``{neuron-set name: width}`` for the sets of every
free class, e.g. ``{"0": 9, "2": 7}`` for ``nn.Sequential(Linear, ReLU, Linear, ReLU, Linear)``), checked against
the models (sets paired by position and name, :class:`~wsl.align.ot_fusion.Pairing`). Without ``build`` every
class keeps its width and the result is a copy of the first model.

Scope: every module holding parameters must be a solved layer or a BatchNorm folded into one (affine, with
running statistics), each called once per forward; anything else (LayerNorm, attention, embeddings, grouped
convolutions) raises ``ValueError`` naming the module.

Shapes:
    a class of ``n`` neurons per model merges into ``m`` (``n <= m <= 2n``); a solved layer's features are
    ``X`` [N, d] (``N``: samples x output positions, ``d``: inputs x kernel elements, + 1 for the bias) and its
    weights ``W`` [d, m_out] before being written back in the module's layout.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from ..graph import NetworkSpec, from_graph, to_graph
from .activation import _standardize, capture
from .canonical import canonicalize

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
_BN = nn.modules.batchnorm._BatchNorm


@dataclass
class PleasResult:
    """``model``: the merged network (eval mode); ``widths``: ``{set name: width}`` of its free classes;
    ``groups``: per class (its first set's name), per merged neuron, the ``(model, neuron)`` pairs merged."""

    model: nn.Module
    widths: dict[str, int]
    groups: dict[str, list[list[tuple[int, int]]]]


@dataclass
class _Layer:
    name: str  # the solved Linear / Conv module
    target: str  # the module (and neuron set) whose output is fitted: the layer, or the BatchNorm folded into it
    bn: bool


class _Stop(Exception):
    pass


def _fail(msg: str) -> None:
    raise ValueError(f"pleas: {msg}")


def batches(data: Any, spec: NetworkSpec | None, generator: torch.Generator | None, samples: int = 256,
            batch_size: int = 64) -> list[Tensor]:
    """``data`` as a list of input batches; ``"synthetic"``: ``samples`` Gaussian inputs of the spec's shape."""
    if data is None:
        _fail("needs data=<inputs>: a tensor of example inputs, an iterable of batches, or data='synthetic' "
              "(the data-free variant: Gaussian inputs of the example input shape)")
    if isinstance(data, str):
        if data != "synthetic":
            _fail(f"data={data!r}: pass a tensor, an iterable of batches, or 'synthetic'")
        if spec is None or len(spec.example_shapes) != 1:
            _fail("data='synthetic' needs the example input shape of a single-input network: pass "
                  "example_inputs=<one input tensor> (or --input-shape)")
        shape = tuple(spec.example_shapes[0][1:])
        x = torch.randn(samples, *shape, generator=generator, dtype=torch.float64)
        return list(x.split(batch_size))
    if isinstance(data, Tensor):
        out = list(data.split(batch_size))
    elif isinstance(data, dict):
        _fail("keyword inputs (a dict) are not supported: pass a tensor of inputs")
    else:
        out = [b[0] if isinstance(b, (tuple, list)) else b for b in data]
    if not out or not all(isinstance(b, Tensor) and b.is_floating_point() for b in out):
        _fail("data must hold floating-point input tensors (one input per forward call)")
    return [b.double() for b in out]


def _classes(spec: NetworkSpec) -> dict[int, list[str]]:
    """Free permutation classes: ``{root: names of its sets}``; each cell must be one whole neuron set."""
    sym = spec.symmetry
    by_start = {s.start: s for s in spec.sets}
    out: dict[int, list[str]] = {}
    for c, root in enumerate(sym.cell_class.tolist()):
        if sym.class_fixed.get(root, False):
            continue
        start, size = int(sym.cell_start[c]), int(sym.cell_size[c])
        s = by_start.get(start)
        if root in sym.class_blocks or s is None or s.size != size:
            name = s.name if s is not None else f"node {start}"
            _fail(f"the neurons of set '{name}' are permuted in blocks or in parts (attention heads, grouped "
                  "convolutions, GroupNorm groups); PLeaS supports MLPs and CNNs whose permutation classes cover "
                  "whole layers; use merge(..., method='aligned')")
        out.setdefault(root, []).append(s.name)
    return out


def _unsupported(name: str, what: str) -> None:
    _fail(f"module '{name}' ({what}) is not supported: PLeaS solves nn.Linear / nn.Conv1d / nn.Conv2d layers, "
          "each optionally followed by a BatchNorm; for other architectures use merge(..., method='aligned') "
          "or 'ot_fusion'")


def _layers(model: nn.Module, spec: NetworkSpec, example: Tensor) -> list[_Layer]:
    """The solved layers in call order, with the BatchNorm folded into each; refuses anything else."""
    modules = dict(model.named_modules())
    names = {s.name: i for i, s in enumerate(spec.sets)}
    starts = torch.tensor([s.start for s in spec.sets])
    set_of = torch.searchsorted(starts, torch.arange(spec.num_nodes), right=True) - 1
    src, dst = set_of[spec.edge_index[0]], set_of[spec.edge_index[1]]
    for name, mod in modules.items():
        if not isinstance(mod, (*_LAYERS, _BN)) and any(True for _ in mod.parameters(recurse=False)):
            _unsupported(name, type(mod).__name__)
    found: dict[str, _Layer] = {}
    folded: set[str] = set()
    for name, mod in modules.items():
        if not isinstance(mod, _LAYERS):
            continue
        if isinstance(mod, nn.modules.conv._ConvNd) and (mod.groups != 1 or mod.padding_mode != "zeros"
                                                         or isinstance(mod.padding, str)):
            _fail(f"convolution '{name}' has groups={mod.groups}, padding={mod.padding!r}, padding_mode="
                  f"'{mod.padding_mode}'; PLeaS solves convolutions with groups=1 and numeric zero padding")
        if name not in names:
            _fail(f"layer '{name}' ({type(mod).__name__}) produces no neuron set of its own in the traced graph "
                  "(its weights are used without calling it); PLeaS solves layers called as modules")
        i = names[name]
        succ = set(dst[src == i].tolist())
        nxt = spec.sets[succ.pop()].name if len(succ) == 1 else None
        bn = nxt is not None and isinstance(modules.get(nxt), _BN)
        if bn:
            b = modules[nxt]
            if not (b.affine and b.track_running_stats):
                _fail(f"BatchNorm '{nxt}' has affine={b.affine}, track_running_stats={b.track_running_stats}; "
                      "PLeaS folds BatchNorm into the layer before it, which needs both")
            folded.add(nxt)
        found[name] = _Layer(name, nxt if bn else name, bn)
    for name, mod in modules.items():
        if isinstance(mod, _BN) and name not in folded:
            _unsupported(name, "BatchNorm that does not directly follow a solved layer")
    calls: list[str] = []
    hooks = [modules[n].register_forward_pre_hook(lambda _m, _i, n=n: calls.append(n)) for n in found]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    twice = sorted({n for n in calls if calls.count(n) > 1})
    if twice:
        _fail(f"layers {twice} are called more than once per forward (shared weights); not supported")
    return [found[n] for n in calls]


def _best_pairs(C: Tensor, p: int) -> list[tuple[int, int]]:
    """The ``p`` pairs ``(i, j)`` of largest total ``C[i, j]`` (exact, one assignment on an augmented matrix)."""
    n = C.shape[0]
    if p == 0:
        return []
    k = n - p
    big = torch.zeros(n + k, n + k, dtype=torch.float64)
    big[:n, :n] = C
    big[n:, n:] = -1e9 * (1.0 + float(C.abs().max()))  # dummy-dummy forbidden: exactly p real pairs
    rows, cols = linear_sum_assignment(big.numpy(), maximize=True)
    return sorted((int(r), int(c)) for r, c in zip(rows, cols) if r < n and c < n)


def _budget(width: float | dict[str, int], classes: dict[int, list[str]], size: dict[int, int],
            k: int) -> dict[int, int]:
    if isinstance(width, dict):
        owner = {name: r for r, names in classes.items() for name in names}
        given: dict[int, int] = {}
        for name, m in width.items():
            if name not in owner:
                _fail(f"width names set '{name}', which is no hidden (permutable) set; the sets are "
                      f"{sorted(owner)}")
            if given.setdefault(owner[name], int(m)) != int(m):
                _fail(f"width gives two widths to one class (sets {classes[owner[name]]})")
        out = {r: given.get(r, size[r]) for r in classes}
    else:
        if not 1.0 <= float(width) <= 2.0:
            _fail(f"width={width}: a ratio in [1, 2] of the original widths (or a dict of set name -> int)")
        out = {r: int(round(float(width) * size[r])) for r in classes}
    for r, m in out.items():
        if not size[r] <= m <= (2 if k == 2 else 1) * size[r]:
            _fail(f"class of sets {classes[r]} has {size[r]} neurons per model; its merged width must lie in "
                  f"[{size[r]}, {2 * size[r]}] for two models, {size[r]} for more, got {m}")
    return out


def _match(acts: list[dict[int, Tensor]], spec: NetworkSpec, classes: dict[int, list[str]], size: dict[int, int],
           budget: dict[int, int], w: Tensor) -> tuple[dict[int, list[Tensor]], dict[int, list[list[tuple[int, int]]]]]:
    """Merge matrices ``{root: [A_j [n, m] per model]}`` and the groups ``[(model, neuron), ...]`` behind them."""
    start = {s.name: s.start for s in spec.sets}
    mats: dict[int, list[Tensor]] = {}
    groups: dict[int, list[list[tuple[int, int]]]] = {}
    for r, names in classes.items():
        n, m = size[r], budget[r]
        found = []
        for j in range(1, len(acts)):
            cells = [start[s] for s in names if start[s] in acts[0] and start[s] in acts[j]]
            if not cells and n > 1:
                _fail(f"no activation of the sets {names} was captured; cannot match them")
            C = sum((_standardize(acts[0][c]).T @ _standardize(acts[j][c]) / acts[0][c].shape[0] for c in cells),
                    torch.zeros(n, n, dtype=torch.float64))
            found.append(_best_pairs(C, 2 * n - m))  # m = n (all pairs) for more than two models
        if len(acts) == 2:
            pairs = found[0]
            ga, gb = {a for a, _ in pairs}, {b for _, b in pairs}
            grp = [[(0, a), (1, b)] for a, b in pairs] + [[(0, i)] for i in range(n) if i not in ga] + \
                  [[(1, i)] for i in range(n) if i not in gb]
        else:  # pairs sorted by the first model's neuron: found[j - 1][i] = (i, neuron of model j)
            grp = [[(0, i)] + [(j + 1, f[i][1]) for j, f in enumerate(found)] for i in range(n)]
        A = [torch.zeros(n, m, dtype=torch.float64) for _ in acts]
        for k, g in enumerate(grp):
            tot = float(sum(float(w[j]) for j, _ in g))
            for j, i in g:
                A[j][i, k] = float(w[j]) / tot
        mats[r], groups[r] = A, grp
    return mats, groups


def _grab(model: nn.Module, name: str, x: Tensor, what: str) -> Tensor:
    """The input (``what="input"``) or output of module ``name`` when ``model`` runs on ``x`` (stops there)."""
    mod = dict(model.named_modules())[name]
    got: list[Tensor] = []

    def keep(t: Any) -> None:
        got.append(t[0] if isinstance(t, tuple) else t)
        raise _Stop

    h = mod.register_forward_pre_hook(lambda _m, i: keep(i)) if what == "input" else \
        mod.register_forward_hook(lambda _m, _i, o: keep(o))
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass
    finally:
        h.remove()
    if not got:
        _fail(f"module '{name}' was not called on the data")
    return got[0]


def _rows(mod: nn.Module, x: Tensor) -> Tensor:
    """Layer inputs as rows ``[N, d]``: features for Linear, im2col patches for convolutions."""
    if isinstance(mod, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(mod, nn.Conv1d):
        x = x.unsqueeze(2)
        k, d, p, s = (1, *mod.kernel_size), (1, *mod.dilation), (0, *mod.padding), (1, *mod.stride)
    else:
        k, d, p, s = mod.kernel_size, mod.dilation, mod.padding, mod.stride
    cols = F.unfold(x, k, dilation=d, padding=p, stride=s)  # [B, Cin * prod(k), L]
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _outputs(y: Tensor, linear: bool) -> Tensor:
    return y.reshape(-1, y.shape[-1]) if linear else y.movedim(1, -1).reshape(-1, y.shape[1])


def _solve(merged: nn.Module, layer: _Layer, models: list[nn.Module], data: list[Tensor], A: list[Tensor],
           ridge: float) -> None:
    """Fit ``layer`` of ``merged`` on its own input features to the merged targets, and write it back."""
    mods = dict(merged.named_modules())
    mod = mods[layer.name]
    bias = layer.bn or mod.bias is not None
    G = R = None
    N = 0  # rows seen
    for x in data:
        X = _rows(mod, _grab(merged, layer.name, x, "input"))
        if bias:
            X = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype)], 1)
        T = sum(_outputs(_grab(m, layer.target, x, "output"), isinstance(mod, nn.Linear)) @ a
                for m, a in zip(models, A))
        G = X.T @ X if G is None else G + X.T @ X
        R = X.T @ T if R is None else R + X.T @ T
        N += X.shape[0]
    G, R = G / N, R / N
    d = G.shape[0] - int(bias)
    if d != mod.weight[0].numel():
        _fail(f"layer '{layer.name}' reads {d} input features in the merged network but its weight expects "
              f"{mod.weight[0].numel()}: build(widths) must make every layer read the widened sets")
    energy = G.diagonal()[:d] - (G[d, :d] ** 2 if bias else 0)  # variances when the intercept is free
    reg = G.clone()
    reg.diagonal()[:d] += ridge * float(energy.mean())
    W = torch.linalg.lstsq(reg, R, driver="gelsd").solution  # [d (+1), m]
    with torch.no_grad():
        mod.weight.copy_(W[:d].T.reshape(mod.weight.shape))
        b = W[d] if bias else None
        if layer.bn:
            if mod.bias is not None:
                mod.bias.zero_()
            mean = G[d, :d] @ W[:d]  # the statistics of W x on data: E[x] W, diag(W^T E[x x^T] W) - mean^2
            var = (((G[:d, :d] @ W[:d]) * W[:d]).sum(0) - mean**2).clamp(min=0)
            bn = mods[layer.target]
            bn.running_mean.copy_(mean), bn.running_var.copy_(var)
            bn.weight.copy_((var + bn.eps).sqrt()), bn.bias.copy_(b + mean)
        elif b is not None:
            mod.bias.copy_(b)


def pleas(models: Sequence[nn.Module], data: Any, *, width: float | dict[str, int] = 1.0,
          build: Callable[[dict[str, int]], nn.Module] | None = None, ridge: float = 1e-4,
          weights: Sequence[float] | None = None, scales: bool = True, example_inputs: Any = None,
          generator: torch.Generator | None = None) -> PleasResult:
    """Merge ``models`` (one architecture) by PLeaS (see the module docstring).

    Args:
        models: two or more ``nn.Module``s of one architecture.
        data: inputs (a tensor, an iterable of batches) or ``"synthetic"`` (256 Gaussian inputs of the example
            input shape, drawn with ``generator``).
        width: merged width per class: a ratio in ``[1, 2]`` of the original (``1.0``: every neuron merged with
            its match; ``2.0``: none merged, both models side by side) or ``{set name: int}`` for some classes
            (others keep their width). Above 1 needs two models and ``build``.
        build: ``build(widths) -> nn.Module`` instantiating the architecture with ``widths`` (``{set name:
            width}``); needed when any width changes.
        ridge: Tikhonov term relative to the mean variance of each layer's input features.
        weights: per-model weights of the averaged targets (default uniform).
        scales: match canonical scales / signs (needed for odd activations; harmless for ReLU).
        example_inputs: tracing inputs (default: the first batch of ``data``).

    Returns:
        A :class:`PleasResult`; ``result.model`` is the merged network in eval mode, in the first model's dtype.
    """
    models = list(models)
    if len(models) < 2:
        _fail(f"needs at least two models, got {len(models)}")
    if not all(isinstance(m, nn.Module) for m in models):
        kinds = sorted({type(m).__name__ for m in models if not isinstance(m, nn.Module)})
        _fail(f"needs the networks as nn.Modules (it runs them on data), got {kinds}; turn graphs into modules "
              "with wsl.from_graph(graph, model)")
    w = torch.ones(len(models), dtype=torch.float64) if weights is None else \
        torch.tensor([float(v) for v in weights], dtype=torch.float64)
    if w.numel() != len(models) or bool((w <= 0).any()):
        _fail(f"need {len(models)} positive weights (one per model), got {list(w.tolist())}")
    dtype = next(models[0].parameters()).dtype
    if not isinstance(data, str):
        data = batches(data, None, generator)
        example_inputs = data[0][:8].to(dtype) if example_inputs is None else example_inputs
    graphs = [to_graph(models[0], example_inputs=example_inputs)]
    spec = graphs[0].spec
    graphs += [to_graph(m, example_inputs=example_inputs, spec=spec) for m in models[1:]]
    data = batches(data, spec, generator) if isinstance(data, str) else data
    layers = _layers(copy.deepcopy(models[0]).double().eval(), spec, data[0])
    classes = _classes(spec)
    by_name = {s.name: s for s in spec.sets}
    size = {r: by_name[names[0]].size for r, names in classes.items()}
    budget = _budget(width, classes, size, len(models))
    widths = {name: budget[r] for r, names in classes.items() for name in names}
    if build is None and any(budget[r] != size[r] for r in classes):
        _fail(f"the merged network is wider than the models ({widths}); pass build=<callable(widths: dict of "
              "set name -> width) -> nn.Module> that instantiates the architecture with these widths")
    work = []
    for g, m in zip(graphs, models):
        _, c = canonicalize(g) if scales else (None, g)
        work.append((from_graph(c, m) if c is not g else copy.deepcopy(m)).double().eval())
    mats, groups = _match([capture(m, g, data) for m, g in zip(work, graphs)], spec, classes, size,
                          budget, w)
    if build is None:
        merged = copy.deepcopy(models[0])
    else:
        merged = build(dict(widths))
        if not isinstance(merged, nn.Module):
            _fail(f"build(widths) returned a {type(merged).__name__}, not an nn.Module")
        _check_built(merged, spec, widths, data[0][:8].to(next(merged.parameters()).dtype))
    merged = merged.double().eval()
    owner = {name: r for r, names in classes.items() for name in names}
    for layer in layers:
        r = owner.get(layer.target)
        if r is None:  # never permuted (the outputs): the average
            n = by_name[layer.target].size
            A = [torch.eye(n, dtype=torch.float64) * float(v / w.sum()) for v in w]
        else:
            A = mats[r]
        _solve(merged, layer, work, data, A, ridge)
    named = {classes[r][0]: g for r, g in groups.items()}
    return PleasResult(merged.to(dtype).eval(), widths, named)


def _check_built(merged: nn.Module, spec: NetworkSpec, widths: dict[str, int], example_inputs: Any) -> None:
    from .ot_fusion import Pairing

    try:
        got = to_graph(merged, example_inputs=example_inputs).spec
        Pairing(got, spec, who="the network build(widths) returned")
    except ValueError as e:
        _fail(str(e).removeprefix("ot_fusion: "))
    sizes = {s.name: s.size for s in got.sets}
    wrong = [f"set '{k}' has {sizes.get(k)}, asked {v}" for k, v in widths.items() if sizes.get(k) != v]
    if wrong:
        _fail(f"build(widths) returned a network of other widths than asked: {', '.join(wrong)}")


__all__ = ["PleasResult", "batches", "pleas"]
