"""The computational graph ppuda's GHN-2 reads: built from the autograd graph of one forward pass.

The published GHN-2 weights were trained on graphs made by ppuda's ``deepnets1m.graph.Graph``; predicting
what the reference predicts needs the same nodes in the same order with the same edges, so this module
rebuilds that construction (not :mod:`wsl.hyper.compgraph`'s fx trace, whose nodes and order differ). The
reference does, in order:

1. **Trace.** Run the model once on ``randn(1, *input_shape)`` (``model.expected_input_sz`` or 3x224x224) and
   walk the autograd graph depth-first from the output's ``grad_fn``, children in ``next_functions`` order.
   Entering a function creates its nodes (pre-order): one per parameter it consumes *directly*
   (``AccumulateGrad`` children) whose module type is supported (``Conv2d``, ``Linear``, ``BatchNorm2d``,
   ``LayerNorm``, torchvision's ``LayerNorm2d``; exact types, no subclasses), except the biases of norm layers;
   a function consuming no such parameter is one op node named by its type (``AddBackward0``...). Parameters
   of unsupported modules are skipped (so ``MultiheadAttention``, Swin's bias tables, ConvNeXt's
   ``layer_scale`` are not predicted). A function's nodes are entered "at" the first one and left "from" the
   last one, so ``weight -> bias`` of a conv. Edges go child -> parent (data flow), except towards a bias,
   which is linked from the consuming function's first node.
2. **Linear fix.** A ``Linear`` weight reaches its bias through a transpose, so the trace links
   ``input -> bias <- weight``; every edge into the weight's successors is moved onto the weight, giving
   ``input -> weight -> bias``.
3. **Input node.** Appended last and linked to the single node without a predecessor (more than one: the
   model uses parameters of unsupported modules or constants the reference cannot place: an error).
4. **Order.** Nodes are sorted topologically the way ``networkx.topological_sort`` (>= 2.6) does: Kahn's
   algorithm by generations, zero in-degree nodes in index order, successors in index order.
5. **Filter.** Op nodes of unsupported types are removed, each removal linking its predecessors to its
   successors. Patterns are matched as substrings of node names, in this order: ``Mul`` (kept only when the
   node two places before is a ``Hard*`` activation: squeeze-excitation), ``Clone`` (kept when the node 11
   places before is a ``Softmax``: attention), every unsupported op name, ``Mean`` (kept with
   ``keepdim=True``), ``Add`` and ``Cat`` (kept with more than one predecessor). Within a pattern the removed
   nodes stay in the adjacency matrix until the pass ends.
6. **Virtual edges.** With ``ve_cutoff > 1`` every pair at directed shortest-path distance ``2..cutoff`` gets
   an edge weighted by that distance (the GHN-2 uses cutoff 50; 1 means no virtual edges). Every node must
   reach the last node and be reached from the input.
7. **Features.** Each node gets its primitive (:data:`PRIMITIVES`); parameter nodes and pooling nodes keep a
   name and a shape (a parameter's size; ``(1, 1, kh, kw)`` for pooling, ``(1, 1, 3, 3)`` when the kernel
   size is unknown); the second-to-last node is the classification weight, the last the classification bias.

Shapes::

    graph.node_types: (N,) long, index into PRIMITIVES
    graph.edges: (E, 3) long, [source, target, distance], row-major order of the adjacency matrix
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..hub import HypernetError

#: ppuda's ``PRIMITIVES_DEEPNETS1M``: the op vocabulary of the GHN-2 embedding (index = row of ``embed``)
PRIMITIVES = ("max_pool", "avg_pool", "sep_conv", "dil_conv", "conv", "msa", "cse", "sum", "concat", "input",
              "bias", "bn", "ln", "pos_enc", "glob_avg")

#: autograd function names (before ``Backward``) of the op nodes the reference keeps, and their primitive
OP_PRIMITIVES = {"input": "input", "Mean": "glob_avg", "AdaptiveAvgPool2D": "glob_avg",
                 "MaxPool2DWithIndices": "max_pool", "AvgPool2D": "avg_pool", "Clone": "msa", "Mul": "cse",
                 "Add": "sum", "Cat": "concat"}


def _layer_norm_types() -> tuple[type, ...]:
    try:
        from torchvision.models.convnext import LayerNorm2d
    except ImportError:  # torchvision is optional
        return (nn.LayerNorm,)
    return (nn.LayerNorm, LayerNorm2d)


LN_TYPES = _layer_norm_types()
NORM_TYPES = (nn.BatchNorm2d, *LN_TYPES)
SUPPORTED_TYPES = (nn.Conv2d, nn.Linear, *NORM_TYPES)


def module_primitive(module: nn.Module, param_name: str) -> str:
    """The primitive of a parameter node: ``bias`` for conv / linear biases, ``sep_conv`` / ``dil_conv`` for
    grouped convolutions (dilated: ``dil_conv``), ``conv`` for other conv / linear weights, ``bn``, ``ln``."""
    if type(module) is nn.BatchNorm2d:
        return "bn"
    if type(module) in LN_TYPES:
        return "ln"
    if "bias" in param_name:
        return "bias"
    if isinstance(module, nn.Conv2d) and module.groups > 1:
        return "dil_conv" if min(module.dilation) > 1 else "sep_conv"
    return "conv"


def _op_key(name: str) -> str:
    i = name.find("Backward")
    return name if i < 0 else name[:i]


@dataclass
class GraphNode:
    """One node: ``name`` is the parameter name (parameter nodes; for norm layers the weight's) or the autograd
    function's type name (op nodes); ``module`` the owning module of a parameter node."""

    name: str
    module: nn.Module | None = field(default=None, repr=False)
    shape: tuple[int, ...] | None = None
    attrs: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class ParamNode:
    """A node the GHN predicts for (a parameter, or a pooling op that only carries a shape)."""

    index: int
    name: str  # the parameter name as the reference matches it to modules ("max_pool" for pooling)
    op: str
    shape: tuple[int, ...] | None
    last_weight: bool  # the second-to-last node: the classification weight
    last_bias: bool  # the last node: the classification bias


@dataclass
class PublishedGraph:
    """ppuda's computational graph of a model (module docstring): ``nodes`` in the reference's order,
    ``node_types`` (indices into :data:`PRIMITIVES`), ``edges`` ``[source, target, distance]``."""

    nodes: list[GraphNode]
    ops: list[str]
    edges: torch.Tensor
    param_nodes: list[ParamNode]

    @property
    def node_types(self) -> torch.Tensor:
        return torch.tensor([PRIMITIVES.index(o) for o in self.ops], dtype=torch.long)

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    @classmethod
    def from_module(cls, model: nn.Module, *, input_shape: tuple[int, ...] | None = None,
                    ve_cutoff: int = 50) -> PublishedGraph:
        """Build the graph of ``model`` (one forward pass; its buffers, e.g. BN statistics, are restored)."""
        if _is_torchvision_vit(model):
            raise HypernetError("ppuda's GHN-2 graph construction does not support torchvision's "
                                "VisionTransformer (the reference refuses it: its class token and positional "
                                "embedding are parameters of the VisionTransformer module itself)")
        if input_shape is None:
            sz = getattr(model, "expected_input_sz", 224)
            input_shape = tuple(sz) if isinstance(sz, (tuple, list)) else (3, sz, sz)
        nodes, adj = _trace(model, tuple(input_shape))
        nodes, adj = _filter(nodes, adj)
        adj = _add_virtual_edges(nodes, adj, ve_cutoff)
        ops, param_nodes = _features(nodes)
        a = torch.from_numpy(adj.astype(np.int64))
        ind = torch.nonzero(a)
        edges = torch.cat((ind, a[ind[:, 0], ind[:, 1]].view(-1, 1)), dim=1)
        return cls(nodes=nodes, ops=ops, edges=edges, param_nodes=param_nodes)


def _is_torchvision_vit(model: nn.Module) -> bool:
    try:
        from torchvision.models.vision_transformer import VisionTransformer
    except ImportError:
        return False
    return isinstance(model, VisionTransformer)


# ------------------------------------------------------------------------------------------- 1-4: trace
def _param_owners(model: nn.Module) -> dict[int, tuple[str, nn.Module]]:
    owners: dict[int, tuple[str, nn.Module]] = {}
    for mname, m in model.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            if p is not None and id(p) not in owners:
                owners[id(p)] = (f"{mname}.{pname}", m)
    return owners


def _kernel_size(fn: Any) -> tuple[int, ...] | None:
    ks = getattr(fn, "_saved_kernel_size", None)
    return tuple(int(k) for k in ks) if isinstance(ks, (tuple, list)) else None


def forward_once(model: nn.Module, batch: int, input_shape: tuple[int, ...]) -> Any:
    """``model(randn(batch, *input_shape))`` with every parameter requiring grad, for its autograd graph; the
    parameters' ``requires_grad``, the model's buffers (BatchNorm statistics) and the caller's RNG state are
    restored."""
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    grads = {p: p.requires_grad for p in model.parameters()}
    device = next(iter(grads)).device if grads else None
    try:
        for p in grads:
            p.requires_grad_(True)
        with torch.enable_grad(), torch.random.fork_rng(devices=[]):
            return model(torch.randn(batch, *input_shape, device=device))
    finally:
        for p, g in grads.items():
            p.requires_grad_(g)
        with torch.no_grad():
            for k, b in model.named_buffers():
                if k in buffers:
                    b.copy_(buffers[k])


def _trace(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[list[GraphNode], np.ndarray]:
    owners = _param_owners(model)
    out = forward_once(model, 1, input_shape)
    out = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(out, torch.Tensor) or out.grad_fn is None:
        raise HypernetError(f"{type(model).__name__}'s output has no autograd graph; the GHN-2 graph is built "
                            "from one (does the model return a tensor computed from its parameters?)")

    nodes: list[GraphNode] = []
    keys: list[int] = []  # node i's identity (the id of its autograd object); a later duplicate wins the lookup
    seen: dict[Any, tuple[int | None, str]] = {}  # function -> (key of its last node, name)
    first_of: dict[Any, int | None] = {}  # function -> key of its first node
    visited: list[Any] = []

    def enter(fn: Any) -> None:
        """Create ``fn``'s nodes (its supported parameters, or itself as an op)."""
        fn_name = type(fn).__name__
        last = first = None
        if "AccumulateGrad" not in fn_name:
            leaves = []
            for child, _ in fn.next_functions:
                if child is None or not hasattr(child, "variable"):
                    continue
                name, module = owners[id(child.variable)]
                if type(module) not in SUPPORTED_TYPES:
                    continue  # the reference warns "unrecognized layer" and skips the parameter
                if type(module) in NORM_TYPES and ".bias" in name:
                    continue  # norm biases are predicted with their weight, not nodes
                leaves.append((child, GraphNode(name, module, tuple(child.variable.shape))))
            if not leaves:
                attrs = {"keepdim": getattr(fn, "_saved_keepdim", None), "kernel_size": _kernel_size(fn)}
                leaves.append((fn, GraphNode(fn_name, None, None, attrs)))
            for obj, node in leaves:
                last = id(obj)
                first = last if first is None else first
                seen[obj] = (last, node.name)
                nodes.append(node)
                keys.append(last)
        seen[fn] = (last, fn_name)
        first_of[fn] = first
        visited.append(fn)

    # iterative depth-first walk, pre-order, children in next_functions order (the reference recurses, which
    # deep nets can push past Python's recursion limit)
    root = out.grad_fn
    enter(root)
    stack = [iter(root.next_functions)]
    while stack:
        child = next((c for c, _ in stack[-1] if c is not None), None)
        if child is None:
            stack.pop()
        elif child not in seen:
            enter(child)
            stack.append(iter(child.next_functions))
    # edges: each function's first node with each child's last node (towards a bias: the other way round)
    edges = []
    for fn in visited:
        for child, _ in fn.next_functions:
            key, name = seen[child] if child is not None else (None, "")
            if key is not None and first_of[fn] != key:
                edges.append((first_of[fn], key) if "bias" in name else (key, first_of[fn]))

    index = {k: i for i, k in enumerate(keys)}
    n = len(nodes)
    adj = np.zeros((n + 1, n + 1))
    for src, dst in edges:
        adj[index[src], index[dst]] = 1
    for i, node in enumerate(nodes):  # 2. Linear fix
        if type(node.module) is nn.Linear and ".weight" in node.name:
            for succ in np.where(adj[i, :])[0]:
                adj[np.where(adj[:, succ])[0], i] = 1
                adj[:, succ] = 0
                adj[i, succ] = 1
                adj[i, i] = 0
    roots = np.where(adj[:, :-1].sum(0) == 0)[0]  # 3. input node
    if len(roots) != 1:
        names = [nodes[i].name for i in roots[:6]]
        raise HypernetError(f"{type(model).__name__}: the reference GHN-2 graph needs exactly one node fed by the "
                            f"input, but {len(roots)} nodes have no predecessor (first: {names}); ops that consume "
                            "only parameters of module types the GHN-2 does not support (it supports "
                            f"{[t.__name__ for t in SUPPORTED_TYPES]}) start new chains, so the reference cannot "
                            "build this model's graph")
    nodes.append(GraphNode("input"))
    adj[-1, roots] = 1
    adj[np.diag_indices_from(adj)] = 0
    order = _topological_order(adj)  # 4
    return [nodes[i] for i in order], adj[order, :][:, order]


def _topological_order(adj: np.ndarray) -> list[int]:
    """``networkx.topological_sort(nx.DiGraph(adj))`` (networkx >= 2.6: Kahn's algorithm by generations)."""
    indeg = (adj != 0).sum(0).astype(int)
    succ = [np.nonzero(row)[0].tolist() for row in adj]
    order, generation = [], [i for i in range(len(adj)) if indeg[i] == 0]
    while generation:
        order.extend(generation)
        nxt = []
        for u in generation:
            for v in succ[u]:
                indeg[v] -= 1
                if indeg[v] == 0:
                    nxt.append(v)
        generation = nxt
    if len(order) != len(adj):
        raise HypernetError("the model's graph has a cycle; the GHN-2 needs a feed-forward graph")
    return order


# ------------------------------------------------------------------------------------------- 5: filter
def _filter(nodes: list[GraphNode], adj: np.ndarray) -> tuple[list[GraphNode], np.ndarray]:
    unsupported = sorted({nd.name for nd in nodes
                          if type(nd.module) not in SUPPORTED_TYPES and _op_key(nd.name) not in OP_PRIMITIVES})
    # (the reference iterates a set here; removal is path contraction, so the order does not change the result)
    for pattern in ["Mul", "Clone", *unsupported, "Mean", "Add", "Cat"]:
        keep_idx = []
        for i, nd in enumerate(nodes):
            name = nd.name
            if pattern not in name:
                keep_idx.append(i)
                continue
            if name.startswith("Mean"):
                kd = nd.attrs.get("keepdim")
                keep = (kd is True) if kd is not None else (i < len(nodes) - 1 and
                                                            not nodes[i + 1].name.startswith("cells."))
            elif name.startswith("Mul"):  # squeeze-excitation: x * hardsigmoid(...)
                keep = nodes[i - 2].name.startswith("Hard")
            elif name.startswith("Clone"):  # attention
                keep = nodes[i - 11].name.startswith("Softmax")
            elif name.startswith(("Cat", "Add")):  # concatenation / residual sum
                keep = len(np.where(adj[:, i])[0]) > 1
            else:
                keep = False
            if keep:
                keep_idx.append(i)
                continue
            for succ in np.where(adj[i, :])[0]:
                for pred in np.where(adj[:, i])[0]:
                    if succ != pred:
                        adj[pred, succ] = 1
        if len(keep_idx) < len(nodes):
            idx = np.array(keep_idx)
            adj = adj[:, idx][idx, :]
            nodes = [nodes[i] for i in idx]
    return nodes, adj


# ------------------------------------------------------------------------------------------- 6: virtual edges
def _distances(succ: list[list[int]], source: int, cutoff: int | None = None) -> dict[int, int]:
    dist, queue = {source: 0}, deque([source])
    while queue:
        u = queue.popleft()
        if cutoff is not None and dist[u] >= cutoff:
            continue
        for v in succ[u]:
            if v not in dist:
                dist[v] = dist[u] + 1
                queue.append(v)
    return dist


def _add_virtual_edges(nodes: list[GraphNode], adj: np.ndarray, ve_cutoff: int) -> np.ndarray:
    n = len(nodes)
    if np.diag(adj).sum() != 0:
        raise HypernetError("the model's graph has self-loops; the GHN-2 needs a feed-forward graph")
    succ = [np.nonzero(adj[i] == 1)[0].tolist() for i in range(n)]
    pred = [np.nonzero(adj[:, i] == 1)[0].tolist() for i in range(n)]
    unreached = sorted(set(range(n)) - set(_distances(pred, n - 1)))
    if unreached:
        raise HypernetError(f"the reference GHN-2 graph needs every node to reach the output; "
                            f"{[nodes[i].name for i in unreached[:5]]} do not")
    from_input = _distances(succ, 0)
    unreached = [i for i in range(n) if i not in from_input and not nodes[i].name.startswith("pos_enc")]
    if unreached:
        raise HypernetError(f"the reference GHN-2 graph needs every node to be reached from the input; "
                            f"{[nodes[i].name for i in unreached[:5]]} are not")
    if ve_cutoff > 1:
        adj = adj.copy()
        for u in range(n):
            for v, d in _distances(succ, u, ve_cutoff).items():
                if d > 0 and adj[u, v] == 0:
                    adj[u, v] = d
    return adj


# ------------------------------------------------------------------------------------------- 7: features
def _reference_param_name(name: str, is_param: bool) -> str:
    """The reference cuts names at ``stem`` / ``pos_enc`` and, for parameters, inserts ``op`` after ``_ops.<i>``
    (its DeepNets-1M naming); names so changed no longer match the model: those tensors go unpredicted."""
    for word in ("stem", "pos_enc"):
        if word in name:
            name = name[name.find(word):]
            break
    parts = name.split(".")
    for i, s in enumerate(parts):
        if is_param and s == "_ops" and i + 2 < len(parts) and parts[i + 2] != "op" and parts[i + 2].isdigit():
            return ".".join([*parts[:i + 2], "op", *parts[i + 2:]])
    return name


def _features(nodes: list[GraphNode]) -> tuple[list[str], list[ParamNode]]:
    ops, params = [], []
    n = len(nodes)
    for i, nd in enumerate(nodes):
        name, shape = _reference_param_name(nd.name, nd.module is not None), None
        if nd.module is not None:
            op = module_primitive(nd.module, name)
            shape = nd.shape
        else:
            op = OP_PRIMITIVES[_op_key(name)]
            if "pool" in op:  # max_pool / avg_pool (glob_avg has no shape)
                ks = nd.attrs.get("kernel_size")
                shape = (1, 1, *ks) if ks is not None else (1, 1, 3, 3)
        ops.append(op)
        if nd.module is not None or "pool" in op:
            params.append(ParamNode(i, name if nd.module is not None else op, op, shape, i == n - 2, i == n - 1))
    return ops, params
