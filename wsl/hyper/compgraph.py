"""Computational graphs (one node per op) for graph hypernetworks, from the same trace as parameter graphs.

Graph hypernetworks (GHN-2, Knyazev et al. 2021, "Parameter Prediction for Unseen Deep Architectures";
GHN-3, Knyazev et al. 2023) read an architecture as a DAG of *operations*: a node per conv / linear / norm /
activation / sum / concat / pooling op, an edge per data dependency. :func:`comp_graph` builds that DAG with
the tracer of :mod:`wsl.graph.trace` (the module runs once under a ``TorchFunctionMode`` on ``meta``
tensors, through ``torch.func.functional_call``; real tensors when the model's code needs values), so any
module :func:`wsl.to_graph` handles works here too, with no per-family code. :class:`OpTracer` subclasses the
parameter-graph :class:`~wsl.graph.trace.Tracer` and only replaces what is done with each recorded call:

* a call that consumes an activation becomes a node whose type (:data:`OP_TYPES`) comes from the torch
  function name: the ``op_type`` of its :mod:`wsl.graph.registry` entry. The parameters among its arguments
  (directly, or through views / transposes / elementwise functions of one parameter such as ``weight.t()``)
  are **owned** by that node;
* shape-only ops (views, reshapes, permutes, slicing, dropout, dtype casts) and elementwise ops of one
  activation with constants (``x * 0.5``) create no node: their output keeps its producer's node;
* calls on parameters alone create no node either (their outputs remember the parameters), except lookups
  whose indices are constants (``wpe(position_ids)``), which become source ``pos_enc`` nodes;
* every network input gets an ``input`` node and one ``output`` node collects every output tensor.

Nodes are created in execution order, which is a topological order of the DAG.

Shapes:
    ``op_type``: ``[N]`` int64 (index into :data:`OP_TYPES`); ``shape``: ``[N, 4]`` int64, the owned
    primary parameter's ``(out, in, kh, kw)`` (1 where a dim is absent, 0 for nodes without parameters);
    ``edge_index``: ``[2, E]`` forward data-flow edges; :meth:`CompGraph.distances`: ``[N, N]`` directed
    shortest-path lengths (0 on the diagonal, -1 where unreachable).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from ..graph.convert import trace_state
from ..graph.inputs import as_inputs
from ..graph.registry import func_name, op_types
from ..graph.trace import Tracer

OP_TYPES: tuple[str, ...] = (
    "input", "output", "conv", "conv_transpose", "linear", "bn", "ln", "gn", "instance_norm", "rms_norm",
    "attention", "matmul", "embedding", "pos_enc", "cls_token", "scale", "max_pool", "avg_pool",
    "global_pool", "sum", "mul", "concat", "relu", "gelu", "silu", "sigmoid", "tanh", "softmax",
    "hardswish", "act_other", "other",
)
OP_ID = {n: i for i, n in enumerate(OP_TYPES)}
PARAM_OPS = ("conv", "conv_transpose", "linear", "bn", "ln", "gn", "instance_norm", "rms_norm", "attention",
             "embedding", "pos_enc", "cls_token", "scale")

# Torch names the hypernetworks type although the parameter graph has no rule or handler for them (there a
# parameter used on an activation is refused, and an op on activations alone fixes their neurons). They stay out
# of the registry, whose entries promise a parameter-graph rule; a name moves there (with its op_type) once it
# gets one. wsl.hyper.compgraph refuses to import while a name is in both.
_UNMODELLED_OP_TYPES = {
    "bilinear": "linear",  # nn.Bilinear
    "baddbmm": "matmul",
    "embedding_bag": "embedding",
    "hstack": "concat", "vstack": "concat",
    "glu": "act_other",
    "prelu": "act_other",  # nn.PReLU's learned slope
}


def _name_to_op() -> dict[str, str]:
    """Torch function name -> op type: the registry's ``op_type`` entries plus :data:`_UNMODELLED_OP_TYPES`."""
    registered = op_types()
    both = sorted(set(registered) & set(_UNMODELLED_OP_TYPES))
    if both:
        raise RuntimeError(f"{', '.join(both)} now have a registered op_type; remove them from "
                           "wsl.hyper.compgraph._UNMODELLED_OP_TYPES")
    table = {**registered, **_UNMODELLED_OP_TYPES}
    unknown = sorted({f"{n}: {op}" for n, op in table.items() if op not in OP_ID})
    if unknown:
        raise ValueError(f"op types outside OP_TYPES ({', '.join(unknown)}); OP_TYPES indexes trained "
                         "hypernetworks, so map these names onto an existing type")
    return table


