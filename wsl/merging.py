"""Model merging in weight space: plain and permutation-aligned averaging, linear paths, loss barriers.

* ``merge(models, "average")`` — the mean of the parameters (model soups; fine for fine-tunes of one
  pretrained model, poor for independently trained networks, whose neurons are in arbitrary order);
* ``merge(models, "aligned")`` — align every model to the first by weight matching, then average;
* ``merge(models, "aligned_iterative")`` — Git Re-Basin's MergeMany: repeatedly align each model to the
  mean of the others until no permutation changes, then average;
* ``merge(models, "ot_fusion")`` — OT fusion (Singh & Jaggi, NeurIPS 2020): transport every model's neurons
  onto a target's by optimal transport (exact or Sinkhorn plans), then average; the models may differ in
  hidden widths, the result has the target's (:mod:`wsl.align.ot_fusion`);
* ``merge(models, "pleas", data=...)`` — PLeaS (Nasery et al., 2024): activation matching of the neurons, only
  the best-matched pairs merged up to a width budget (``width=``; wider results need ``build=``), then every
  layer solved by least squares so the merged network's features reproduce the models' average on ``data``
  (``"synthetic"``: data-free, Gaussian inputs) (:mod:`wsl.align.pleas`);
* ``merge(models, "uniform_soup")`` (= ``"average"``) and ``merge(models, "greedy_soup", score=fn)`` — model
  soups (Wortsman et al., ICML 2022): the greedy soup adds ingredients in order of their own score and keeps
  each one only if the soup's score does not drop (:func:`greedy_soup` also returns which were kept);
* :func:`interpolate` / :func:`loss_barrier` — the linear path ``(1 - t) a + t b`` and its barrier

.. math::
    B(a, b) = \\max_t \\; L((1 - t)\\theta_a + t\\theta_b) - \\big((1 - t) L(\\theta_a) + t L(\\theta_b)\\big)

Reference: Ainsworth et al., *Git Re-Basin* (ICLR 2023); Entezari et al., *The Role of Permutation
Invariance in Linear Mode Connectivity of Neural Networks* (ICLR 2022); Frankle et al., *Linear Mode
Connectivity and the Lottery Ticket Hypothesis* (ICML 2020).

BatchNorm: averaged running statistics are *not* the statistics of the averaged network (the variance of
a mean of features is not the mean of variances, "variance collapse"). Pass data to :func:`reset_bn` (or
``merge(..., bn_data=...)``) to recompute them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .align import weight_matching
from .augment.base import param_index
from .graph import ParamGraph, from_graph, to_graph

METHODS = ("average", "uniform_soup", "aligned", "aligned_iterative", "greedy_soup", "ot_fusion", "pleas")
_OT_DEFAULTS = {"target": 0, "cost": "weight", "solver": "emd", "reg": 0.01, "masses": "uniform"}
_PLEAS_DEFAULTS = {"width": 1.0, "build": None, "ridge": 1e-4}


def _graphs(items: Sequence[Any], example_inputs: Any = None) -> tuple[list[ParamGraph], nn.Module | None]:
    if not items:
        raise ValueError("merge: need at least one model or graph")
    template = items[0] if isinstance(items[0], nn.Module) else None
    spec = None
    out = []
    for i, m in enumerate(items):
        if isinstance(m, nn.Module):
            g = to_graph(m, example_inputs=example_inputs, spec=spec)
        elif isinstance(m, ParamGraph):
            g = m
        else:
            raise TypeError(f"merge: item {i} is a {type(m).__name__}; pass nn.Modules or ParamGraphs")
        spec = spec or g.spec
        if g.spec.num_edges != spec.num_edges or not torch.equal(g.spec.edge_index, spec.edge_index):
            raise ValueError(f"merge: item {i} ({g.spec.arch}) has a different architecture from item 0")
        out.append(g)
    return out, template


def average_graphs(graphs: Sequence[ParamGraph], weights: Sequence[float] | None = None) -> ParamGraph:
    """Weighted mean of the graphs' learnable values (identity edges and pass-through buffers: the first's)."""
    w = torch.ones(len(graphs), dtype=torch.float64) if weights is None else torch.tensor(list(weights), dtype=torch.float64)
    if w.numel() != len(graphs) or float(w.sum()) <= 0:
        raise ValueError(f"merge: need {len(graphs)} weights with a positive sum, got {list(w.tolist())}")
    w = w / w.sum()
    first = graphs[0]
    edge = sum(wi * g.edge_attr.double() for wi, g in zip(w, graphs))
    x = sum(wi * g.x.double() for wi, g in zip(w, graphs))
    keep = ~param_index(first.spec).edge_param[:, None]
    new = first.clone_structure()
    new.edge_attr = torch.where(keep, first.edge_attr, edge.to(first.edge_attr.dtype))
    new.x = x.to(first.x.dtype)
    return new


def merge(models: Sequence[Any], method: str = "average", *, weights: Sequence[float] | None = None,
          max_iter: int = 100, rounds: int = 20, generator: torch.Generator | None = None,
          example_inputs: Any = None, bn_data: Any = None, scales: bool = True,
          score: Callable[[Any], float] | None = None, target: int = 0, cost: str = "weight",
          solver: str = "emd", reg: float = 0.01, masses: str = "uniform", data: Any = None,
          width: float | dict[str, int] = 1.0, build: Callable[[dict[str, int]], nn.Module] | None = None,
          ridge: float = 1e-4) -> Any:
    """Merge networks of one architecture (for ``"ot_fusion"``: of one family) into one.

    Args:
        models: ``nn.Module``s or ParamGraphs (modules are converted with ``to_graph``).
        method: ``"average"`` / ``"uniform_soup"``, ``"aligned"`` (align all to the first),
            ``"aligned_iterative"`` (MergeMany), ``"greedy_soup"`` (needs ``score``) or ``"ot_fusion"``
            (optimal-transport fusion onto ``models[target]``, see :mod:`wsl.align.ot_fusion`) or ``"pleas"``
            (partial matching + per-layer least squares on ``data``, see :mod:`wsl.align.pleas`; modules only).
        weights: averaging weights (default uniform; not used by the greedy soup).
        max_iter: weight-matching sweeps per alignment; ``rounds``: MergeMany rounds.
        generator: class visiting order of weight matching.
        example_inputs: tracing inputs for modules (see ``wsl.trace``).
        bn_data: inputs to recompute BatchNorm statistics of the merged module (see :func:`reset_bn`).
        scales: aligned methods also solve ReLU scales / tanh-sin signs (see :func:`wsl.align.weight_matching`).
        score: for ``"greedy_soup"``: called with a candidate network (an ``nn.Module`` when given modules,
            else a ParamGraph) and returns a validation score, higher is better.
        target: for ``"ot_fusion"``: the index of the model the others are transported onto; the result has
            its architecture (its widths).
        cost: for ``"ot_fusion"``: ``"weight"`` (incoming weights) or ``"activation"`` (activations on
            ``data``, an input tensor / dict / iterable of batches; needs modules).
        solver, reg: for ``"ot_fusion"``: ``"emd"`` (exact) or ``"sinkhorn"`` with entropic ``reg`` (relative
            to the largest cost).
        masses: for ``"ot_fusion"``: ``"uniform"`` or ``"importance"`` (norm of incoming weights).
        data: for ``"ot_fusion"`` with ``cost="activation"``: example inputs; for ``"pleas"`` (required): inputs
            (a tensor or an iterable of batches) or ``"synthetic"`` (Gaussian inputs of the example input shape).
        width, build, ridge: for ``"pleas"``: the merged width per permutation class (a ratio in ``[1, 2]`` or
            ``{set name: int}``), ``build(widths) -> nn.Module`` for widths above the models', and the
            least-squares ridge term (see :func:`wsl.align.pleas.pleas`).

    Returns:
        An ``nn.Module`` (a copy of ``models[0]``, for ``"ot_fusion"`` of ``models[target]``, with the merged
        weights; for ``"pleas"`` of a wider width ``build(widths)``) when given modules, else a ParamGraph.
    """
    if method not in METHODS:
        raise ValueError(f"merge: method must be one of {METHODS}, got {method!r}")
    ot_opts = {"target": target, "cost": cost, "solver": solver, "reg": reg, "masses": masses, "data": data}
    pleas_opts = {"width": width, "build": build, "ridge": ridge}
    odd_pleas = [k for k, v in pleas_opts.items() if v != _PLEAS_DEFAULTS[k]]
    if odd_pleas and method != "pleas":
        raise ValueError(f"merge: {', '.join(odd_pleas)} apply only to method='pleas' (method={method!r})")
    odd = [k for k, v in ot_opts.items() if k != "data" and v != _OT_DEFAULTS[k]]
    if odd and method != "ot_fusion":
        raise ValueError(f"merge: {', '.join(odd)} apply only to method='ot_fusion' (method={method!r})")
    if method == "ot_fusion":
        return _ot_merge(models, weights, example_inputs, bn_data, scales, ot_opts)
    if method == "pleas":
        from .align.pleas import pleas

        if bn_data is not None:
            raise ValueError("merge: method='pleas' recomputes BatchNorm statistics on data=; bn_data is not used")
        return pleas(models, data, weights=weights, scales=scales, example_inputs=example_inputs,
                     generator=generator, **pleas_opts).model
    if data is not None:
        raise ValueError(f"merge: data applies only to method='ot_fusion' or 'pleas' (method={method!r})")
    if method == "greedy_soup":
        if score is None:
            raise ValueError("merge: method='greedy_soup' needs score=<callable(network) -> float, higher is "
                             "better>, e.g. validation accuracy")
        return greedy_soup(models, score, example_inputs=example_inputs, bn_data=bn_data)[0]
    graphs, template = _graphs(models, example_inputs)
    if method == "aligned":
        graphs = [graphs[0]] + [weight_matching(graphs[0], g, max_iter=max_iter, generator=generator,
                                                scales=scales)[1] for g in graphs[1:]]
    elif method == "aligned_iterative":
        graphs = _merge_many(graphs, weights, max_iter, rounds, generator, scales)
    merged = average_graphs(graphs, weights)
    if template is None:
        return merged
    return _as_model(merged, template, bn_data)


def _ot_merge(models: Sequence[Any], weights: Sequence[float] | None, example_inputs: Any, bn_data: Any,
              scales: bool, opts: dict[str, Any]) -> Any:
    """``merge(..., "ot_fusion")``: every model converted on its own (widths may differ), fused onto the target."""
    from .align.ot_fusion import ot_fusion

    if not models:
        raise ValueError("merge: need at least one model or graph")
    data = opts.pop("data")
    if example_inputs is None and isinstance(data, (Tensor, dict)):
        example_inputs = data
    graphs, specs = [], {}
    for i, m in enumerate(models):
        if isinstance(m, ParamGraph):
            graphs.append(m)
        elif isinstance(m, nn.Module):
            key = (type(m), tuple((k, tuple(v.shape)) for k, v in m.state_dict().items()))
            g = to_graph(m, example_inputs=example_inputs, spec=specs.get(key))
            specs.setdefault(key, g.spec)
            graphs.append(g)
        else:
            raise TypeError(f"merge: item {i} is a {type(m).__name__}; pass nn.Modules or ParamGraphs")
    modules = list(models) if all(isinstance(m, nn.Module) for m in models) else None
    if opts["cost"] == "activation" and (modules is None or data is None):
        raise ValueError("merge: ot_fusion with cost='activation' needs nn.Modules and data=<example inputs>")
    merged = ot_fusion(graphs, weights=weights, scales=scales, models=modules, data=data, **opts)
    template = models[opts["target"]]
    if not isinstance(template, nn.Module):
        return merged
    return _as_model(merged, template, bn_data)


def _as_model(merged: ParamGraph, template: nn.Module, bn_data: Any) -> nn.Module:
    """The merged graph written into a copy of ``template``, BatchNorm statistics recomputed on ``bn_data``."""
    model = from_graph(merged, template)
    if bn_data is not None:
        reset_bn(model, bn_data)
    return model


def _merge_many(graphs: list[ParamGraph], weights: Sequence[float] | None, max_iter: int, rounds: int,
                generator: torch.Generator | None, scales: bool = True) -> list[ParamGraph]:
    originals = list(graphs)
    aligned = [graphs[0]] + [weight_matching(graphs[0], g, max_iter=max_iter, generator=generator,
                                             scales=scales)[1] for g in graphs[1:]]
    perms = [None] * len(graphs)
    for _ in range(rounds):
        changed = False
        for i in range(len(graphs)):
            others = [g for j, g in enumerate(aligned) if j != i]
            w = None if weights is None else [x for j, x in enumerate(weights) if j != i]
            el, aligned[i] = weight_matching(average_graphs(others, w), originals[i], max_iter=max_iter,
                                             generator=generator, scales=scales)
            if perms[i] is None or not torch.equal(perms[i], el.perm):
                changed = True
            perms[i] = el.perm
        if not changed:
            break
    return aligned


def greedy_soup(models: Sequence[Any], score: Callable[[Any], float], *, example_inputs: Any = None,
                bn_data: Any = None, progress: bool = False) -> tuple[Any, list[int]]:
    """Greedy model soup: ``(soup, kept)`` with ``kept`` the indices of the ingredients in the soup.

    Ingredients are sorted by their own ``score`` (higher is better); the best starts the soup, and each next
    one stays if the uniform average of the soup with it scores at least as well as the soup without it. The
    soup therefore never scores below the best single ingredient. Meant for fine-tunes of one pretrained
    network (one basin); align independently trained networks first (``merge(..., "aligned")``).
    """
    graphs, template = _graphs(models, example_inputs)

    def realize(g: ParamGraph) -> Any:
        if template is None:
            return g
        net = from_graph(g, template)
        return reset_bn(net, bn_data) if bn_data is not None else net.eval()

    own = [float(score(realize(g))) for g in graphs]
    order = sorted(range(len(graphs)), key=lambda i: -own[i])
    kept, best = [order[0]], own[order[0]]
    it: Iterable[int] = order[1:]
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="greedy soup", unit="ingredient")
    for i in it:
        s = float(score(realize(average_graphs([graphs[j] for j in kept + [i]]))))
        if s >= best:
            kept.append(i)
            best = s
    return realize(average_graphs([graphs[j] for j in kept])), kept


def interpolate(a: Any, b: Any, alphas: Iterable[float], *, example_inputs: Any = None) -> list[Any]:
    """Networks ``(1 - t) a + t b`` for each ``t`` in ``alphas`` (modules in, modules out; graphs in, graphs out)."""
    (ga, gb), template = _graphs([a, b], example_inputs)
    out = []
    for t in alphas:
        g = average_graphs([ga, gb], [1.0 - float(t), float(t)]) if 0 < float(t) < 1 else (ga if float(t) <= 0 else gb)
        out.append(from_graph(g, template) if template is not None else g)
    return out


@dataclass
class Barrier:
    """Loss along the linear path: ``alphas`` [T], ``losses`` [T], ``barrier`` (max excess over the chord)."""

    alphas: list[float]
    losses: list[float]
    barrier: float


def loss_barrier(a: Any, b: Any, loss_fn: Callable[[Any], float], *, alphas: int | Sequence[float] = 11,
                 example_inputs: Any = None, model: nn.Module | None = None) -> Barrier:
    """Loss barrier on the linear path between ``a`` and ``b``.

    Args:
        a, b: modules or ParamGraphs of one architecture.
        loss_fn: called with each interpolated network (an ``nn.Module``) and returns its loss (a float).
        alphas: number of evenly spaced points in ``[0, 1]``, or the points.
        model: a module of the architecture, needed when ``a`` and ``b`` are graphs.
    """
    ts = torch.linspace(0, 1, alphas).tolist() if isinstance(alphas, int) else [float(t) for t in alphas]
    nets = interpolate(a, b, ts, example_inputs=example_inputs)
    if isinstance(nets[0], ParamGraph):
        if model is None:
            raise ValueError("loss_barrier: pass model=<nn.Module of the architecture> to evaluate graphs")
        nets = [from_graph(g, model) for g in nets]
    losses = [float(loss_fn(n)) for n in nets]
    l0, l1 = losses[0], losses[-1]
    t0, t1 = ts[0], ts[-1]
    chord = [l0 + (t - t0) / (t1 - t0) * (l1 - l0) if t1 != t0 else l0 for t in ts]
    return Barrier(ts, losses, max(l - c for l, c in zip(losses, chord)))


def reset_bn(model: nn.Module, data: Any, *, max_batches: int | None = None) -> nn.Module:
    """Recompute every BatchNorm's running statistics on ``data`` (a tensor or an iterable of batches /
    ``(x, y)`` pairs), as an exact average over the data (momentum ``None``); returns ``model`` (in eval mode)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    saved = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    batches = [data] if isinstance(data, Tensor) else data
    with torch.no_grad():
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
    for m, mom in saved.items():
        m.momentum = mom
    model.eval()
    return model


__all__ = ["METHODS", "Barrier", "average_graphs", "greedy_soup", "interpolate", "loss_barrier", "merge", "reset_bn"]
