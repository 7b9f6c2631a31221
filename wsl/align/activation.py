"""Activation matching: pair neurons of two networks by how their activations correlate on data.

Reference: Ainsworth et al., *Git Re-Basin* (ICLR 2023), "activation matching"; Li et al., *Convergent
Learning: Do Different Neural Networks Learn the Same Representations?* (ICLR 2016).

For every free permutation class, with ``Z^a``, ``Z^b`` [samples, n] the standardized activations of its
captured cells,

.. math::
    \\pi = \\arg\\max_\\pi \\sum_{\\text{captured cells}} \\sum_q \\operatorname{corr}(Z^a_{:,q}, Z^b_{:,\\pi(q)})

one linear assignment per class (classes are independent given activations).

Scope: activations are captured with forward hooks on the module whose name the tracer gave the neuron
set (``nn.Linear``, ``nn.ConvNd`` — channel dimension 1 —, norm layers, any leaf module called as a module).
A class is matched by activations when at least one of its cells is captured (a residual stream is
captured through any of its layers). Classes with no captured cell (merges of functional ops, attention
heads, layers whose weights are used without calling the module, such as ``nn.MultiheadAttention``'s
``out_proj``) fall back to weight matching with the activation-matched classes held fixed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..graph import ParamGraph, SymmetryElement, from_graph, to_graph
from .canonical import canonicalize, compose
from .weight_matching import Matcher, _lap

_CHANNEL_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm,
                  nn.modules.instancenorm._InstanceNorm)


def capture(model: nn.Module, graph: ParamGraph, data: Any) -> dict[int, Tensor]:
    """``{set start: activations [samples, set size]}`` for every neuron set produced by a named module."""
    modules = dict(model.named_modules())
    out: dict[int, Tensor] = {}
    hooks = []
    for s in graph.spec.sets:
        mod = modules.get(s.name)
        if mod is None or s.size < 2 or s.kind == "input":
            continue

        channel_first = isinstance(mod, _CHANNEL_FIRST)

        def hook(_m: nn.Module, _inp: Any, y: Any, s=s, channel_first=channel_first) -> None:
            if not isinstance(y, Tensor):
                return
            z = y.detach().movedim(1, -1) if channel_first and y.dim() > 1 else y.detach()
            if z.shape[-1] == s.size:
                out.setdefault(s.start, []).append(z.reshape(-1, s.size).double())

        hooks.append(mod.register_forward_hook(hook))
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(data, Tensor):
                model(data)
            elif isinstance(data, dict):
                model(**data)
            else:
                for batch in data:
                    model(batch[0] if isinstance(batch, (tuple, list)) else batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(training)
    return {k: torch.cat(v) for k, v in out.items()}


def _standardize(z: Tensor) -> Tensor:
    z = z - z.mean(0)
    return z / z.std(0).clamp(min=1e-12)


def activation_matching(model_a: nn.Module, model_b: nn.Module, data: Any, *, graph_a: ParamGraph | None = None,
                        graph_b: ParamGraph | None = None, max_iter: int = 100,
                        generator: torch.Generator | None = None,
                        scales: bool = True) -> tuple[SymmetryElement, ParamGraph]:
    """Align ``model_b`` to ``model_a`` by activation correlation on ``data`` (see the module docstring).

    Args:
        model_a, model_b: two networks of one architecture.
        data: an input tensor, a dict of keyword inputs, or an iterable of batches (``(x, y)`` pairs are fine).
        graph_a, graph_b: their graphs, if already converted (else traced from ``model_a`` on ``data``).
        max_iter, generator: for the weight-matching fallback (see :func:`weight_matching`).
        scales: also solve positive-scale / sign-flip symmetries (both models are matched in canonical
            scales, :mod:`wsl.align.canonical`); ``False``: permutations only.

    Returns:
        ``(element, aligned_b)`` with ``aligned_b = graph_b.apply_symmetry(element)``.
    """
    if graph_a is None or graph_b is None:
        example = data if isinstance(data, (Tensor, dict)) else None
        if example is None:
            first = next(iter(data))
            example = first[0] if isinstance(first, (tuple, list)) else first
        graph_a = graph_a if graph_a is not None else to_graph(model_a, example_inputs=example)
        graph_b = graph_b if graph_b is not None else to_graph(model_b, example_inputs=example, spec=graph_a.spec)
    graph_b_in = graph_b
    if scales:  # match canonical copies: sign flips would otherwise turn correlations negative
        fa, graph_a = canonicalize(graph_a)
        fb, graph_b = canonicalize(graph_b)
        model_a = from_graph(graph_a, model_a) if fa is not None else model_a
        model_b = from_graph(graph_b, model_b) if fb is not None else model_b
    else:
        fa = fb = None
    acts_a, acts_b = capture(model_a, graph_a, data), capture(model_b, graph_b, data)
    set_of = {s.start: s for s in graph_a.spec.sets}
    corr = {k: _standardize(acts_a[k]).T @ _standardize(acts_b[k]) / acts_a[k].shape[0]
            for k in acts_a if k in acts_b}
    starts = torch.tensor(sorted(set_of))
    m = Matcher(graph_a, graph_b)
    matched: set[int] = set()
    for root, info in m.index.classes.items():
        if info.blocks is not None:
            continue
        C = torch.zeros(info.size, info.size, dtype=torch.float64)
        hit = False
        for start, size in info.cells:
            s0 = int(starts[torch.searchsorted(starts, torch.tensor(start), right=True) - 1])
            if s0 in corr:
                o = start - s0
                C += corr[s0][o : o + size, o : o + size]
                hit = True
        if hit:
            m.set_local(root, _lap(C)[0])
            matched.add(root)
    m.run(max_iter, generator, skip=matched)
    el = compose(m.perm, fa, fb)
    return el, graph_b_in.apply_symmetry(el)
