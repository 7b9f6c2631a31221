"""``ParamGraph``: a network's parameters as a graph (a ``torch_geometric.data.Data``).

Conventions
-----------
* **Nodes are neurons**: input features, output units of every linear / conv layer (one node per
  channel), the outputs of norm layers, residual sums and gated products, embedding vocabularies,
  positions of positional embeddings / class tokens, and one node per attention head.
* **Edges point forward**: from the neuron that feeds a weight to the neuron it feeds. Every weight element
  is one edge (a ``k x k`` conv kernel gives ``k*k`` edges between a channel pair, told apart by
  ``edge_pos``); edges of one tensor are stored contiguously in the tensor's row-major element order.
  Fixed weight-1 ``identity`` edges join neurons to residual sums / products (they are not parameters).
* Features:

  ==============  ==========  ========================================================================
  field           shape       meaning
  ==============  ==========  ========================================================================
  ``x``           [N, 3]      ``bias``, ``running_mean``, ``running_var`` (0 where absent)
  ``edge_attr``   [E, 1]      the weight value
  ``edge_index``  [2, E]      (source, target) node ids
  ``edge_type``   [E] int8    index into ``wsl.graph.EDGE_TYPES`` (``.long()`` it for an embedding)
  ``edge_pos``    [E, 3] i16  kernel offset from the centre (conv), spatial index (dense after flatten)
  ``node_type``   [N]         index into ``wsl.graph.NODE_TYPES`` (input, hidden, norm, merge, ...)
  ``node_layer``  [N]         depth of the neuron's set in the network (0 for inputs)
  ``io``          [N]         0 hidden, 1 input, 2 output neuron (inputs / outputs are never permuted)
  ``io_index``    [N]         index of an input / output neuron, -1 for hidden ones
  ``buffers``     [B]         pass-through values (integer buffers, counters), as float64
  ``spec``        object      the architecture's :class:`~wsl.graph.spec.NetworkSpec`
  ==============  ==========  ========================================================================

Graphs batch with PyG's ``Batch`` / ``DataLoader``: only ``edge_index`` is offset by the node count
(``__inc__`` is explicit, so no field is incremented because its name contains "index").
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import Tensor

with warnings.catch_warnings():  # torch_geometric's import-time torch.jit deprecation notices
    warnings.simplefilter("ignore", FutureWarning)
    from torch_geometric.data import Data

from .builder import NODE_COL
from .symmetry import SymmetryElement


class ParamGraph(Data):
    """Parameter graph of one network; see the module docstring for the fields and conventions."""

    def __inc__(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key == "edge_index":
            return self.num_nodes
        return 0

    def __cat_dim__(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key == "edge_index":
            return -1
        return 0

    @property
    def num_nodes(self) -> int | None:  # type: ignore[override]
        x = self._store.get("x", None)
        if x is not None:
            return int(x.shape[0])
        return super().num_nodes

    @num_nodes.setter
    def num_nodes(self, value: int | None) -> None:
        self._store.num_nodes = value

    # ----------------------------------------------------------------- inverse
    def _require_single(self) -> None:
        if "ptr" in self._store:
            raise ValueError("this is a batch of graphs: call batch.get_example(i).to_state_dict() per graph")

    def to_state_dict(self) -> dict[str, Tensor]:
        """The network's state_dict, bit-exact with the tensors the graph was built from."""
        self._require_single()
        spec = self.spec
        edge = self.edge_attr[:, 0]
        out: dict[str, Tensor] = {}
        for key in spec.keys:
            if key in spec.aliases:
                out[key] = out[spec.aliases[key]]
                continue
            t = spec.tensors[key]
            if t.kind == "edges":
                v = edge[t.offset : t.offset + t.numel]
            elif t.kind == "nodes":
                v = self.x[t.atoms, t.column]
            else:
                v = self.buffers[t.offset : t.offset + t.numel]
            out[key] = v.reshape(t.shape).to(t.dtype, copy=True)
        return out

    # ---------------------------------------------------------------- symmetry
    def apply_symmetry(self, element: SymmetryElement) -> ParamGraph:
        """The graph of the transformed network (same function; a different point in weight space).

        ``element.perm`` is in gather form: new node ``i`` holds old node ``perm[i]``; scale factors are
        applied (in the old labelling) before the permutation.
        """
        self._require_single()
        spec = self.spec
        x, edge = self.x, self.edge_attr
        if element.scale is not None:
            s = element.scale
            src, dst = self.edge_index
            edge = (edge.double() * (s[dst] / s[src])[:, None]).to(edge.dtype)
            x = x.clone()
            x[:, NODE_COL["bias"]] = (x[:, NODE_COL["bias"]].double() * s).to(x.dtype)
        perm = element.perm
        new = self.clone_structure()
        new.x = x[perm]
        new.edge_attr = edge[spec.edge_gather(perm)]
        return new

    def clone_structure(self) -> ParamGraph:
        """A shallow copy sharing the structure tensors (which are per-architecture and read-only)."""
        g = ParamGraph()
        for k, v in self._store.items():
            g._store[k] = v
        return g

    @property
    def num_parameters(self) -> int:
        return self.spec.num_parameters

    def __repr__(self) -> str:
        spec = self._store.get("spec", None)
        base = super().__repr__()
        if spec is None or isinstance(spec, list):
            return base
        return base[:-1] + f", arch={spec.arch!r})"
