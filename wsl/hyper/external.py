"""Externally parameterized modules: weights that come from outside (a hypernetwork) instead of the model.

A hypernetwork predicts some or all parameters of a *primary* network. :func:`externalize` turns chosen
modules of **any** ``nn.Module`` into externally parameterized ones, without changing the model's class or
code: the chosen ``nn.Parameter`` slots are emptied (set to ``None``, so they leave ``parameters()``,
``state_dict()`` and every optimizer built afterwards) and an :class:`ExternalParams` handle lists them by
their usual dotted names (``"0.weight"``) and shapes. Values are supplied per call:

* ``with ext.using(params): model(x)`` puts one set of tensors (autograd intact, so gradients flow to
  whatever produced them) into the slots and empties them again on exit, also when the forward raises.
* ``ext.batched(params, x)`` runs ``B`` weight sets at once: every tensor in ``params`` carries a leading
  batch dimension ``B``, and so do the tensor arguments; sample ``b`` of the input is processed with weight
  set ``b``. This is ``torch.func.vmap`` over ``torch.func.functional_call``, so it is generic over module
  types (Linear, ConvNd, LayerNorm/GroupNorm, attention, user code). Modules that mutate buffers in forward
  (BatchNorm in training mode) cannot run under ``vmap``: call ``model.eval()`` or use per-sample loops.

Compared with ``hyperlight.hypernetize`` (which swaps each module's class for a dynamically created
``Hypernetized<Cls>``), this keeps module classes untouched and relies only on ``_parameters`` slots, the
same mechanism ``torch.func.functional_call`` uses. Tied parameters (one ``nn.Parameter`` reachable under
several names) become one external parameter, filled into every alias.

Outside ``using`` / ``batched`` a forward of an externalized module raises a ``RuntimeError`` that names the
missing parameters (a forward pre-hook), instead of failing deep inside ``F.linear`` on ``None``.

Example::

    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    ext = externalize(model, modules=["0", "2"])
    ext.shapes            # {'0.weight': (32, 64), '0.bias': (32,), '2.weight': (10, 32), '2.bias': (10,)}
    theta = ext.initial   # the values the model had (detached copies), e.g. to initialise theta_0
    with ext.using(theta):
        y = model(x)                              # [N, 10]
    y = ext.batched(batched_theta, xs)            # xs: [B, N, 64] -> [B, N, 10]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from weakref import WeakKeyDictionary

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

ModuleSelector = str | Sequence[str] | type | tuple[type, ...] | Callable[[str, nn.Module], bool] | None

__all__ = ["ExternalParams", "externalize"]

# module -> names of its parameter slots currently held by an ExternalParams handle
_EXTERNAL: WeakKeyDictionary[nn.Module, set[str]] = WeakKeyDictionary()


def _select_modules(model: nn.Module, modules: ModuleSelector) -> list[tuple[str, nn.Module]]:
    """Resolve a module selector into ``(name, module)`` pairs in ``named_modules`` order."""
    named = dict(model.named_modules())
    if modules is None:
        return [("", model)]
    if isinstance(modules, str):
        modules = [modules]
    if isinstance(modules, type) or (
        isinstance(modules, tuple) and modules and all(isinstance(t, type) for t in modules)
    ):
        types = modules
        chosen = [(n, m) for n, m in named.items() if isinstance(m, types)]
        if not chosen:
            raise ValueError(
                f"externalize: no module of type {types} in {type(model).__name__}; "
                "pass module names, a type present in the model, or a predicate"
            )
        return chosen
    if callable(modules):
        chosen = [(n, m) for n, m in named.items() if modules(n, m)]
        if not chosen:
            raise ValueError("externalize: the module predicate matched no module; check it against model.named_modules()")
        return chosen
    chosen = []
    for name in modules:
        if not isinstance(name, str):
            raise TypeError(
                f"externalize: modules must be names (str), a type, a tuple of types or a predicate; got {name!r}"
            )
        if name not in named:
            avail = [n for n in named if n][:20]
            raise KeyError(
                f"externalize: no module named {name!r} in {type(model).__name__}; available names include {avail}"
            )
        chosen.append((name, named[name]))
    return chosen


class ExternalParams:
    """Handle on the externalized parameters of a model (see the module docstring).

    Attributes:
        model: the model whose parameter slots were emptied (the same object that was passed in).
        shapes: ``{name: torch.Size}`` of every external parameter, in model order.
        initial: ``{name: Tensor}`` detached copies of the values the model held when externalized.
    """

    def __init__(self, model: nn.Module, slots: dict[str, list[tuple[nn.Module, str]]], initial: dict[str, Tensor]):
        self.model = model
        self._slots = slots
        self.initial: dict[str, Tensor] = initial
        self.shapes: dict[str, torch.Size] = {k: v.shape for k, v in initial.items()}
        self._active = False
        self._restored = False
        self._hooks = []
        mod_names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
        # every dotted path under which functional_call must see each external parameter (tied weights)
        self._alias_names = {
            name: [f"{mod_names[id(m)]}.{a}" if mod_names[id(m)] else a for m, a in places]
            for name, places in slots.items()
        }
        by_module: dict[nn.Module, list[str]] = {}
        for name, places in slots.items():
            for mod, _ in places:
                by_module.setdefault(mod, []).append(name)
        for mod, names in by_module.items():
            self._hooks.append(mod.register_forward_pre_hook(self._make_guard(mod, names)))

    # ------------------------------------------------------------------ introspection
    @property
    def names(self) -> list[str]:
        """Names of the external parameters (dotted ``named_parameters`` style)."""
        return list(self.shapes)

    @property
    def numel(self) -> int:
        """Total number of external scalars (the hypernetwork's output size)."""
        return sum(int(s.numel()) for s in self.shapes.values())

    def __len__(self) -> int:
        return len(self.shapes)

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __repr__(self) -> str:
        body = ", ".join(f"{k}: {tuple(v)}" for k, v in self.shapes.items())
        return f"ExternalParams({type(self.model).__name__}, {{{body}}})"

    # ------------------------------------------------------------------ validation
    def _check(self, params: Mapping[str, Tensor], batched: bool) -> int | None:
        if not isinstance(params, Mapping):
            raise TypeError(f"ExternalParams: params must be a mapping name -> Tensor, got {type(params).__name__}")
        missing = [k for k in self.shapes if k not in params]
        extra = [k for k in params if k not in self.shapes]
        if missing or extra:
            raise KeyError(
                f"ExternalParams: params do not match the external parameters; missing {missing}, "
                f"unexpected {extra}; expected exactly {self.names}"
            )
        batch = None
        for k, shape in self.shapes.items():
            t = params[k]
            if not isinstance(t, Tensor):
                raise TypeError(f"ExternalParams: params[{k!r}] must be a Tensor, got {type(t).__name__}")
            got = tuple(t.shape[1:]) if batched else tuple(t.shape)
            if got != tuple(shape) or (batched and t.dim() == 0):
                want = f"(B, {', '.join(map(str, shape))})" if batched else str(tuple(shape))
                hint = ""
                if batched and t.dim() == len(shape):
                    hint = "; batched() needs a leading batch dim B on every tensor"
                elif not batched and t.dim() == len(shape) + 1:
                    hint = "; using() takes one weight set: use batched() for a leading batch dim"
                raise ValueError(f"ExternalParams: params[{k!r}] has shape {tuple(t.shape)}, expected {want}{hint}")
            if batched:
                if batch is None:
                    batch = t.shape[0]
                elif t.shape[0] != batch:
                    raise ValueError(
                        f"ExternalParams: params[{k!r}] has batch size {t.shape[0]}, others have {batch}"
                    )
        return batch

    def _make_guard(self, mod: nn.Module, names: list[str]) -> Callable[..., None]:
        def guard(module: nn.Module, args: Any) -> None:
            if self._restored:
                return
            empty = [n for n in names for (m, a) in self._slots[n] if m is module and m._parameters.get(a) is None]
            if empty:
                raise RuntimeError(
                    f"{type(module).__name__} has external parameters {sorted(set(empty))} with no value: call the "
                    "model inside `with ext.using(params):`, or use ext.batched(params, ...) / "
                    "ext.functional_call(params, ...)"
                )

        return guard

    def _fill(self, params: Mapping[str, Tensor] | None) -> None:
        for name, places in self._slots.items():
            value = None if params is None else params[name]
            for mod, attr in places:
                mod._parameters[attr] = value  # type: ignore[assignment]

    # ------------------------------------------------------------------ use
    @contextmanager
    def using(self, params: Mapping[str, Tensor]) -> Iterator[nn.Module]:
        """Context manager: the model computes with ``params`` (one weight set, exact shapes) inside the block.

        The slots are emptied again on exit, also when the block raises. Nested or concurrent use of the same
        handle raises ``RuntimeError``. Yields the model.
        """
        if self._restored:
            raise RuntimeError("ExternalParams.using: this handle was restore()d; externalize the model again")
        if self._active:
            raise RuntimeError(
                "ExternalParams.using: already inside using()/batched() of this model; nested use is not supported"
                " (exit the outer block first)"
            )
        self._check(params, batched=False)
        self._active = True
        try:
            self._fill(params)
            yield self.model
        finally:
            self._fill(None)
            self._active = False

    def functional_call(self, params: Mapping[str, Tensor], *args: Any, **kwargs: Any) -> Any:
        """``model(*args, **kwargs)`` with one external weight set (``torch.func.functional_call`` semantics)."""
        with self.using(params):
            return self.model(*args, **kwargs)

    def batched(self, params: Mapping[str, Tensor], *args: Any, **kwargs: Any) -> Any:
        """Run ``B`` weight sets on ``B`` inputs: ``out[b] = model_{params[b]}(args[b])``.

        Args:
            params: ``{name: Tensor[B, *shape]}`` for every external parameter.
            *args, **kwargs: tensors are split along dim 0 (size ``B``) and each slice is given to the model
                as-is (so ``x: [B, N, F]`` runs each weight set on its own mini-batch of ``N``); non-tensor
                arguments are passed unchanged to every call.

        Shapes:
            params[name]: ``[B, *shapes[name]]``; args: ``[B, ...]``; returns ``[B, ...]`` (pytree of outputs).
        """
        if self._restored:
            raise RuntimeError("ExternalParams.batched: this handle was restore()d; externalize the model again")
        if self._active:
            raise RuntimeError("ExternalParams.batched: called inside using() of the same model; not supported")
        batch = self._check(params, batched=True)
        for i, a in enumerate(list(args) + list(kwargs.values())):
            if isinstance(a, Tensor) and (a.dim() == 0 or a.shape[0] != batch):
                raise ValueError(
                    f"ExternalParams.batched: tensor argument {i} has shape {tuple(a.shape)}; its first dim must be"
                    f" the weight batch size B={batch}"
                )
        flat = {alias: params[name] for name, aliases in self._alias_names.items() for alias in aliases}
        arg_dims = tuple(0 if isinstance(a, Tensor) else None for a in args)
        kw_keys = list(kwargs)
        kw_dims = tuple(0 if isinstance(kwargs[k], Tensor) else None for k in kw_keys)

        def one(p: dict[str, Tensor], a: tuple, kw: tuple) -> Any:
            return functional_call(self.model, p, a, dict(zip(kw_keys, kw)), strict=False, tie_weights=False)

        self._active = True
        try:
            return vmap(one, in_dims=(0, arg_dims, kw_dims), randomness="different")(
                flat, tuple(args), tuple(kwargs[k] for k in kw_keys)
            )
        finally:
            self._fill(None)
            self._active = False

    def restore(self, params: Mapping[str, Tensor] | None = None) -> nn.Module:
        """Undo :func:`externalize`: put ``nn.Parameter`` s back (``params`` values, default ``initial``).

        Removes the guards; the handle cannot be used afterwards. Returns the model.
        """
        if self._active:
            raise RuntimeError("ExternalParams.restore: called inside using(); exit the block first")
        values = dict(self.initial if params is None else params)
        self._check(values, batched=False)
        for name, places in self._slots.items():
            p = nn.Parameter(values[name].detach().clone())
            for mod, attr in places:
                mod._parameters[attr] = p
                _EXTERNAL.get(mod, set()).discard(attr)
        for h in self._hooks:
            h.remove()
        self._restored = True
        return self.model


def externalize(
    model: nn.Module,
    modules: ModuleSelector = None,
    params: Sequence[str] | None = None,
) -> ExternalParams:
    """Make the parameters of chosen modules external (supplied per call, e.g. by a hypernetwork). In place.

    Args:
        model: any ``nn.Module``; it is modified in place (``copy.deepcopy`` first to keep the original).
        modules: which modules: a name or list of names from ``model.named_modules()`` (``"0"``,
            ``"encoder.layer.1"``), a module type or tuple of types (``nn.Linear``), a predicate
            ``(name, module) -> bool``, or ``None`` for the whole model. Every parameter in the subtree of a
            chosen module is externalized (each once).
        params: optional local parameter names to keep to (e.g. ``["weight"]``: only weights are external,
            biases stay ordinary trainable parameters of the model).

    Returns:
        :class:`ExternalParams` with ``shapes``, ``initial`` values, ``using``, ``batched`` and ``restore``.

    Raises:
        KeyError: a module name that the model does not have.
        ValueError: the selection holds no (remaining) parameters.
        RuntimeError: a chosen parameter was already externalized (the slot is empty).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"externalize: model must be an nn.Module, got {type(model).__name__}")
    chosen = _select_modules(model, modules)
    wanted: dict[int, nn.Parameter] = {}
    for mname, mod in chosen:
        for pname, p in mod.named_parameters(remove_duplicate=False):
            if params is not None and pname.rsplit(".", 1)[-1] not in params:
                continue
            wanted[id(p)] = p
    if not wanted:
        what = [n or "<root>" for n, _ in chosen]
        if any(_EXTERNAL.get(sub) for _, mod in chosen for sub in mod.modules()):
            raise RuntimeError(
                f"externalize: the parameters of modules {what} are already external; restore() the earlier "
                "handle before externalizing them again"
            )
        raise ValueError(
            f"externalize: modules {what} hold no parameters"
            + (f" named {list(params)}" if params is not None else "")
            + "; choose modules that own parameters (e.g. Linear/Conv/Norm layers)"
        )
    slots: dict[str, list[tuple[nn.Module, str]]] = {}
    initial: dict[str, Tensor] = {}
    first_name: dict[int, str] = {}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for attr, p in mod._parameters.items():
            if p is None or id(p) not in wanted:
                continue
            full = f"{mod_name}.{attr}" if mod_name else attr
            name = first_name.setdefault(id(p), full)
            slots.setdefault(name, []).append((mod, attr))
            if name == full:
                initial[name] = p.detach().clone()
    for places in slots.values():
        for mod, attr in places:
            mod._parameters[attr] = None
            _EXTERNAL.setdefault(mod, set()).add(attr)
    return ExternalParams(model, slots, initial)