_NAME_TO_OP = _name_to_op()

# ops that neither compute nor mix: their outputs stay with their input's node
_SKIP = {
    "view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "permute", "transpose", "t", "movedim",
    "moveaxis", "swapaxes", "swapdims", "expand", "expand_as", "repeat", "view_as", "reshape_as", "__getitem__",
    "narrow", "select", "chunk", "split", "unbind", "tensor_split", "index_select", "flip", "roll", "pad",
    "__get__.T", "__get__.mT", "repeat_interleave", "tile", "broadcast_to", "contiguous", "clone", "detach",
    "to", "type", "float", "half", "bfloat16", "double", "cpu", "cuda", "__get__.data", "type_as",
    "requires_grad_", "detach_", "dropout", "dropout_", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout", "constant_pad_nd", "masked_fill", "masked_fill_", "where", "__setitem__", "copy_",
}
# calls on parameters alone that read a table with constant indices: a source node of their own
_SOURCE_LOOKUPS = {"embedding", "embedding_bag", "__getitem__", "index_select"}
# matrix products whose argument at this position is the right-hand ``[in, out]`` operand
_RIGHT_OPERAND = {"matmul": 1, "mm": 1, "bmm": 1, "__matmul__": 1, "addmm": 2, "baddbmm": 2}
_ELEMENTWISE_BINARY = {n for n, op in _NAME_TO_OP.items() if op in ("sum", "mul")}


@dataclass
class CompGraph:
    """The computational graph of one architecture (see module docstring for the fields' meaning)."""

    arch: str
    op_names: list[str]  # per node: op type
    labels: list[str]  # per node: "module.path:torch_function"
    shape: Tensor  # [N, 4] int64
    edge_index: Tensor  # [2, E] int64
    owned: dict[str, int]  # parameter name -> owning node (first op that used it)
    param_shapes: dict[str, tuple[int, ...]]
    shared: dict[str, list[int]] = field(default_factory=dict)  # parameter -> further nodes that used it
    buffers: dict[str, int] = field(default_factory=dict)  # buffer name -> node that read it
    unused: list[str] = field(default_factory=list)  # parameters the forward never touched
    aliases: dict[str, str] = field(default_factory=dict)  # state-dict key -> key sharing its storage
    # parameter -> axis holding its fan-in when that is not the usual ``shape[1:]`` (e.g. HF ``Conv1D``'s
    # ``[in, out]`` weight, used as the right operand of ``addmm``: axis -2)
    fan_in_axes: dict[str, int] = field(default_factory=dict)
    _dist: Tensor | None = None

    @property
    def num_nodes(self) -> int:
        return len(self.op_names)

    @property
    def op_type(self) -> Tensor:
        return torch.tensor([OP_ID[o] for o in self.op_names], dtype=torch.long)

    def params_of(self, node: int) -> list[str]:
        return [p for p, n in self.owned.items() if n == node]

    def distances(self, s_max: int | None = None) -> Tensor:
        """Directed shortest-path lengths ``[N, N]`` (``d[u, v]`` from ``u`` to ``v``; -1: unreachable).

        Lengths above ``s_max`` (when given) are reported as unreachable.
        """
        if self._dist is None:
            self._dist = _all_pairs_shortest_paths(self.edge_index, self.num_nodes)
        d = self._dist
        if s_max is not None:
            d = torch.where(d > s_max, torch.full_like(d, -1), d)
        return d

    def virtual_edges(self, s_max: int = 50) -> tuple[Tensor, Tensor]:
        """GHN-2 virtual edges: pairs ``u -> v`` with ``1 < d(u, v) <= s_max`` and their lengths ``[E_v]``."""
        d = self.distances(s_max)
        src, dst = torch.nonzero(d > 1, as_tuple=True)
        return torch.stack([src, dst]), d[src, dst]

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for o in self.op_names:
            counts[o] = counts.get(o, 0) + 1
        return {"arch": self.arch, "nodes": self.num_nodes, "edges": int(self.edge_index.shape[1]),
                "parameters": len(self.owned), "ops": counts}


