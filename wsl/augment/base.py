"""Transform protocol, combinators (``Compose``, ``RandomApply``, ``OneOf``) and the augmentation registry.

Protocol
--------
A weight-space transform is a callable ``transform(graph, generator=None) -> ParamGraph`` that returns a
**new** graph and never mutates its input (structure tensors stay shared, feature tensors are fresh).
Randomness comes only from ``generator`` (``None``: torch's default generator, which is what a
:class:`~wsl.data.ZooDataset` uses when it calls ``transform(graph)``). Every transform also works on a plain
state_dict through :meth:`GraphTransform.apply_state_dict`.

What a transform may touch is described once per architecture by :class:`ParamIndex`: the *parameter*
edges (every edge except the fixed weight-1 identity edges of residual sums / products, which are not
parameters) and the node features filled from a tensor. Pass-through values (integer buffers, counters)
are never changed.

Registry
--------
``@register("name")`` on a transform class makes ``wsl.augment.create("name", **kwargs)`` build it;
``available()`` lists the names (timm-style; the tests iterate it).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..graph import NetworkSpec, ParamGraph
from ..graph.builder import NODE_COL
from ..graph.convert import graph_from_state

Generator = torch.Generator | None

# ------------------------------------------------------------------------------------------ registry
_REGISTRY: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make the transform constructible as ``wsl.augment.create(name, ...)``."""

    def deco(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"augmentation name {name!r} is already registered to {_REGISTRY[name].__name__}")
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return deco


def create(name: str, **kwargs: Any) -> GraphTransform:
    """Build the registered transform ``name`` with ``kwargs`` (see :func:`available`)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown augmentation {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name](**kwargs)


def available() -> list[str]:
    """Names of all registered transforms, sorted."""
    return sorted(_REGISTRY)


# ------------------------------------------------------------------------------------ parameter index
@dataclass(frozen=True)
class ParamIndex:
    """Which graph entries of one architecture are learnable values, and which tensor each belongs to.

    Shapes:
        ``edge_param`` [E] bool (False on identity edges), ``edge_tid`` [E] long (tensor id, -1 on
        identity edges), ``edge_matrix`` [E] bool (edge of a weight with >= 2 dims: linear / conv /
        attention matrices, not norm gains), ``bias_node`` / ``bias_tid`` [K] (node ids and tensor ids of
        every ``bias`` feature entry), ``has_bias`` [N] bool.
    """

    names: tuple[str, ...]
    edge_param: Tensor
    param_edges: Tensor  # [P_e] ids of the parameter edges (``nonzero(edge_param)``)
    edge_tid: Tensor
    edge_matrix: Tensor
    bias_node: Tensor
    bias_tid: Tensor
    has_bias: Tensor

    @property
    def num_tensors(self) -> int:
        return len(self.names)


_INDEX: weakref.WeakKeyDictionary[NetworkSpec, ParamIndex] = weakref.WeakKeyDictionary()


def param_index(spec: NetworkSpec) -> ParamIndex:
    """The (cached) :class:`ParamIndex` of ``spec``."""
    idx = _INDEX.get(spec)
    if idx is not None:
        return idx
    names: list[str] = []
    edge_tid = torch.full((spec.num_edges,), -1, dtype=torch.long)
    edge_matrix = torch.zeros(spec.num_edges, dtype=torch.bool)
    bias_node, bias_tid = [], []
    for name, t in spec.tensors.items():
        if t.kind == "edges":
            edge_tid[t.offset : t.offset + t.numel] = len(names)
            edge_matrix[t.offset : t.offset + t.numel] = len(t.shape) >= 2
            names.append(name)
        elif t.kind == "nodes" and t.column == NODE_COL["bias"]:
            bias_node.append(t.atoms.reshape(-1))
            bias_tid.append(torch.full((t.numel,), len(names), dtype=torch.long))
            names.append(name)
    nodes = torch.cat(bias_node) if bias_node else torch.zeros(0, dtype=torch.long)
    has_bias = torch.zeros(spec.num_nodes, dtype=torch.bool)
    has_bias[nodes] = True
    idx = ParamIndex(
        names=tuple(names),
        edge_param=edge_tid >= 0,
        param_edges=torch.nonzero(edge_tid >= 0).flatten(),
        edge_tid=edge_tid,
        edge_matrix=edge_matrix,
        bias_node=nodes,
        bias_tid=torch.cat(bias_tid) if bias_tid else torch.zeros(0, dtype=torch.long),
        has_bias=has_bias,
    )
    _INDEX[spec] = idx
    return idx


def require_spec(graph: Any, who: str) -> NetworkSpec:
    """The graph's spec, or a clear error for batches / foreign objects."""
    if not isinstance(graph, ParamGraph):
        raise TypeError(f"{who} takes a ParamGraph (from wsl.to_graph), got {type(graph).__name__}")
    if "ptr" in graph._store:
        raise ValueError(f"{who} works on single graphs: apply it per item (as a ZooDataset transform), "
                         "not to a Batch")
    spec = graph._store.get("spec", None)
    if not isinstance(spec, NetworkSpec):
        raise TypeError(f"{who}: the graph carries no NetworkSpec (build it with wsl.to_graph)")
    return spec


