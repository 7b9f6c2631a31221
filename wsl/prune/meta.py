"""The learned part of meta pruning: a metanetwork that rewrites a network's weights before it is pruned.

Meta pruning (after *Meta Pruning via Graph Metanetworks*, Liu et al. 2024): a metanetwork reads a trained
network as a parameter graph and writes new weights for it, trained over a zoo so that the rewritten network
keeps its accuracy while its channels become easy to remove (most of a group's channels near zero). Structured
pruning of the rewritten network then loses little, and fine-tuning recovers the rest.

:class:`MetaPruner` wraps any :mod:`wsl.nn` metanetwork with equivariant edge / node outputs (default
:class:`wsl.nn.GMN`) and makes the rewrite **residual** and **scale-aware**::

    w'  = w + delta_scale * rms(tensor of w) * edge_out        (every weight: conv kernel element, linear, norm scale)
    b'  = b + delta_scale * rms(tensor of b) * node_out        (every bias / norm shift)

so a zero output leaves the network exactly as it was (the output heads start at zero), and a unit output moves a
weight by the typical size of its own tensor, whatever the layer. The metanetwork reads each network
standardized by **its own** per-tensor statistics (mean / std of every state-dict tensor of that network,
attached as ``edge_norm`` / ``node_norm``), not by a zoo's: a trained pruner applies to any checkpoint of an
architecture :func:`wsl.to_graph` converts, with nothing else to carry around.

Rewritten weights come out as differentiable state_dicts (:func:`wsl.nn.state_dicts`), ready for
``torch.func.functional_call``; see :mod:`wsl.prune.learn` for the loss and the training loop.

A trained pruner is saved as safetensors (the metanetwork's weights) with a JSON header naming a :mod:`wsl.nn`
class and its keyword arguments (:meth:`MetaPruner.save` / :meth:`MetaPruner.load`): loading runs no pickled
code and builds only classes of :mod:`wsl.nn`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..graph.builder import NODE_COL, NODE_FEATURES
from ..nn.readout import _graph_slices, state_dicts

FORMAT = "wsl-meta-pruner/1"
_LAYOUTS: dict[int, tuple[Any, Tensor, Tensor]] = {}  # id(spec) -> (spec, edge tensor ids, node tensor ids)


def _layout(spec) -> tuple[Tensor, Tensor]:
    """Per edge / per node column, the index of the state-dict tensor it holds (-1: none), cached per spec."""
    hit = _LAYOUTS.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1], hit[2]
    edge = torch.full((spec.num_edges,), -1, dtype=torch.long)
    node = torch.full((spec.num_nodes, len(NODE_FEATURES)), -1, dtype=torch.long)
    for j, t in enumerate(spec.tensors.values()):
        if t.kind == "edges":
            edge[t.offset : t.offset + t.numel] = j
        elif t.kind == "nodes":
            node[t.atoms, t.column] = j
    if len(_LAYOUTS) > 4096:
        _LAYOUTS.clear()
    _LAYOUTS[id(spec)] = (spec, edge, node)
    return edge, node


def tensor_statistics(batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Each network's own per-tensor statistics, spread over its edges and nodes.

    Returns ``(edge_norm [E, 2], node_norm [N, 6], edge_rms [E], bias_rms [N])``: ``edge_norm`` /
    ``node_norm`` in :class:`wsl.nn.stats.WeightStats`' layout (means then stds; a constant tensor gets std 1,
    values that belong to no tensor mean 0 / std 1), and the root-mean-square of the tensor each weight / bias
    belongs to (1 where it is 0 or there is none), the unit of :class:`MetaPruner`'s residual update.
    """
    specs = batch.spec if isinstance(batch.spec, (list, tuple)) else [batch.spec]
    n_edges, n_nodes = batch.edge_attr.shape[0], batch.x.shape[0]
    k = len(NODE_FEATURES)
    edge_seg = torch.full((n_edges,), -1, dtype=torch.long)
    node_seg = torch.full((n_nodes, k), -1, dtype=torch.long)
    offset = 0
    for spec, (n0, n1, e0, e1) in zip(specs, _graph_slices(batch)):
        e_ids, n_ids = _layout(spec)
        edge_seg[e0:e1] = torch.where(e_ids >= 0, e_ids + offset, e_ids)
        node_seg[n0:n1] = torch.where(n_ids >= 0, n_ids + offset, n_ids)
        offset += len(spec.tensors)
    device = batch.edge_attr.device
    edge_seg, node_seg = edge_seg.to(device), node_seg.to(device)
    w = batch.edge_attr[:, 0].detach().double()
    x = batch.x.detach().double()
    em, nm = edge_seg >= 0, node_seg >= 0
    seg = torch.cat([edge_seg[em], node_seg[nm]])
    val = torch.cat([w[em], x[nm]])
    cnt = torch.bincount(seg, minlength=offset).double().clamp(min=1)
    mean = torch.zeros(offset, dtype=torch.float64, device=device).index_add(0, seg, val) / cnt
    sq = torch.zeros(offset, dtype=torch.float64, device=device).index_add(0, seg, val * val) / cnt
    std = (sq - mean * mean).clamp(min=0).sqrt()
    std = torch.where(std >= 1e-6, std, torch.ones_like(std))
    rms = sq.sqrt()
    rms = torch.where(rms > 1e-8, rms, torch.ones_like(rms))
    # a trailing "no tensor" slot: mean 0, std 1, rms 1
    mean, std, rms = (torch.cat([t, t.new_tensor([v])]) for t, v in ((mean, 0.0), (std, 1.0), (rms, 1.0)))
    es = torch.where(em, edge_seg, offset)
    ns = torch.where(nm, node_seg, offset)
    edge_norm = torch.stack([mean[es], std[es]], dim=1).float()
    node_norm = torch.cat([mean[ns], std[ns]], dim=1).float()
    return edge_norm, node_norm, rms[es].float(), rms[ns[:, NODE_COL["bias"]]].float()


