"""The layer-rule registry: one table from torch function names to the handlers that convert them.

Adding a layer family means writing one module in :mod:`wsl.graph.rules` whose handlers carry
:func:`register_op`, and importing it in ``rules/__init__.py``; nothing else needs to change. The tracer (:mod:`wsl.graph.trace`) looks handlers up here,
and the graph hypernetworks (:mod:`wsl.hyper.compgraph`) read their op vocabulary from the ``op_type`` of the
entries. :func:`load_rules` imports :mod:`wsl.graph.rules` once, on the first lookup, so the registry depends
on no rule module at import time; the rule modules import only this module, the builder, the labels and each
other (the tracer only for type hints), so there is no import cycle.

Kinds of entries
----------------
``register_op(*names, params=..., needs_buffers=..., op_type=...)`` registers one handler for torch function
names (``Call.name``, see :func:`func_name`: ``"linear"``, ``"__add__"``, ``"__get__.T"``):

* ``params=True``, a **parametric rule**: called when a learned parameter (or a tensor computed from
  parameters, :class:`~wsl.graph.labels.Opaque`) is among the arguments, whether or not an activation is
  (``p * 2`` reaches the ``mul`` rule with no activation). It creates neuron sets and places the parameter.
* ``params=False``, an **op handler**: called for parameter-free ops on activations. It replays the op on the
  activations' neuron ids and records symmetry constraints. One name may have both kinds (``add`` is
  :func:`~wsl.graph.rules.embedding.elementwise_param` next to a parameter and
  :func:`~wsl.graph.rules.elementwise.binary` between activations); a handler has one kind.
* ``needs_buffers=True`` (parametric rules only): the rule is also called when no learned parameter takes
  part but a buffer does, next to an activation (``batch_norm`` of a ``BatchNorm(affine=False)`` still has
  running statistics to place). Without it, buffers next to an activation are constants to the op handler.
* ``op_type``: the GHN op type of these names (an entry of :data:`wsl.hyper.compgraph.OP_TYPES`); one name
  has at most one ``op_type`` over both kinds. Names without it are ``"other"`` op nodes to hypernetworks.

Two reserved names hold the defaults: :data:`UNKNOWN_OP` (``params=False``,
:func:`~wsl.graph.rules.common.unknown_op`: an op on activations no entry names; its neurons are fixed) and
:data:`PARAMETERS_ONLY` (``params=True``, :func:`~wsl.graph.rules.defaults.derive_param`: a call on
parameters / buffers alone that no rule takes, such as ``cls_token.expand(...)``). Dispatch, in
:meth:`wsl.graph.trace.Tracer.record`, in order: a call with no tracked tensor argument, or with no tensor
output (metadata queries; in-place ops returning ``None`` such as ``__setitem__`` excepted), is skipped; the
rule of its name runs if the conditions above hold; learned parameters next to an activation with no rule
raise :class:`~wsl.graph.builder.ConversionError`; a call with no activation goes to
:data:`PARAMETERS_ONLY`; the rest go to the op handler of their name, else to :data:`UNKNOWN_OP`.

The handler protocol
--------------------
A handler is ``handler(tr: Tracer, call: Call) -> None`` (its return value is ignored). It reads the
arguments from ``call`` (``call.arg(i, name)``, ``call.out``) and what each tensor carries from
``tr.info_of(t)`` (:mod:`wsl.graph.labels`): :class:`~wsl.graph.labels.Act` (dense neuron ids, ``-1`` = no
neuron, plus a scale chain), :class:`~wsl.graph.labels.Param` (the element index of a parameter / buffer at
every position, however it was viewed) or :class:`~wsl.graph.labels.Opaque`; ``None`` is a constant.
Through ``tr.builder`` (:class:`~wsl.graph.builder.GraphBuilder`) it must:

1. **Label every output that carries neurons**: ``tr.set_act(out, ids, chain)`` with ``ids`` of
   ``out.ndim`` dims (broadcastable to ``out.shape``; ``unlabelled(ndim)`` for "no neurons"); for an in-place
   op that returns ``None``, the output is ``call.args[0]``. An unlabelled output is a constant to every later
   op, which silently drops its neurons from every constraint: a handler that cannot say where an output's
   neurons are must call :func:`~wsl.graph.rules.common.unknown_op`, not return. Parameter-only handlers
   label outputs with ``tr.set_info(t, Param(...) | Opaque(...))``.
2. **Create neuron sets in execution order** with ``new_set(size, kind, name, op, fixed=...)`` (``kind`` in
   :data:`~wsl.graph.builder.NODE_TYPES`): creation order is the graph's topological order, so read the
   inputs (:func:`~wsl.graph.rules.common.input_atoms`, which creates fixed ``input`` nodes for positions
   holding no neuron) before creating the output set.
3. **Place every element of every parameter it consumes exactly once**: as edges (``add_edges`` through
   :func:`~wsl.graph.rules.common.place_edges`, one edge per element in the tensor's row-major order, the
   ``axes`` naming which end each tensor axis indexes) or as node features (``add_nodes`` through
   :func:`~wsl.graph.rules.common.place_nodes`, ``column`` in :data:`~wsl.graph.builder.NODE_FEATURES`).
   Get the :class:`Param` with :func:`~wsl.graph.rules.common.weight_info`, which refuses computed tensors.
   A second use of a tensor ties the atoms of both uses instead of storing it again; a partly used or shared
   element raises :class:`ConversionError`. Fixed weight-1 joins (merges, scale / shift sets) are identity
   edges, ``add_edges(None, ...)``, and carry no parameter.
4. **Declare the constraints** that keep the network function unchanged under every permutation the
   derived groups allow: ``fix(atoms)`` (never moved), ``tie(a, b)`` (``a[i]`` and ``b[i]`` move together;
   a tie between a neuron and ``-1`` fixes the neuron), ``keep_together(atoms)`` (mapped onto themselves, e.g.
   a slice), block structure through ``head_set`` / :func:`~wsl.graph.rules.common.blockify`. Entries ``-1``
   are ignored everywhere. Missing a constraint invents a symmetry (the worst bug: augmentations then corrupt
   networks); an extra ``fix`` only removes one. When in doubt, fix.
5. **Raise** :class:`ConversionError` naming ``call.where()`` and a way out for a parameter used in a way the
   graph cannot represent; raise ``NeedRealValues`` (:mod:`wsl.graph.rules.shape`) when a constant's values
   are needed on ``meta`` tensors (:func:`wsl.graph.convert.trace` retries any non-``ConversionError`` failure
   with real tensors).

The scale-chain contract
------------------------
Positive scaling (ReLU / LeakyReLU) and sign flips (tanh, sin) of a layer's output neurons are symmetries
when the neurons' values reach the rest of the network only through that one activation and affine
consumers: :meth:`~wsl.graph.paramgraph.ParamGraph.apply_symmetry` multiplies each edge by
``s[dst] / s[src]`` and each ``bias`` by ``s``, nothing else. Whether that holds is tracked per candidate
set on the activations themselves, as ``Act.chain = (set index, stage)``:

* **Open**: a rule producing a set by a plain affine map calls
  :func:`~wsl.graph.rules.common.output` with ``chain_set=0`` (``Linear`` / ``addmm`` / ``x @ W``, convs).
  That registers ``tr.builder.scale[idx]`` (:class:`~wsl.graph.builder.ScaleCandidate`) and labels the output
  with stage ``"pre"``. No other rule opens a chain.
* **Activate**: at stage ``"pre"``, ``relu`` / ``relu_`` / ``leaky_relu`` / ``leaky_relu_`` add
  ``"positive"`` and ``tanh`` / ``tanh_`` / ``sin`` add ``"odd"`` to ``scale[idx].activations`` and move the
  chain to ``"post"`` (:mod:`wsl.graph.rules.elementwise`). Dropouts keep the chain at either stage.
* **Carry**: an op that commutes with per-neuron scaling at the chain's stage passes ``chain`` to its output:
  shape ops of one activation operand and ``contiguous`` / dtype casts (:mod:`wsl.graph.rules.shape`; zero
  padding of non-neuron dims only at ``"post"``); multiplying / dividing the one activation by a Python
  number; ``mean`` / ``sum`` over non-neuron dims; average pooling, and max pooling only at ``"post"``
  (:mod:`wsl.graph.rules.reduction`).
* **Complete**: a rule consuming the activation linearly, with the parameter as weights, calls
  :func:`~wsl.graph.rules.common.consume` with ``affine=True``: at ``"post"`` that sets
  ``consumed_affine``; at ``"pre"`` (two affine maps with nothing between) it breaks the chain.
* **Break**: every other use must set ``scale[idx].broken = True``:
  :func:`~wsl.graph.rules.common.break_chains` / :func:`~wsl.graph.rules.common.break_if` in op handlers,
  ``consume(x, affine=False)`` in rules (norms, learned shifts / scales, attention, concatenated tokens),
  :func:`~wsl.graph.rules.common.unknown_op` for anything unknown. A handler that neither carries nor breaks
  an operand's chain lets the neurons' values escape uncompensated and invents a symmetry.

Known gaps in the rules as they stand (each can invent a scale symmetry; :func:`wsl.verify_symmetries`
catches them): a shape op with several activation operands whose
chains differ (``cat([relu(l1(x)), x])``) drops the chains without breaking them, and so does zero padding at
``"pre"``; max pooling carries a sign-flip chain (``max`` does not commute with ``-1``).

:func:`wsl.graph.convert._trace` breaks the chains of the network's outputs, and
:func:`wsl.graph.spec.finish` keeps a candidate only if it is not broken, was consumed affinely, is not an
output set and saw exactly one activation kind (``{"positive"}``: positive scale, ``{"odd"}``: sign flip).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from .labels import Info
    from .trace import Tracer

Handler = Callable[["Tracer", "Call"], None]

UNKNOWN_OP = "<unknown op>"  # op handler for ops on activations that no entry names
PARAMETERS_ONLY = "<parameters only>"  # rule for calls on parameters / buffers alone that no rule takes
RESERVED = (UNKNOWN_OP, PARAMETERS_ONLY)


def func_name(func: Any) -> str:
    """The registry name of a torch function / method / property getter (``"__get__.T"`` for ``x.T``)."""
    name = getattr(func, "__name__", None) or str(func)
    if name == "__get__":
        owner = getattr(func, "__self__", None)
        name = "__get__." + str(getattr(owner, "__name__", owner))
    return name


class Call:
    """One recorded call: function, arguments, result, and the module it ran in."""

    def __init__(self, tracer: Tracer, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        self.tracer = tracer
        self.func = func
        self.name = func_name(func)
        self.args = args
        self.kwargs = kwargs
        self.out = out
        self.module = tracer.module_path()
        self.module_type = tracer.module_type()

    def arg(self, i: int, name: str, default: Any = None) -> Any:
        """Argument ``i`` if given positionally, else keyword ``name``, else ``default``."""
        if len(self.args) > i:
            return self.args[i]
        return self.kwargs.get(name, default)

    def info(self, t: Any) -> Info | None:
        return self.tracer.info_of(t) if isinstance(t, Tensor) else None

    def where(self) -> str:
        return f"op {self.name!r} in module {self.module or '<root>'!r} ({self.module_type})"


@dataclass(frozen=True)
class Entry:
    """One registered name of one kind."""

    name: str
    handler: Handler
    params: bool
    needs_buffers: bool = False
    op_type: str | None = None


_ENTRIES: dict[tuple[str, bool], Entry] = {}  # (name, params) -> entry
_OP_TYPE: dict[str, str] = {}  # name -> GHN op type, over both kinds
_KIND: dict[Handler, bool] = {}  # handler -> params
_loaded = False


def _kind(params: bool) -> str:
    return "parametric rule" if params else "op handler"


def register_op(*names: str, params: bool = False, needs_buffers: bool = False,
                op_type: str | None = None) -> Callable[[Handler], Handler]:
    """Register a handler for torch function ``names`` (see the module docstring for the protocol).

    Args:
        names: torch function names as :func:`func_name` spells them.
        params: ``True`` for a parametric rule (a parameter takes part), ``False`` for an op handler.
        needs_buffers: also run the rule when only buffers (running statistics) and an activation take part.
        op_type: the graph hypernetworks' op type of these names (:data:`wsl.hyper.compgraph.OP_TYPES`).

    Registering a name twice for the same kind with a different handler raises ``ValueError`` (registering the
    same handler again is a no-op, so re-importing a rule module is harmless).
    """
    if not names:
        raise ValueError("register_op() needs at least one torch function name")
    if needs_buffers and not params:
        raise ValueError(f"register_op({', '.join(map(repr, names))}): needs_buffers=True only applies to "
                         "parametric rules; pass params=True as well")

    def deco(fn: Handler) -> Handler:
        if _KIND.get(fn, params) != params:
            raise ValueError(f"{_qualname(fn)} is already registered as a {_kind(not params)}; one handler has "
                             f"one kind, so write a separate {_kind(params)} for {', '.join(map(repr, names))}")
        entries = [Entry(n, fn, params, needs_buffers, op_type) for n in names]
        for e in entries:
            old = _ENTRIES.get((e.name, params))
            if old is not None and old != e:
                raise ValueError(f"{e.name!r} is already registered as a {_kind(params)} "
                                 f"({_qualname(old.handler)}); cannot register {_qualname(fn)} for it too. Extend "
                                 "the existing handler, or remove its registration first")
            if op_type is not None and _OP_TYPE.get(e.name, op_type) != op_type:
                raise ValueError(f"{e.name!r} already has op_type {_OP_TYPE[e.name]!r}; {_qualname(fn)} declares "
                                 f"{op_type!r}. One torch name has one op type")
        _KIND[fn] = params
        for e in entries:
            _ENTRIES[(e.name, params)] = e
            if op_type is not None:
                _OP_TYPE[e.name] = op_type
        return fn

    return deco


def _qualname(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def load_rules() -> None:
    """Import :mod:`wsl.graph.rules` (which registers every handler) once."""
    global _loaded
    if not _loaded:
        importlib.import_module(f"{__package__}.rules")
        _loaded = True


def lookup(name: str, *, params: bool) -> Entry | None:
    """The entry registered for ``name`` as a parametric rule (``params=True``) or op handler, if any."""
    if not _loaded:
        load_rules()
    return _ENTRIES.get((name, params))


def default(params: bool) -> Entry:
    """The :data:`PARAMETERS_ONLY` rule (``params=True``) or the :data:`UNKNOWN_OP` handler."""
    entry = lookup(PARAMETERS_ONLY if params else UNKNOWN_OP, params=params)
    if entry is None:
        raise RuntimeError(f"internal: no default {_kind(params)} registered; wsl.graph.rules registers them")
    return entry


def entries() -> list[Entry]:
    """Every registered entry (reserved defaults included), sorted by kind and name."""
    load_rules()
    return [_ENTRIES[k] for k in sorted(_ENTRIES, key=lambda k: (k[1], k[0]))]


def names(*, params: bool) -> list[str]:
    """The torch names with a handler of one kind (without the reserved defaults), sorted."""
    load_rules()
    return sorted(n for n, p in _ENTRIES if p == params and n not in RESERVED)


def op_types() -> dict[str, str]:
    """Torch function name -> GHN op type, for every name registered with an ``op_type``."""
    load_rules()
    return dict(_OP_TYPE)
