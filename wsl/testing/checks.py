"""Property checks: bit-exact round trip, symmetry invariance, sensitivity to inconsistent permutations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from ..graph import ParamGraph, SymmetryElement, from_graph


def assert_roundtrip(graph: ParamGraph, reference: Mapping[str, Tensor]) -> None:
    """``graph.to_state_dict()`` equals ``reference`` bit for bit (same keys, dtypes, shapes, values)."""
    got = graph.to_state_dict()
    if list(got) != list(reference):
        missing = [k for k in reference if k not in got]
        extra = [k for k in got if k not in reference]
        raise AssertionError(f"state_dict keys differ: missing {missing[:5]}, extra {extra[:5]}")
    for k, v in reference.items():
        g = got[k]
        if g.dtype != v.dtype or g.shape != v.shape:
            raise AssertionError(f"{k}: got {g.dtype}{tuple(g.shape)}, expected {v.dtype}{tuple(v.shape)}")
        if not torch.equal(g, v.detach()):
            bad = (g != v.detach()).sum().item()
            raise AssertionError(f"{k}: {bad} elements differ after the round trip")


def _outputs(model: nn.Module, inputs: Any) -> list[Tensor]:
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


def max_output_diff(a: nn.Module, b: nn.Module, inputs: Any) -> float:
    """Largest absolute difference between the floating outputs of two models (both put in eval mode)."""
    a.eval()
    b.eval()
    oa, ob = _outputs(a, inputs), _outputs(b, inputs)
    if len(oa) != len(ob):
        raise AssertionError("models return different numbers of outputs")
    return max(((x - y).abs().max().item() for x, y in zip(oa, ob)), default=0.0)


def symmetry_output_diff(model: nn.Module, graph: ParamGraph, element: SymmetryElement, inputs: Any) -> float:
    """Output change after applying ``element`` to the graph and writing it back into ``model``."""
    return max_output_diff(model, from_graph(graph.apply_symmetry(element), model), inputs)


def inconsistent_graph(graph: ParamGraph, generator: torch.Generator | None = None) -> ParamGraph:
    """``graph`` with one free neuron set's *incoming* weights permuted but its outgoing ones left alone.

    This is the classic wrong permutation (rows of one layer moved without the columns of the next): it
    is not a symmetry, so the network's outputs must change.
    """
    spec = graph.spec
    sym = spec.symmetry
    starts, sizes = sym.cell_start.tolist(), sym.cell_size.tolist()
    src = graph.edge_index[0]
    for c, root in enumerate(sym.cell_class.tolist()):
        if sym.class_fixed.get(root, False) or sizes[c] < 2:
            continue
        s = starts[c]
        if not bool(((src >= s) & (src < s + sizes[c])).any()):
            continue  # neurons that feed nothing: moving them changes nothing
        local = torch.randperm(sizes[c], generator=generator)
        if torch.equal(local, torch.arange(sizes[c])):
            local = torch.roll(local, 1)
        perm = torch.arange(spec.num_nodes)
        perm[s : s + sizes[c]] = s + local
        new = graph.clone_structure()
        new.x = graph.x[perm]
        new.edge_attr = graph.edge_attr[spec.edge_gather(perm, src_perm=torch.arange(spec.num_nodes))]
        return new
    raise ValueError("graph has no free permutation class to build an inconsistent permutation from")
