"""The computational graph ghn3's GHN-3 reads: ppuda's autograd construction, reworked for modern models.

ghn3 (``ghn3/graph.py``) keeps ppuda's idea (:mod:`.graph`: one forward pass, a depth-first walk of the autograd
graph, op filtering, virtual edges) but changes most steps, so the GHN-3 weights need this construction:

1. **Trace.** ``model(randn(2, *input_shape))`` (batch 2; ``expected_input_sz``, 299 for Inception-v3, else 224);
   every tensor output (a tuple / dict output: each in turn) is walked depth-first from its ``grad_fn``,
   children in ``next_functions`` order. Entering a function creates one node per parameter it consumes
   directly (*any* module's; a parameter shared by several modules is named after the last one), or one op
   node named by its type. A parameter consumed by several functions is one node, at its first position.
   Edges go child -> parent except towards a node whose name contains ``bias`` (linked from the consuming
   function's first node).
2. **Filter** (:func:`_filter`). Removed, each removal linking its predecessors to its successors: parameters
   of module types outside :data:`MODULE_TYPES` (``isinstance``) and biases of norm layers (class name with
   ``norm``), op nodes outside :data:`OP_PRIMITIVES`, then ``Mul`` (kept as squeeze-excitation only in models
   with a sigmoid / swish op, not next to the classifier, and next to a ``hard*`` / ``sigmoid`` / ``relu`` /
   ``mean`` node), ``Mean`` (in models with a sigmoid / swish op kept only next to the classifier),
   ``Add`` / ``Cat`` (kept with more than one incoming edge *before* filtering). Patterns match node names as
   substrings; neighbours are looked up by list position (Python's negative indices wrapping around).
3. **Weight edges.** A weight node without incoming edges that feeds a node of its own module (or a softmax)
   is swapped with it (labels swapped, that edge reversed); if it fed only that node, the successors of the
   swapped node move to the bias.
4. **Softmax edges.** Each softmax successor's other inputs are rewired to the softmax (when one path leads
   from them to it in the graph before this step) or dropped (more paths, or no edge from the softmax).
5. **Swin.** For torchvision's ``SwinTransformer``, edges of ``norm`` / ``attn.proj.bias`` nodes around the
   patch-merging ``reduction`` layers are moved as the reference does. Then ``Add`` / ``Cat`` nodes are
   filtered again (in-degrees now counted on the current graph).
6. **Input, order.** An input node is appended and linked to every node without incoming edges whose name
   contains ``weight``; nodes are sorted topologically like ``networkx.topological_sort`` (kept unsorted if
   there is a cycle, as the reference does). torchvision's ``VisionTransformer`` gets a ``sum`` node after its
   ``pos_embedding`` node (the positional node is isolated and feeds it; the sum inherits its edges);
   ``SqueezeNet``'s final mean moves before its classifier.
7. **Virtual edges** up to ``ve_cutoff`` (shortest-path distance, as :mod:`.graph`; unreachable nodes are
   allowed), then node features: primitives by exact module type (a subclass the reference does not list
   is an error there and here), shapes (3-D ``(1, t, c)`` read as ``(1, c, s, s)``; a 1x1 4-D classifier read as
   2-D), the second-to-last node is the classification weight when its name has ``.weight``, the last the
   classification bias when its name has ``.bias``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..hub import HypernetError
from .graph import OP_PRIMITIVES as _PPUDA_OPS
from .graph import (
    GraphNode,
    ParamNode,
    PublishedGraph,
    _distances,
    _kernel_size,
    _op_key,
    _reference_param_name,
    _topological_order,
    forward_once,
)

#: autograd function names (before ``Backward``) of the op nodes ghn3 keeps, and their primitive
OP_PRIMITIVES = {**{k: v for k, v in _PPUDA_OPS.items() if k != "Clone"}, "Softmax": "msa", "skip_connect": "sum"}


def _tv(module: str, name: str) -> type | None:
    try:
        return getattr(__import__(f"torchvision.models.{module}", fromlist=[name]), name)
    except (ImportError, AttributeError):
        return None


def _named_class(module: nn.Module, names: tuple[tuple[str, str], ...]) -> bool:
    """``isinstance`` against classes this package does not import (transformers, the reference's own)."""
    return any((c.__module__, c.__name__) in names for c in type(module).__mro__)


_HF_CONV1D = (("transformers.pytorch_utils", "Conv1D"),)
_POS_ENC = (("ghn3.ops", "PosEnc"), ("ppuda.deepnets1m.ops", "PosEnc"))
_ENCODER, _LN2D = _tv("vision_transformer", "Encoder"), _tv("convnext", "LayerNorm2d")
#: module types whose parameters are graph nodes (``isinstance``, plus transformers' ``Conv1D`` and the
#: reference's ``PosEnc``)
MODULE_TYPES = tuple(t for t in (nn.Conv2d, nn.Linear, nn.MultiheadAttention, nn.BatchNorm2d, nn.LayerNorm, _LN2D,
                                 nn.Embedding, _ENCODER) if t is not None)


def _supported(module: nn.Module | None) -> bool:
    return module is not None and (isinstance(module, MODULE_TYPES) or _named_class(module, _HF_CONV1D + _POS_ENC))


def node_primitive(module: nn.Module, param_name: str) -> str:
    """A parameter node's primitive, by the module's *exact* type as the reference looks it up."""
    t = type(module)
    if t in (nn.Conv2d, nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear, nn.MultiheadAttention) or \
            (t.__module__, t.__name__) in _HF_CONV1D:
        if "bias" in param_name:
            return "bias"
        if t is nn.Conv2d and module.groups > 1:
            return "dil_conv" if min(module.dilation) > 1 else "sep_conv"
        return "conv"
    if t is nn.BatchNorm2d:
        return "bn"
    if t is nn.LayerNorm or (_LN2D is not None and t is _LN2D):
        return "ln"
    if t is nn.Embedding or (_ENCODER is not None and t is _ENCODER) or (t.__module__, t.__name__) in _POS_ENC:
        return "pos_enc"
    raise HypernetError(f"{param_name}: module type {t.__module__}.{t.__qualname__} is a subclass of a type the "
                        "GHN-3 graph supports but not one it names (ghn3 looks primitives up by exact type and "
                        "fails with a KeyError on this model)")


# ------------------------------------------------------------------------------------------- 1: trace
def _trace(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[list[GraphNode], np.ndarray]:
    owners: dict[int, tuple[str, nn.Module]] = {}
    for mname, m in model.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            owners[id(p)] = (f"{mname}.{pname}", m)  # a shared parameter: the last module names it
    out = forward_once(model, 2, input_shape)
    outs = list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, (tuple, list)) else [out]

    nodes: dict[int, GraphNode] = {}  # key (id of the autograd object) -> node, in first-insertion order
    seen: dict[Any, tuple[int | None, str]] = {}  # autograd object -> (key of its (last) node, name)
    first_of: dict[Any, int | None] = {}
    visited: list[Any] = []

    def enter(fn: Any) -> None:
        fn_name = type(fn).__name__
        last = first = None
        if "AccumulateGrad" not in fn_name:
            leaves = []
            for child, _ in fn.next_functions:
                if child is not None and hasattr(child, "variable"):
                    if id(child.variable) not in owners:
                        raise HypernetError(f"{type(model).__name__}: its forward pass uses a tensor that requires "
                                            "grad but is not one of its parameters; the GHN-3 graph (like ghn3's) "
                                            "needs every leaf of the autograd graph to be a parameter")
                    name, module = owners[id(child.variable)]
                    leaves.append((child, GraphNode(name, module, tuple(child.variable.shape))))
            if not leaves:
                leaves.append((fn, GraphNode(fn_name, None, None, {"kernel_size": _kernel_size(fn)})))
            for obj, node in leaves:
                last = id(obj)
                first = last if first is None else first
                seen[obj] = (last, node.name)
                nodes[last] = node
        seen[fn] = (last, fn_name)
        first_of[fn] = first
        visited.append(fn)

    for v in outs:
        if v is None:
            continue
        if not isinstance(v, torch.Tensor) or v.grad_fn is None:
            raise HypernetError(f"{type(model).__name__}'s output has a {type(v).__name__} without an autograd "
                                "graph; the GHN-3 graph is built from one (the reference fails here too)")
        if v.grad_fn in seen:
            continue
        enter(v.grad_fn)
        stack = [iter(v.grad_fn.next_functions)]
        while stack:
            child = next((c for c, _ in stack[-1] if c is not None), None)
            if child is None:
                stack.pop()
            elif child not in seen:
                enter(child)
                stack.append(iter(child.next_functions))
    index = {k: i for i, k in enumerate(nodes)}
    adj = np.zeros((len(nodes), len(nodes)))
    for fn in visited:
        for child, _ in fn.next_functions:
            key, name = seen[child] if child is not None else (None, "")
            if key is not None and first_of[fn] != key:
                src, dst = (first_of[fn], key) if "bias" in name else (key, first_of[fn])
                adj[index[src], index[dst]] = 1
    return list(nodes.values()), adj


# ------------------------------------------------------------------------------------------- 2: filter
def _filter(nodes: list[GraphNode], adj: np.ndarray, patterns: list[str] | None = None
            ) -> tuple[list[GraphNode], np.ndarray]:
    if patterns is None:
        unsupported = set()
        for nd in nodes:
            op = _op_key(nd.name)
            norm_bias = "norm" in type(nd.module).__name__.lower() and op.endswith(".bias")
            if (norm_bias or not _supported(nd.module)) and op not in OP_PRIMITIVES:
                unsupported.add(nd.name)
        # (the reference iterates a set; removal is path contraction, so the order does not change the result)
        patterns = ["Mul", *sorted(unsupported), "Mean", "Add", "Cat"]
    cse = any("sigmoid" in nd.name.lower() or "swish" in nd.name.lower() for nd in nodes)
    n_in = [int(np.count_nonzero(adj[:, i])) for i in range(len(nodes))]
    for pattern in patterns:
        keep_idx = []
        names = [nd.name.lower() for nd in nodes]
        for i, nd in enumerate(nodes):
            keep = True
            if pattern in nd.name:
                if all(-len(nodes) <= i + j < len(nodes) for j in (-3, 1)):
                    near = {j: names[i + j] for j in (-1, -2, -3, 1)}  # negative indices wrap around
                    head = any(near[j].startswith(("classifier", "fc", "head")) for j in (-1, -2))
                else:
                    near, head = {}, True  # the reference's lookup fails (at the last node): "classifier head"
                if nd.name.startswith("Mean"):
                    keep = head if cse else True
                elif nd.name.startswith("Mul"):
                    keep = cse and not head and (near[-2].startswith(("hard", "sigmoid")) or
                                                 near[-3].startswith(("relu", "mean")) or
                                                 near[1].startswith(("hard", "sigmoid", "relu")))
                elif nd.name.startswith(("Cat", "Add")):
                    keep = n_in[i] > 1
                else:
                    keep = False
                if not keep:
                    for succ in np.where(adj[i, :])[0]:
                        for pred in np.where(adj[:, i])[0]:
                            if succ != pred:
                                adj[pred, succ] = 1
            if keep:
                keep_idx.append(i)
        if len(keep_idx) < len(nodes):
            idx = np.array(keep_idx, dtype=np.int64)
            adj = adj[:, idx][idx, :]
            nodes = [nodes[i] for i in idx]
            n_in = [n_in[i] for i in idx]
    return nodes, adj


# ------------------------------------------------------------------------------------------- 3-5: rewiring
def _fix_weight_edges(nodes: list[GraphNode], adj: np.ndarray) -> None:
    for i in range(len(nodes)):  # nodes swapped ahead are visited at their new place, as in the reference
        node = nodes[i]
        if adj[:, i].sum() > 0 or "weight" not in node.name:
            continue
        for succ in np.where(adj[i, :])[0]:
            same_layer = node.module is nodes[succ].module
            qkv = not adj[:, i].any() and "softmax" in nodes[succ].name.lower()
            if not (same_layer or qkv):
                continue
            n_out = int(np.count_nonzero(adj[i, :]))
            if len(np.setdiff1d(np.where(adj[:, succ])[0], i)) == 0:
                continue  # the weight is the only input of the node: already correct
            nodes[i], nodes[succ] = nodes[succ], nodes[i]
            adj[i, succ], adj[succ, i] = 0, 1
            if n_out == 1:
                moved = np.setdiff1d(np.where(adj[succ, :])[0], i)
                if len(moved):
                    adj[succ, moved] = 0
                    adj[i, moved] = 1


class _PathCounter:
    """Whether there are 0, 1 or more paths between two nodes of a fixed graph (``networkx.all_simple_paths``
    counted up to two)."""

    def __init__(self, adj: np.ndarray) -> None:
        self.succ = [np.nonzero(row)[0].tolist() for row in adj]
        try:
            self.order: list[int] | None = _topological_order(adj)
        except HypernetError:
            self.order = None

    def count(self, source: int, target: int) -> int:
        if source == target:
            return 0
        if self.order is not None:  # a DAG: every path is simple; count in reverse topological order, capped
            reach, stack = {source}, [source]
            while stack:
                for v in self.succ[stack.pop()]:
                    if v not in reach:
                        reach.add(v)
                        stack.append(v)
            if target not in reach:
                return 0
            n: dict[int, int] = {}
            for u in reversed(self.order):
                if u in reach:
                    n[u] = 1 if u == target else min(2, sum(n[v] for v in self.succ[u]))
            return n[source]
        found, stack = 0, [(source, iter(self.succ[source]), {source})]
        while stack and found < 2:
            _, it, on_path = stack[-1]
            v = next(it, None)
            if v is None:
                stack.pop()
            elif v == target:
                found += 1
            elif v not in on_path:
                stack.append((v, iter(self.succ[v]), on_path | {v}))
        return found


def _fix_softmax_edges(nodes: list[GraphNode], adj: np.ndarray) -> None:
    paths = _PathCounter(adj.copy())
    for i, node in enumerate(nodes):
        if "softmax" not in node.name.lower():
            continue
        for succ in np.where(adj[i, :])[0]:
            for j in np.setdiff1d(np.where(adj[:, succ])[0], i):
                n_paths = paths.count(int(j), int(succ))
                if n_paths > 1 or adj[i, j] == 0:
                    adj[j, succ] = 0
                if n_paths == 1 and adj[i, j] == 0:
                    adj[j, i] = 1


def _fix_swin_edges(nodes: list[GraphNode], adj: np.ndarray) -> None:
    names = [nd.name for nd in nodes]
    for i, name in enumerate(names):
        if name.lower().endswith("norm.weight"):
            for succ in np.where(adj[i, :])[0]:
                if names[succ].endswith("norm1.weight") or "Add" in names[succ]:
                    adj[i, succ] = 0
                    target = name.replace("norm", "reduction")
                    j = next((j for j, other in enumerate(names) if target in other), None)
                    if j is not None:
                        adj[i, j] = 1
        elif name.lower().endswith("attn.proj.bias"):
            for succ in np.where(adj[i, :])[0]:
                if names[succ].endswith("reduction.weight"):
                    adj[i, succ] = 0
                    for succ2 in np.where(adj[succ, :])[0]:
                        if names[succ2].startswith("AddBackward"):
                            adj[i, succ2] = 1


# ------------------------------------------------------------------------------------------- 6: input, order
def _add_input_and_sort(model: nn.Module, nodes: list[GraphNode], adj: np.ndarray
                        ) -> tuple[list[GraphNode], np.ndarray]:
    adj = np.pad(adj, ((0, 1), (0, 1)))
    nodes = [*nodes, GraphNode("input")]
    for i in np.where(adj.sum(0) == 0)[0]:
        if "weight" in nodes[i].name:
            adj[-1, i] = 1
    adj[np.diag_indices_from(adj)] = 0
    try:
        order = _topological_order(adj)
        nodes, adj = [nodes[i] for i in order], adj[order, :][:, order]
    except HypernetError:
        pass  # the reference warns and keeps the order
    vit, squeeze = _tv("vision_transformer", "VisionTransformer"), _tv("squeezenet", "SqueezeNet")
    if vit is not None and isinstance(model, vit) or _named_class(model, (("ghn3.ops", "Network"),
                                                                          ("ppuda.deepnets1m.net", "Network"))):
        i = 0
        while i < len(nodes):
            m = nodes[i].module
            if m is not None and (_ENCODER is not None and isinstance(m, _ENCODER) or _named_class(m, _POS_ENC)):
                # the reference inserts the sum node after the positional node but the new adjacency row / column
                # before it: the positional node ends up isolated, feeding a sum that has its former edges
                nodes.insert(i + 1, GraphNode("AddBackward0"))
                adj = np.insert(np.insert(adj, i, 0, axis=0), i, 0, axis=1)
                adj[i, i + 1] = 1
            i += 1
    elif squeeze is not None and isinstance(model, squeeze):
        if not (nodes[-1].name.startswith("MeanBackward") and nodes[-3].name.startswith("classifier")):
            raise HypernetError("SqueezeNet: unexpected graph ending (the reference asserts a mean after the "
                                f"classifier, got {[nd.name for nd in nodes[-3:]]})")
        mean = nodes.pop()
        nodes.insert(len(nodes) - 2, mean)  # the mean goes before the classifier's weight and bias
    return nodes, adj


# ------------------------------------------------------------------------------------------- 7: features
def _add_virtual_edges(adj: np.ndarray, ve_cutoff: int) -> np.ndarray:
    adj[adj > 1] = 0
    if ve_cutoff > 1:
        succ = [np.nonzero(row)[0].tolist() for row in adj]
        direct = adj.copy()
        for u in range(len(adj)):
            for v, d in _distances(succ, u, ve_cutoff).items():
                if d > 0 and direct[u, v] == 0:
                    adj[u, v] = d
    return adj


def _features(nodes: list[GraphNode]) -> tuple[list[str], list[ParamNode]]:
    ops, params = [], []
    n = len(nodes)
    for i, nd in enumerate(nodes):
        name, shape = _reference_param_name(nd.name, nd.module is not None), None
        if nd.module is not None:
            op = node_primitive(nd.module, name)
            shape = nd.shape
        else:
            op = OP_PRIMITIVES.get(_op_key(name), "sum")
            if "pool" in op and nd.name != "input":
                ks = nd.attrs.get("kernel_size")
                shape = (1, 1, *ks) if ks is not None else (1, 1, 3, 3)
        if shape is not None:
            if len(shape) == 3 and shape[0] == 1 and min(shape[1:]) > 1:  # (1, 197, 768) -> (1, 768, 14, 14)
                side = math.floor(shape[1] ** 0.5)
                shape = (1, shape[2], side, side)
            elif len(shape) == 4 and i == n - 2 and max(shape[2:]) == 1:
                shape = shape[:2]
        ops.append(op)
        if nd.module is not None or "pool" in op:
            params.append(ParamNode(i, name if nd.module is not None else op, op, shape,
                                    i == n - 2 and ".weight" in name, i == n - 1 and ".bias" in name))
    return ops, params


def ghn3_graph(model: nn.Module, *, input_shape: tuple[int, ...] | None = None, ve_cutoff: int = 50
               ) -> PublishedGraph:
    """ghn3's graph of ``model`` (module docstring): one forward pass on a batch of two random inputs of
    ``input_shape`` (default: ``model.expected_input_sz``, 3 x 299 x 299 for Inception-v3, else 3 x 224 x 224);
    the model's buffers and the caller's RNG state are restored."""
    if input_shape is None:
        inception = _tv("inception", "Inception3")
        sz = getattr(model, "expected_input_sz", 299 if inception is not None and isinstance(model, inception) else 224)
        input_shape = tuple(sz) if isinstance(sz, (tuple, list)) else (3, sz, sz)
    nodes, adj = _trace(model, tuple(input_shape))
    nodes, adj = _filter(nodes, adj)
    _fix_weight_edges(nodes, adj)
    _fix_softmax_edges(nodes, adj)
    swin = _tv("swin_transformer", "SwinTransformer")
    if swin is not None and isinstance(model, swin):
        _fix_swin_edges(nodes, adj)
    nodes, adj = _filter(nodes, adj, ["Add", "Cat"])
    nodes, adj = _add_input_and_sort(model, nodes, adj)
    if np.diag(adj).any():
        raise HypernetError("the model's graph has self-loops; the GHN-3 needs a feed-forward graph")
    adj = _add_virtual_edges(adj, ve_cutoff)
    ops, param_nodes = _features(nodes)
    a = torch.from_numpy(adj.astype(np.int64))
    ind = torch.nonzero(a)
    edges = torch.cat((ind, a[ind[:, 0], ind[:, 1]].view(-1, 1)), dim=1)
    return PublishedGraph(nodes=nodes, ops=ops, edges=edges, param_nodes=param_nodes)


def dense_adjacency(graph: PublishedGraph) -> torch.Tensor:
    """``(N, N)`` long: the shortest-path distance of each edge (1 real, 2..cutoff virtual), 0 elsewhere."""
    a = torch.zeros(graph.n_nodes, graph.n_nodes, dtype=torch.long)
    a[graph.edges[:, 0], graph.edges[:, 1]] = graph.edges[:, 2]
    return a