def _all_pairs_shortest_paths(edge_index: Tensor, n: int) -> Tensor:
    """Unweighted directed all-pairs shortest paths of a DAG whose node order is topological.

    Dynamic programming in topological order: ``d[:, v] = min_{u -> v} d[:, u] + 1`` (one vectorized
    column update per node, ``O(N · E)`` work).
    """
    big = n + 1
    dist = torch.full((n, n), big, dtype=torch.long)
    dist.fill_diagonal_(0)
    preds: list[list[int]] = [[] for _ in range(n)]
    for s, d in edge_index.t().tolist():
        preds[d].append(s)
    for v in range(n):
        if preds[v]:
            col = dist[:, preds[v]].min(dim=1).values + 1
            dist[:, v] = torch.minimum(dist[:, v], col)
    dist[dist >= big] = -1
    return dist


class OpTracer(Tracer):
    """A :class:`~wsl.graph.trace.Tracer` whose calls build op nodes instead of neuron sets."""

    def __init__(self, module: nn.Module, names: Mapping[int, str], buffers: set[str],
                 shapes: Mapping[str, torch.Size]) -> None:
        super().__init__(module, names, buffers, shapes)
        self.op_names: list[str] = []
        self.labels: list[str] = []
        self.node_shape: list[tuple[int, int, int, int]] = []
        self.edges: set[tuple[int, int]] = set()
        self.owned: dict[str, int] = {}
        self.shared: dict[str, list[int]] = {}
        self.buf_nodes: dict[str, int] = {}
        self._node_of: dict[int, int] = {}  # id(activation) -> producing node
        self._derived: dict[int, tuple[str, ...]] = {}  # id(tensor) -> parameters it was computed from
        self.fan_in_axes: dict[str, int] = {}

    def new_node(self, op: str, label: str) -> int:
        self.op_names.append(op)
        self.labels.append(label)
        self.node_shape.append((0, 0, 0, 0))
        return len(self.op_names) - 1

    def _remember(self, store: dict[int, Any], t: Tensor, value: Any) -> None:
        key = id(t)
        if key not in store:
            weakref.finalize(t, store.pop, key, None)
        store[key] = value

    def mark_input(self, t: Tensor) -> None:
        self._remember(self._node_of, t, self.new_node("input", f"input{len(self.op_names)}"))

    def params_in(self, t: Tensor) -> tuple[str, ...]:
        name = self.names.get(id(t))
        if name is not None:
            return (name,)
        return self._derived.get(id(t), ())

    def record(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        name = func_name(func)
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, Tensor)]
        if out is None and name in ("__setitem__", "copy_") and tensors:
            return  # in-place write: the written tensor keeps its producer
        if not outs:
            return
        self._note_right_operand(name, args)
        srcs = [self._node_of[id(t)] for t in tensors if id(t) in self._node_of]
        params = [p for t in tensors for p in self.params_in(t)]
        learned = list(dict.fromkeys(p for p in params if p not in self.buffers))
        bufs = list(dict.fromkeys(p for p in params if p in self.buffers))
        if not srcs:
            if learned and name in _SOURCE_LOOKUPS and name != "__getitem__" or (
                    learned and name == "__getitem__" and any(not t.is_floating_point() for t in tensors)):
                node = self._node(name, "pos_enc", learned, bufs)
            elif learned or bufs:  # parameter-only arithmetic / views: remember where it came from
                for t in outs:
                    self._remember(self._derived, t, tuple(learned + bufs))
                return
            else:
                return  # constants
        else:
            srcs = list(dict.fromkeys(srcs))
            op = self._op_type(name, len(srcs), learned, tensors)
            if op is None:
                for t in outs:
                    self._remember(self._node_of, t, srcs[0])
                return
            node = self._node(name, op, learned, bufs)
            for s in srcs:
                self.edges.add((s, node))
        for t in outs:
            self._remember(self._node_of, t, node)

    def _note_right_operand(self, name: str, args: tuple) -> None:
        """``x @ W`` / ``addmm(b, x, W)`` with a parameter ``W`` itself (not a transposed view) on the right:
        ``W`` is stored ``[..., in, out]``, so its fan-in is axis -2."""
        pos = _RIGHT_OPERAND.get(name)
        if pos is None or len(args) <= pos or not isinstance(args[pos], Tensor):
            return
        w = self.names.get(id(args[pos]))
        if w is not None and w not in self.buffers and args[pos].dim() >= 2:
            self.fan_in_axes.setdefault(w, -2)

    def _op_type(self, name: str, n_src: int, learned: list[str], tensors: list[Tensor]) -> str | None:
        if name in _SKIP and not learned:
            return None
        if name in ("cat", "concat", "concatenate", "stack") and learned:
            return "cls_token"
        if name in _ELEMENTWISE_BINARY:
            if learned:
                shapes = [self.shapes[p] for p in learned]
                big = any(len([s for s in sh if s > 1]) >= 2 for sh in shapes)
                return "pos_enc" if big and _NAME_TO_OP[name] == "sum" else "scale"
            if n_src < 2:
                return None  # x * 0.5, x + mask: a constant does not make an op node
        op = _NAME_TO_OP.get(name)
        if op == "matmul" and learned:
            return "linear"
        if op is None:
            return "linear" if learned and name in ("addmm", "addmv") else "other"
        return op

    def _node(self, name: str, op: str, learned: list[str], bufs: list[str]) -> int:
        node = self.new_node(op, f"{self.module_path() or 'root'}:{name}")
        for p in learned:
            if p in self.owned:
                self.shared.setdefault(p, []).append(node)
            else:
                self.owned[p] = node
        for b in bufs:
            self.buf_nodes.setdefault(b, node)
        mine = [p for p in learned if self.owned[p] == node]
        if mine:
            primary = max(mine, key=lambda p: (len(self.shapes[p]), self.numels[p]))
            self.node_shape[node] = shape_features(tuple(self.shapes[primary]))
        return node


