"""Check numerically that the symmetries wsl derived for a network really leave its function unchanged.

:func:`verify_symmetries` converts a copy of the model (float64 by default, so float rounding of reordered
sums stays far below the tolerance), applies random elements of ``spec.sample_symmetry`` and compares the
outputs. When an element changes them, each free permutation class (a head class together with the q / k / v
classes whose heads it moves, or a class alone) and the scale / sign sets are tried one at a time, so the
report names the neuron sets whose declared symmetry is wrong.

A declared symmetry that is not one is the worst kind of conversion bug: augmentation, alignment and merging
would silently corrupt the network. Run this on any new architecture (``wsl inspect CKPT --arch ... --verify``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map

from .symmetry import SymmetryElement


def model_outputs(model: nn.Module, inputs: Any) -> list[Tensor]:
    """The floating-point tensors a model returns for ``inputs`` (a tensor, a tuple of args or a kwargs dict)."""
    with torch.no_grad():
        if isinstance(inputs, Mapping):
            out = model(**inputs)
        elif isinstance(inputs, Tensor):
            out = model(inputs)
        else:
            out = model(*inputs)
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    return [t for t in tree_flatten(out)[0] if isinstance(t, Tensor) and t.is_floating_point()]


@dataclass
class SymmetryCheck:
    """Result of :func:`verify_symmetries`. ``ok`` is False when some sampled element changed the outputs."""

    ok: bool
    tolerance: float
    output_scale: float
    free_classes: int
    scale_sets: int
    trials: list[dict[str, float]] = field(default_factory=list)  # per element: moved, max_abs, relative
    culprits: list[dict[str, Any]] = field(default_factory=list)  # kind, sets, relative (when not ok)

    @property
    def worst(self) -> float:
        return max((t["relative"] for t in self.trials), default=0.0)

    def __str__(self) -> str:
        head = (f"symmetry check {'passed' if self.ok else 'FAILED'}: {len(self.trials)} random elements, worst "
                f"relative output change {self.worst:.2e} (tolerance {self.tolerance:.0e}); "
                f"{self.free_classes} free permutation classes, {self.scale_sets} scale / sign sets")
        lines = [head]
        for c in self.culprits:
            lines.append(f"  - {c['kind']} of {', '.join(c['sets'][:6])}"
                         f"{' ...' if len(c['sets']) > 6 else ''}: relative change {c['relative']:.2e}")
        if not self.ok and not self.culprits:
            lines.append("  - no single class breaks the function alone; the classes interact")
        return "\n".join(lines)


def _probe(x: Any, dtype: torch.dtype, seed: int) -> Any:
    """Floating inputs cast to ``dtype``; constant ones (the zeros of a guessed input) replaced by seeded
    normal noise, which a wrong symmetry cannot hide behind."""
    gen = torch.Generator().manual_seed(seed)

    def f(t: Any) -> Any:
        if not isinstance(t, Tensor) or not t.is_floating_point():
            return t
        if t.numel() > 1 and bool((t == t.reshape(-1)[0]).all()):
            t = torch.randn(t.shape, generator=gen)
        return t.to(dtype)

    return tree_map(f, x)


def _max_diff(a: list[Tensor], b: list[Tensor]) -> float:
    if len(a) != len(b):
        return float("inf")
    return max(((x - y).abs().max().item() for x, y in zip(a, b) if x.numel()), default=0.0)


def _units(sym) -> list[tuple[set[int], list[int]]]:
    """Free classes to try one at a time: each flat class with the blocked classes whose heads it moves,
    and each blocked class alone (within-block permutations). Returns (class ids, cells spanned)."""
    classes = sym.cell_class.tolist()
    free = [r for r in dict.fromkeys(classes) if not sym.class_fixed.get(r, False)]
    linked: dict[int, set[int]] = {}
    for c, head in sym.cell_head.items():
        linked.setdefault(classes[head], set()).add(classes[c])
    units = []
    for r in free:
        members = {r} | ({m for m in linked.get(r, ()) if not sym.class_fixed.get(m, False)}
                         if r not in sym.class_blocks else set())
        cells = [c for c, cr in enumerate(classes) if cr in members]
        units.append((members, cells))
    return units


def _set_names(spec, nodes: list[int]) -> list[str]:
    starts = torch.tensor([s.start for s in spec.sets])
    idx = torch.searchsorted(starts, torch.tensor(nodes), right=True) - 1
    return list(dict.fromkeys(spec.sets[i].name for i in idx.tolist()))


def verify_symmetries(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    graph: Any = None,
    trials: int = 3,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    tol: float | None = None,
    randomize: bool = False,
    localize: bool = True,
    max_units: int = 256,
) -> SymmetryCheck:
    """Apply ``trials`` random symmetry elements to a copy of ``model`` and check its outputs do not change.

    Args:
        model: the network (not modified: a deep copy is cast to ``dtype`` and put in eval mode).
        example_inputs: inputs to trace and evaluate with (default: guessed as :func:`wsl.to_graph` does);
            constant floating inputs (all zeros) are replaced by seeded normal noise of the same shape.
        graph: the :class:`~wsl.graph.ParamGraph` of ``model`` already traced in ``dtype`` (skips tracing;
            then ``model`` is used as it is, so it must already be in ``dtype``).
        trials: number of random group elements (permutations with scale / sign factors) to try.
        dtype: precision of the check; float64 keeps rounding of reordered sums near 1e-15.
        tol: largest allowed change relative to ``max(1, largest |output|)``; default 1e-6 in float64,
            1e-3 otherwise.
        randomize: perturb the copy's weights first (``wsl.testing.randomize_``): a freshly initialized model
            with zero biases or unit norm weights can hide a wrong symmetry.
        localize: on failure, try each class and scale set alone and report the ones that break.
        max_units: at most this many classes are tried when localizing.
    """
    from .convert import from_graph, to_graph
    from .inputs import default_inputs

    if graph is not None and randomize:
        raise ValueError("verify_symmetries: randomize=True changes the weights, so a precomputed graph= cannot be "
                         "used; pass one or the other")
    net = copy.deepcopy(model).to(dtype).eval() if graph is None else model.eval()
    if example_inputs is None:
        example_inputs = default_inputs(net)
    x = _probe(example_inputs, dtype, seed)
    if randomize:
        from ..testing.checks import randomize_

        randomize_(net, torch.Generator().manual_seed(seed))
    if graph is None:
        graph = to_graph(net, example_inputs=x)
    spec, sym = graph.spec, graph.spec.symmetry
    ref = model_outputs(net, x)
    scale = max((float(o.abs().max()) for o in ref if o.numel()), default=0.0)
    norm = max(1.0, scale)
    tol = tol if tol is not None else (1e-6 if dtype == torch.float64 else 1e-3)

    def change(el: SymmetryElement) -> float:
        return _max_diff(ref, model_outputs(from_graph(graph.apply_symmetry(el), net), x)) / norm

    result = SymmetryCheck(True, tol, scale, sym.num_free_classes(), len(spec.scale_sets()))
    for t in range(trials):
        el = spec.sample_symmetry(torch.Generator().manual_seed(seed + t))
        moved = int((el.perm != torch.arange(el.perm.numel())).sum())
        rel = change(el)
        result.trials.append({"moved": moved, "max_abs": rel * norm, "relative": rel})
        result.ok = result.ok and rel <= tol
    if result.ok or not localize:
        return result
    gen = torch.Generator().manual_seed(seed)
    starts = sym.cell_start.tolist()
    for members, cells in _units(sym)[:max_units]:
        el = sym.sample(gen, scale=False, classes_only=members)
        rel = change(el)
        if rel > tol:
            nodes = [starts[c] for c in cells]
            result.culprits.append({"kind": "permutation", "sets": _set_names(spec, nodes), "relative": rel})
    full = spec.sample_symmetry(gen)
    if full.scale is not None:
        for s in spec.sets:
            if not s.size or not int(sym.scale_kind[s.start]):
                continue
            factors = torch.ones_like(full.scale)
            factors[s.start:s.start + s.size] = full.scale[s.start:s.start + s.size]
            rel = change(SymmetryElement(torch.arange(spec.num_nodes), factors))
            if rel > tol:
                result.culprits.append({"kind": "scale / sign factors", "sets": [s.name], "relative": rel})
    return result
