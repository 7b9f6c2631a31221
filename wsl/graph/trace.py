"""Trace a module by running it once and recording every torch call.

Why not ``torch.fx``: symbolic tracing breaks on data-dependent Python control flow (HF transformers, many
timm models), and a parameter graph needs concrete shapes anyway (a flatten feeding a ``Linear`` needs to
know how many spatial positions each channel contributes). ``wsl`` therefore traces *concretely*: the
module runs once under a :class:`~torch.overrides.TorchFunctionMode` on example inputs, normally with all
parameters and inputs swapped for ``meta`` tensors (no memory, no FLOPs) through
:func:`torch.func.functional_call` (the caller's module is never modified). Models whose Python code needs
real values (``.item()``, data-dependent branches) are retried with real tensors.

Every call is dispatched through the layer-rule registry (:mod:`wsl.graph.registry`, which documents the
dispatch and the protocol handlers follow):

* a **parametric rule** when a parameter takes part: it creates neuron sets and places the parameter's
  elements as edges / node features;
* an **op handler** for parameter-free ops on activations: it replays the op on the activation's neuron-id
  tensor (see :mod:`wsl.graph.labels`) and records symmetry constraints;
* anything else touching an activation falls back to the conservative default: its neurons are marked
  fixed (never permuted), so derived symmetries stay correct, just smaller.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from . import registry
from .builder import ConversionError, GraphBuilder
from .labels import Act, Info, Opaque, Param, compress, unlabelled
from .registry import Call, Handler, func_name

__all__ = ["Call", "Handler", "Tracer", "func_name"]  # Call / Handler / func_name live in wsl.graph.registry


class _Mode(TorchFunctionMode):
    def __init__(self, tracer: Tracer) -> None:
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.tracer.record(func, args, kwargs, out)
        return out


class Tracer:
    """Runs a module once and feeds every call to rules / op handlers, building a :class:`GraphBuilder`."""

    def __init__(self, module: nn.Module, names: Mapping[int, str], buffers: set[str],
                 shapes: Mapping[str, torch.Size]) -> None:
        self.root = module
        self.names = dict(names)  # id(tensor passed to functional_call) -> state-dict key
        self.buffers = buffers
        self.shapes = dict(shapes)
        self.numels = {k: int(torch.Size(v).numel()) for k, v in shapes.items()}
        self.builder = GraphBuilder()
        self._info: dict[int, Info] = {}
        self._module_stack: list[str] = []

    # ----------------------------------------------------------- info store
    def info_of(self, t: Tensor) -> Info | None:
        key = id(t)
        if key in self._info:
            return self._info[key]
        name = self.names.get(key)
        if name is not None:
            numel = self.numels[name]
            elem = torch.arange(numel).reshape(t.shape) if t.ndim else torch.arange(1).reshape(())
            info = Param(name, elem, numel, buffer=name in self.buffers)
            self.set_info(t, info)
            return info
        return None

    def set_info(self, t: Tensor, info: Info) -> None:
        key = id(t)
        if key not in self._info:
            weakref.finalize(t, self._info.pop, key, None)
        self._info[key] = info

    def set_act(self, t: Tensor, ids: Tensor, chain: tuple[int, str] | None = None) -> None:
        if ids.ndim != t.ndim:
            raise ConversionError(f"internal: id tensor has {ids.ndim} dims for a {t.ndim}-d activation")
        self.set_info(t, Act(compress(ids), chain))

    def mark_input(self, t: Tensor) -> None:
        self.set_info(t, Act(unlabelled(t.ndim)))

    # -------------------------------------------------------- module stack
    def module_path(self) -> str:
        return self._module_stack[-1][0] if self._module_stack else ""

    def module_type(self) -> str:
        return self._module_stack[-1][1] if self._module_stack else type(self.root).__name__

    def _hooks(self) -> list[Any]:
        stack = self._module_stack

        def enter(mod: nn.Module, args: Any, name: str) -> None:
            stack.append((name, type(mod).__name__))

        def leave(mod: nn.Module, args: Any, out: Any) -> None:
            stack.pop()

        handles = []
        for name, mod in self.root.named_modules():
            handles.append(mod.register_forward_pre_hook(lambda m, a, n=name: enter(m, a, n)))
            handles.append(mod.register_forward_hook(leave))
        return handles

    # ---------------------------------------------------------------- run
    def run(self, params: dict[str, Tensor], inputs: tuple, kwargs: dict) -> Any:
        from torch.func import functional_call

        for t in tree_flatten((inputs, kwargs))[0]:
            if isinstance(t, Tensor):
                self.mark_input(t)
        handles = self._hooks()
        try:
            with _Mode(self):
                out = functional_call(self.root, params, inputs, kwargs, tie_weights=True, strict=False)
        finally:
            for h in handles:
                h.remove()
        return out

    # ------------------------------------------------------------- record
    def record(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        flat, _ = tree_flatten((args, kwargs))
        infos = [self.info_of(t) for t in flat if isinstance(t, Tensor)]
        if not any(i is not None for i in infos):
            return
        if not any(isinstance(t, Tensor) for t in tree_flatten(out)[0]) and func_name(func) not in _INPLACE_NONE:
            return  # metadata queries (.shape, .is_nested, size(), dim()) carry no neurons
        call = Call(self, func, args, kwargs, out)
        has_act = any(isinstance(i, Act) for i in infos)
        params = [i for i in infos if isinstance(i, (Param, Opaque)) and not (isinstance(i, Param) and i.buffer)]
        buffers = [i for i in infos if isinstance(i, Param) and i.buffer]
        rule = registry.lookup(call.name, params=True)
        if rule is not None and (params or (buffers and has_act and rule.needs_buffers)):
            rule.handler(self, call)
            return
        if params and has_act:
            names = sorted({n for p in params for n in (p.names if isinstance(p, Opaque) else (p.name,))})
            raise ConversionError(
                f"cannot convert parameter(s) {', '.join(names)}: they are used by {call.where()}, for which "
                f"wsl has no conversion rule. Supported parameter ops: {', '.join(registry.names(params=True))}. "
                "Register one with wsl.graph.registry.register_op(..., params=True), or pass a module that uses "
                "supported layers."
            )
        if not has_act:  # parameter-only arithmetic (views, expands, elementwise functions)
            registry.default(params=True).handler(self, call)
            return
        (registry.lookup(call.name, params=False) or registry.default(params=False)).handler(self, call)


# in-place ops that return None but change their first argument
_INPLACE_NONE = {"__setitem__", "copy_", "fill_", "zero_", "masked_fill_", "index_put_", "scatter_"}