def with_values(graph: ParamGraph, edge_attr: Tensor | None = None, x: Tensor | None = None) -> ParamGraph:
    """A new graph sharing ``graph``'s structure with new edge / node features (``None``: keep)."""
    new = graph.clone_structure()
    if edge_attr is not None:
        new.edge_attr = edge_attr
    if x is not None:
        new.x = x
    return new


# ------------------------------------------------------------------------------------------ protocol
class GraphTransform:
    """Base class of weight-space transforms: override :meth:`forward` (``graph, generator -> new graph``)."""

    registry_name: str = ""
    function_preserving: bool = False  # True: the transformed network computes the same function

    def forward(self, graph: ParamGraph, generator: Generator) -> ParamGraph:
        raise NotImplementedError

    def __call__(self, graph: ParamGraph, generator: Generator = None) -> ParamGraph:
        require_spec(graph, type(self).__name__)
        return self.forward(graph, generator)

    def apply_state_dict(self, state: Mapping[str, Tensor], spec: NetworkSpec,
                         generator: Generator = None) -> dict[str, Tensor]:
        """Transform a plain state_dict of ``spec``'s architecture (``wsl.trace(model)`` gives the spec)."""
        return self(graph_from_state(spec, state), generator).to_state_dict()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def _call(t: Callable, graph: ParamGraph, generator: Generator) -> ParamGraph:
    if isinstance(t, GraphTransform):
        return t(graph, generator)
    return t(graph)  # plain callables (e.g. WeightStats normalization) take no generator


@register("compose")
class Compose(GraphTransform):
    """Apply ``transforms`` in order (plain ``graph -> graph`` callables such as ``WeightStats`` are allowed)."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = [t for t in transforms if t is not None]
        self.function_preserving = all(getattr(t, "function_preserving", False) for t in self.transforms)

    def forward(self, graph: ParamGraph, generator: Generator) -> ParamGraph:
        for t in self.transforms:
            graph = _call(t, graph, generator)
        return graph


@register("random_apply")
class RandomApply(GraphTransform):
    """Apply ``transform`` with probability ``p`` (else return the input graph unchanged)."""

    def __init__(self, transform: Callable, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomApply: p must be in [0, 1], got {p}")
        self.transform, self.p = transform, p
        self.function_preserving = getattr(transform, "function_preserving", False)

    def forward(self, graph: ParamGraph, generator: Generator) -> ParamGraph:
        if float(torch.rand((), generator=generator)) < self.p:
            return _call(self.transform, graph, generator)
        return graph


@register("one_of")
class OneOf(GraphTransform):
    """Apply one of ``transforms``, drawn with probabilities proportional to ``weights`` (default uniform)."""

    def __init__(self, transforms: Sequence[Callable], weights: Sequence[float] | None = None) -> None:
        self.transforms = list(transforms)
        if not self.transforms:
            raise ValueError("OneOf needs at least one transform")
        w = torch.ones(len(self.transforms)) if weights is None else torch.tensor(list(weights), dtype=torch.float)
        if w.numel() != len(self.transforms) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"OneOf: weights must be {len(self.transforms)} non-negative numbers, not all zero")
        self.weights = w / w.sum()
        self.function_preserving = all(getattr(t, "function_preserving", False) for t in self.transforms)

    def forward(self, graph: ParamGraph, generator: Generator) -> ParamGraph:
        i = int(torch.multinomial(self.weights, 1, generator=generator))
        return _call(self.transforms[i], graph, generator)