def shape_features(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """``(out, in, kh, kw)`` of a parameter shape: 1-D ``(C, 1, 1, 1)``, 2-D ``(O, I, 1, 1)``, conv kernels
    their first two spatial sizes (a 1-D kernel ``(O, I, k, 1)``), higher dims folded into ``kw``."""
    s = [int(x) for x in shape] or [1]
    out = s[0]
    inn = s[1] if len(s) > 1 else 1
    kh = s[2] if len(s) > 2 else 1
    kw = 1
    for x in s[3:]:
        kw *= x
    return (out, inn, kh, kw)


def comp_graph(module: nn.Module, example_inputs: Any = None) -> CompGraph:
    """Trace ``module`` (in eval mode, on meta tensors when possible) into its :class:`CompGraph`.

    ``example_inputs``: a tensor, a tuple of positional inputs or a dict of keyword inputs (default: a guess
    from the first layer, as :func:`wsl.trace` does).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"comp_graph() needs an nn.Module, got {type(module).__name__}")
    args, kwargs = as_inputs(example_inputs, module)
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        try:
            return _comp_graph(module, args, kwargs, meta=True)
        except Exception:  # noqa: BLE001  the model's code needs real values: run it for real
            return _comp_graph(module, args, kwargs, meta=False)
    finally:
        for m, t in modes.items():
            m.training = t


def _comp_graph(module: nn.Module, args: tuple, kwargs: dict, *, meta: bool) -> CompGraph:
    state = module.state_dict(keep_vars=True)
    ts = trace_state(module, state, args, kwargs, meta=meta)
    aliases, buffer_keys = ts.aliases, ts.buffer_keys
    tracer = OpTracer(module, ts.names, ts.buffer_names, {k: v.shape for k, v in state.items()})
    with torch.no_grad():
        out = tracer.run(ts.params, ts.args, ts.kwargs)
    sink = tracer.new_node("output", "output")
    for t in tree_flatten(out)[0] if not hasattr(out, "to_tuple") else tree_flatten(out.to_tuple())[0]:
        if isinstance(t, Tensor) and id(t) in tracer._node_of:
            tracer.edges.add((tracer._node_of[id(t)], sink))
    edges = sorted(tracer.edges)
    learned = [k for k in state if k not in buffer_keys and k not in aliases]
    return CompGraph(
        arch=type(module).__name__,
        op_names=tracer.op_names,
        labels=tracer.labels,
        shape=torch.tensor(tracer.node_shape, dtype=torch.long).reshape(-1, 4),
        edge_index=torch.tensor(edges, dtype=torch.long).reshape(-1, 2).t().contiguous(),
        owned=dict(tracer.owned),
        param_shapes={k: tuple(state[k].shape) for k in learned},
        shared=tracer.shared,
        buffers=tracer.buf_nodes,
        unused=[k for k in learned if k not in tracer.owned],
        aliases=aliases,
        fan_in_axes={k: v for k, v in tracer.fan_in_axes.items() if k in learned},
    )