def zero_heads_(metanet: nn.Module) -> nn.Module:
    """Zero the last linear layer of the equivariant ``edge_head`` / ``node_head`` (a zero rewrite to start)."""
    found = False
    for name in ("edge_head", "node_head"):
        head = getattr(metanet, name, None)
        layers = [m for m in head.modules() if isinstance(m, nn.Linear)] if isinstance(head, nn.Module) else []
        if layers:
            with torch.no_grad():
                layers[-1].weight.zero_()
                if layers[-1].bias is not None:
                    layers[-1].bias.zero_()
            found = True
    if not found:
        raise TypeError(f"{type(metanet).__name__} has no edge_head / node_head: meta pruning needs a wsl.nn "
                        f"metanetwork with equivariant edge and node outputs (e.g. wsl.nn.GMN)")
    return metanet


def metanet_config(target: Any, kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"target": "GMN", "kwargs": {...}}`` from a class of :mod:`wsl.nn`, its name, or a ``_target_`` path
    (``"wsl.nn.GMN"``); a Hydra-style mapping with ``_target_`` / ``_partial_`` is also accepted."""
    if isinstance(target, Mapping):
        kw = {k: _plain(v) for k, v in target.items() if not str(k).startswith("_")}
        return metanet_config(target["_target_"], {**kw, **(kwargs or {})})
    name = target.__name__ if isinstance(target, type) else str(target)
    name = name.removeprefix("wsl.nn.")
    from .. import nn as wnn

    cls = getattr(wnn, name, None)
    if "." in name or not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise ValueError(f"meta pruning metanetworks come from wsl.nn (e.g. 'GMN'); got {target!r}")
    kw = {k: _plain(v) for k, v in (kwargs or {}).items() if k != "out_dim"}
    return {"target": name, "kwargs": kw}


def _plain(v: Any) -> Any:
    """Plain JSON-able Python from config containers (lists, dicts, scalars)."""
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)) or (hasattr(v, "__iter__") and not isinstance(v, (str, bytes, Tensor))):
        return [_plain(x) for x in v]
    return v


class MetaPruner(nn.Module):
    """A metanetwork that rewrites networks for pruning (see module docstring).

    Args:
        metanet: a :mod:`wsl.nn` metanetwork with ``output="all"`` (edge and node outputs).
        delta_scale: size of a unit output, relative to the rms of the weight's own tensor.
        zero_init: zero the output heads, so training starts from the identity rewrite.
        config: how to rebuild ``metanet`` (:func:`metanet_config`); needed by :meth:`save`.

    >>> pruner = MetaPruner.build("GMN", hidden_dim=32, num_layers=3)      # doctest: +SKIP
    >>> edges, biases = pruner(batch)            # new values for every weight [E] and bias [N]
    >>> sds = pruner.state_dicts(batch)          # differentiable, for torch.func.functional_call
    >>> rewritten = pruner.rewrite(model, torch.zeros(1, 1, 8, 8))
    """

    def __init__(self, metanet: nn.Module, *, delta_scale: float = 1.0, zero_init: bool = True,
                 config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if delta_scale <= 0:
            raise ValueError(f"delta_scale must be positive, got {delta_scale}")
        self.metanet, self.delta_scale = metanet, float(delta_scale)
        self.config = dict(config) if config is not None else None
        if zero_init:
            zero_heads_(metanet)

    @classmethod
    def build(cls, metanet: str = "GMN", *, delta_scale: float = 1.0, **kwargs: Any) -> MetaPruner:
        """A pruner around a fresh ``wsl.nn.<metanet>(out_dim=1, **kwargs)``."""
        cfg = metanet_config(metanet, kwargs)
        from .. import nn as wnn

        net = getattr(wnn, cfg["target"])(out_dim=1, **cfg["kwargs"])
        return cls(net, delta_scale=delta_scale, config=cfg)

    def forward(self, batch) -> tuple[Tensor, Tensor]:
        """New weights ``[E]`` (one per edge; identity edges are ignored by :func:`wsl.nn.state_dicts`) and new
        biases ``[N]`` (used where a node holds a bias) of every network in ``batch``."""
        edge_norm, node_norm, edge_rms, bias_rms = tensor_statistics(batch)
        seen = copy.copy(batch)
        seen.edge_norm, seen.node_norm = edge_norm, node_norm
        out = self.metanet(seen, output="all")
        edges = batch.edge_attr[:, 0] + self.delta_scale * edge_rms * out.edge[:, 0].to(batch.edge_attr.dtype)
        bias = batch.x[:, NODE_COL["bias"]]
        biases = bias + self.delta_scale * bias_rms * out.node[:, 0].to(bias.dtype)
        return edges, biases

    def state_dicts(self, batch) -> list[dict[str, Tensor]]:
        """Rewritten, differentiable state_dicts, one per network of ``batch``."""
        edges, biases = self(batch)
        return state_dicts(batch, edges, biases)

    @torch.no_grad()
    def rewrite(self, model: nn.Module, example_inputs: Any = None, *, spec: Any = None) -> nn.Module:
        """A copy of ``model`` with rewritten weights (the metanetwork in eval mode)."""
        from torch_geometric.data import Batch

        from ..graph.convert import to_graph

        was = self.training
        self.eval()
        try:
            graph = to_graph(model, example_inputs=example_inputs, spec=spec)
            device = next(self.metanet.parameters()).device
            sd = self.state_dicts(Batch.from_data_list([graph]).to(device))[0]
        finally:
            self.train(was)
        new = copy.deepcopy(model)
        new.load_state_dict({k: v.detach() for k, v in sd.items()}, strict=True)  # copies (across devices too)
        return new

    # ----------------------------------------------------------------- files
    def save(self, path: str | Path, **extra: Any) -> Path:
        """Write the metanetwork's weights (safetensors) with a JSON header describing how to rebuild it."""
        from safetensors.torch import save_file

        if self.config is None:
            raise ValueError("this MetaPruner does not know how its metanetwork was built: construct it with "
                             "MetaPruner.build(...) or pass config=metanet_config(cls, kwargs)")
        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"a meta pruner is saved as .safetensors, got {path}")
        header = {"format": FORMAT, "metanet": self.config, "delta_scale": self.delta_scale,
                  **{k: _plain(v) for k, v in extra.items()}}
        state = {k: v.detach().cpu().contiguous() for k, v in self.metanet.state_dict().items()}
        save_file(state, str(path), metadata={"wsl_meta_pruner": json.dumps(header)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> MetaPruner:
        """A pruner saved by :meth:`save` (or by ``wsl train task=pruning``), in eval mode."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"meta pruner {path} does not exist")
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
        except Exception as e:  # noqa: BLE001  not a safetensors file
            raise ValueError(f"{path} is not a meta pruner file (safetensors written by MetaPruner.save / "
                             f"wsl train task=pruning): {e}") from None
        if "wsl_meta_pruner" not in meta:
            raise ValueError(f"{path} is a safetensors file without a wsl meta-pruner header")
        header = json.loads(meta["wsl_meta_pruner"])
        if header.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown meta pruner format {header.get('format')!r} (expected {FORMAT})")
        pruner = cls.build(header["metanet"]["target"], delta_scale=float(header["delta_scale"]),
                           **header["metanet"]["kwargs"])
        pruner.metanet.load_state_dict(load_file(str(path)), strict=True)
        pruner.header = header
        return pruner.eval()
