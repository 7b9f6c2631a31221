"""Property checks: bit-exact round trip, symmetry invariance, sensitivity to inconsistent permutations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..graph import ParamGraph, SymmetryElement, from_graph
from ..graph.builder import ConversionError
from ..graph.verify import model_outputs


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


def max_output_diff(a: nn.Module, b: nn.Module, inputs: Any) -> float:
    """Largest absolute difference between the floating outputs of two models (both put in eval mode)."""
    a.eval()
    b.eval()
    oa, ob = model_outputs(a, inputs), model_outputs(b, inputs)
    if len(oa) != len(ob):
        raise AssertionError("models return different numbers of outputs")
    return max(((x - y).abs().max().item() for x, y in zip(oa, ob)), default=0.0)


def symmetry_output_diff(model: nn.Module, graph: ParamGraph, element: SymmetryElement, inputs: Any) -> float:
    """Output change after applying ``element`` to the graph and writing it back into ``model``."""
    return max_output_diff(model, from_graph(graph.apply_symmetry(element), model), inputs)


def inconsistent_graph(graph: ParamGraph, generator: torch.Generator | None = None, *,
                       which: str = "first") -> ParamGraph:
    """``graph`` with one free neuron set's *incoming* weights permuted but its outgoing ones left alone.

    This is the classic wrong permutation (rows of one layer moved without the columns of the next): it
    is not a symmetry, so the network's outputs must change. ``which`` picks the first free set in node
    order (next to the inputs) or the ``"last"`` one (next to the outputs).
    """
    if which not in ("first", "last"):
        raise ValueError(f"which must be 'first' or 'last', got {which!r}")
    spec = graph.spec
    sym = spec.symmetry
    starts, sizes = sym.cell_start.tolist(), sym.cell_size.tolist()
    src = graph.edge_index[0]
    order = list(enumerate(sym.cell_class.tolist()))
    for c, root in (order if which == "first" else reversed(order)):
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
        try:
            gather = spec.edge_gather(perm, src_perm=torch.arange(spec.num_nodes))
        except ConversionError:
            continue  # a set whose incoming edges do not permute alone (tied to another set's layout)
        new = graph.clone_structure()
        new.x = graph.x[perm]
        new.edge_attr = graph.edge_attr[gather]
        return new
    raise ValueError("graph has no free permutation class to build an inconsistent permutation from")


def randomize_(
    model: nn.Module,
    generator: torch.Generator | None = None,
    *,
    scale: float = 0.1,
    calibrate: Any = None,
) -> nn.Module:
    """Perturb every floating parameter / statistic in place so no weight is degenerate.

    Freshly built models often have all-zero heads, unit norm weights and zero running means, which makes
    outputs blind to many permutations (a test would pass for the wrong reason). This adds noise
    proportional to each tensor's spread and draws BatchNorm statistics at random. With ``calibrate``
    (example inputs, batch > 1) the BatchNorm statistics are then re-estimated on those inputs, so signals
    neither vanish nor explode through deep networks and the outputs really depend on every layer.
    """
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=generator, dtype=torch.float32).to(t.dtype)
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=generator).to(t.dtype))
                continue
            spread = float(t.float().std()) if t.numel() > 1 else 0.0
            spread = spread if spread > 0 else 0.05
            t.add_(noise * scale * spread)
    if calibrate is not None:
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = {m: m.momentum for m in norms}
        modes = {m: m.training for m in model.modules()}
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration pass
            m.train()
        try:
            model_outputs(model, calibrate)
        finally:
            for m, mom in saved.items():
                m.momentum = mom
                if m.running_var is not None:  # few calibration values: keep gains bounded
                    m.running_var.clamp_(min=float(m.running_var.mean()) * 0.05 + 1e-6)
            for m, t in modes.items():
                m.training = t
    return model
