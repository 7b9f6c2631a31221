"""``to_graph`` / ``from_graph``: checkpoints and modules to parameter graphs and back, exactly.

Tracing happens once per architecture (:func:`trace`, cached per module object and state-dict layout);
converting a checkpoint afterwards is one concatenation of its weights, so converting a zoo of
same-architecture checkpoints runs at memory-copy speed.
"""

from __future__ import annotations

import copy
import os
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map

from .builder import NODE_FEATURES, ConversionError
from .inputs import as_inputs
from .labels import Act
from .paramgraph import ParamGraph
from .spec import NetworkSpec, finish
from .trace import Tracer

_SPEC_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[Any, NetworkSpec]] = weakref.WeakKeyDictionary()


def _layout_key(state: Mapping[str, Tensor], inputs: Any) -> tuple:
    shapes = tuple((k, tuple(v.shape), v.dtype) for k, v in state.items())
    ins = tuple((tuple(t.shape), t.dtype) if isinstance(t, Tensor) else repr(t) for t in tree_flatten(inputs)[0])
    return shapes, ins


def trace(module: nn.Module, example_inputs: Any = None, *, cache: bool = True) -> NetworkSpec:
    """Trace ``module`` (in eval mode) and return its :class:`NetworkSpec`.

    ``example_inputs``: a tensor, a tuple of positional inputs, or a dict of keyword inputs. Default: a
    guess from the first layer (an image batch of one for CNNs, 8 token ids for language models).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"trace() needs an nn.Module, got {type(module).__name__}")
    args, kwargs = as_inputs(example_inputs, module)
    state = module.state_dict(keep_vars=True)
    key = _layout_key(state, (args, kwargs))
    if cache and key in _SPEC_CACHE.get(module, {}):
        return _SPEC_CACHE[module][key]
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        try:
            spec = _trace(module, state, args, kwargs, meta=True)
        except ConversionError:
            raise
        except Exception:  # noqa: BLE001  meta tensors failed (values needed, data-dependent code): real run
            spec = _trace(module, state, args, kwargs, meta=False)
    finally:
        for m, t in modes.items():
            m.training = t
    if cache:
        _SPEC_CACHE.setdefault(module, {})[key] = spec
    return spec


@dataclass
class TraceState:
    """What a recording trace runs on: stand-ins for the module's tensors and converted example inputs.

    ``params``: state-dict key -> stand-in (``meta`` tensors, or fresh views sharing storage), one stand-in per
    storage (tied weights share it); ``names``: ``id(stand-in)`` -> canonical key; ``aliases``: key -> the
    canonical key it shares storage with; ``buffer_keys``: state keys that are buffers (canonical names in
    ``buffer_names``); ``args`` / ``kwargs``: the example inputs on the same device kind.
    """

    params: dict[str, Tensor]
    names: dict[int, str]
    aliases: dict[str, str]
    buffer_keys: set[str]
    buffer_names: set[str]
    args: tuple
    kwargs: dict


def trace_state(module: nn.Module, state: dict[str, Tensor], args: tuple, kwargs: dict, *, meta: bool) -> TraceState:
    """Stand-ins for ``state`` and the inputs (shared by the parameter-graph and computational-graph tracers)."""
    aliases: dict[str, str] = {}
    canonical: dict[int, str] = {}
    for k, v in state.items():
        if id(v) in canonical:
            aliases[k] = canonical[id(v)]
        else:
            canonical[id(v)] = k
    buffer_keys = {k for k, _ in module.named_buffers() if k in state}
    subs: dict[int, Tensor] = {}
    names: dict[int, str] = {}
    params: dict[str, Tensor] = {}
    for k, v in state.items():
        if id(v) not in subs:
            t = torch.empty_like(v, device="meta") if meta else v.detach().view_as(v)  # fresh object, same storage
            subs[id(v)] = t
            names[id(t)] = canonical[id(v)]
        params[k] = subs[id(v)]
    if meta:  # non-persistent buffers must live on the same device as everything else
        for k, b in module.named_buffers():
            if k not in params and b is not None:
                params[k] = b.to("meta")

    def conv(x: Any) -> Any:
        if isinstance(x, Tensor):
            return x.to("meta") if meta else x.detach().clone()
        return x

    return TraceState(params, names, aliases, buffer_keys, {canonical.get(id(state[k]), k) for k in buffer_keys},
                      tree_map(conv, args), tree_map(conv, kwargs))


def _trace(module: nn.Module, state: dict[str, Tensor], args: tuple, kwargs: dict, *, meta: bool) -> NetworkSpec:
    ts = trace_state(module, state, args, kwargs, meta=meta)
    aliases, buffer_keys = ts.aliases, ts.buffer_keys
    tracer = Tracer(module, ts.names, ts.buffer_names, {k: v.shape for k, v in state.items()})
    tracer.builder.buffers_of_state = set(buffer_keys)
    with torch.no_grad():
        out = tracer.run(ts.params, ts.args, ts.kwargs)  # NeedRealValues in meta mode: trace() retries on real values
    outs = []
    for t in _flatten_outputs(out):
        info = tracer.info_of(t)
        if isinstance(info, Act):
            outs.append(info.ids)
            if info.chain is not None and info.chain[0] in tracer.builder.scale:
                tracer.builder.scale[info.chain[0]].broken = True
    shapes = tuple(tuple(t.shape) for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor))
    return finish(
        tracer.builder,
        arch=type(module).__name__,
        state={k: v.detach() for k, v in state.items()},
        aliases=aliases,
        keys=tuple(state.keys()),
        outputs=outs,
        example_shapes=shapes,
    )


def _flatten_outputs(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in _flatten_outputs(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _flatten_outputs(v)]
    leaves = tree_flatten(out)[0]
    return [t for t in leaves if isinstance(t, Tensor)]


# ------------------------------------------------------------------------------------------- conversion
def graph_from_state(spec: NetworkSpec, state: Mapping[str, Tensor]) -> ParamGraph:
    """Fill ``spec``'s structure with the weights of ``state`` (keys and shapes must match the spec). Tensors
    whose dtype differs from the traced module's keep the checkpoint's (:meth:`NetworkSpec.with_dtypes`)."""
    spec = spec.with_dtypes({k: state[k].dtype for k in spec.tensors if k in state})
    pieces = _edge_pieces(spec)
    flat = []
    for p in pieces:
        flat.append(p if isinstance(p, Tensor) else state[p].detach().reshape(-1))
    edge_attr = (torch.cat(flat) if flat else torch.zeros(0)).to(spec.dtype).unsqueeze(1)
    x = torch.zeros(spec.num_nodes, len(NODE_FEATURES), dtype=spec.dtype)
    pt = torch.zeros(spec.num_passthrough, dtype=torch.float64)
    for name, t in spec.tensors.items():
        if t.kind == "nodes":
            x[t.atoms, t.column] = state[name].detach().reshape(-1).to(spec.dtype)
        elif t.kind == "passthrough" and t.numel:
            pt[t.offset : t.offset + t.numel] = state[name].detach().reshape(-1).to(torch.float64)
    return ParamGraph(
        x=x,
        edge_index=spec.edge_index,
        edge_attr=edge_attr,
        edge_type=spec.edge_type,
        edge_pos=spec.edge_pos,
        node_type=spec.node_type,
        node_layer=spec.node_layer,
        io=spec.io,
        io_index=spec.io_index,
        buffers=pt,
        spec=spec,
    )


def _edge_pieces(spec: NetworkSpec) -> list[str | Tensor]:
    cached = getattr(spec, "_pieces", None)
    if cached is not None:
        return cached
    items: list[tuple[int, str | Tensor]] = [(t.offset, name) for name, t in spec.tensors.items() if t.kind == "edges"]
    items += [(off, torch.ones(cnt, dtype=spec.dtype)) for off, cnt in spec.identity_edges]
    items.sort(key=lambda it: it[0])
    pieces = [p for _, p in items]
    object.__setattr__(spec, "_pieces", pieces)
    return pieces


def _resolve_state(obj: Any, arch: Any, *, allow_pickle: bool = False,
                   check_finite: bool = True) -> tuple[dict[str, Tensor], nn.Module, str]:
    from ..io import check_state_dict, load_checkpoint
    from ..io.validate import _check_finite
    from ..arch import build_arch

    if isinstance(arch, str):
        arch = build_arch(arch)
    if isinstance(obj, nn.Module):
        return obj.state_dict(), obj, type(obj).__name__
    if isinstance(obj, (str, os.PathLike)):
        source = os.fspath(obj)
        state = load_checkpoint(source, allow_pickle=allow_pickle, check_finite=check_finite)
    elif isinstance(obj, Mapping):
        source, state = "state_dict", dict(obj)
        if check_finite:  # the same policy as for files
            _check_finite(state, "<state_dict passed to to_graph>")
    else:
        raise TypeError(f"to_graph() takes an nn.Module, a state_dict or a checkpoint path, not {type(obj).__name__}")
    if not isinstance(arch, nn.Module):
        raise ValueError(
            f"converting {source} needs the architecture: pass arch=<nn.Module> (or a string such as "
            "'torchvision:resnet18', 'timm:resnet18', 'hf:gpt2-config.json', 'module:pkg.mod:fn')"
        )
    state = _strip_module_prefix(state, arch)
    check_state_dict(state, arch, source=source)
    return state, arch, source


def _strip_module_prefix(state: dict[str, Tensor], arch: nn.Module) -> dict[str, Tensor]:
    keys = set(arch.state_dict().keys())
    if not (set(state) & keys) and state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def to_graph(
    obj: Any,
    *,
    arch: Any = None,
    example_inputs: Any = None,
    spec: NetworkSpec | None = None,
    allow_pickle: bool = False,
    check_finite: bool = True,
) -> ParamGraph:
    """Convert a network into its :class:`ParamGraph`.

    Args:
        obj: an ``nn.Module``; a state_dict (then ``arch`` defines the architecture); or a checkpoint path
            (safetensors, ``.pt`` / ``.pth`` / ``.bin`` loaded with ``weights_only=True``, an HF directory).
        arch: the module defining the architecture (any weights), or a string such as
            ``"torchvision:resnet18"``. Ignored when ``obj`` is a module.
        example_inputs: inputs used to trace (see :func:`trace`).
        spec: a spec from an earlier :func:`trace` of the same architecture, to skip tracing.
        allow_pickle: allow checkpoints that need arbitrary code execution to load (trusted files only).
        check_finite: refuse a state_dict / checkpoint holding NaN or Inf (as :func:`wsl.load_checkpoint`
            does); ``False`` converts it anyway. Modules are converted as they are.
    """
    state, module, _ = _resolve_state(obj, arch, allow_pickle=allow_pickle, check_finite=check_finite)
    if spec is None:
        spec = trace(module, example_inputs)
    missing = [k for k in spec.keys if k not in state]
    if missing:
        raise ConversionError(f"state_dict lacks {len(missing)} tensors of the spec, e.g. {missing[:3]}")
    return graph_from_state(spec, state)


def from_graph(graph: ParamGraph, model: nn.Module) -> nn.Module:
    """A copy of ``model`` carrying the graph's weights (``model`` itself is not modified)."""
    state = graph.to_state_dict()
    meta = getattr(model.state_dict(), "_metadata", None)
    if meta is not None:  # per-module versions some _load_from_state_dict hooks rely on (e.g. MNASNet)
        state = OrderedDict(state)
        state._metadata = meta  # type: ignore[attr-defined]
    from ..io import CheckpointError, check_state_dict

    try:
        check_state_dict(state, model, source=f"graph of {graph.spec.arch}")
    except CheckpointError as e:
        raise ConversionError(f"graph of {graph.spec.arch} does not fit {type(model).__name__}: {e}") from None
    new = copy.deepcopy(model)
    new.load_state_dict(state, strict=True)
    return new
