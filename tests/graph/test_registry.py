"""The layer-rule registry: every entry resolves and is well-formed, and the hypernetworks' op vocabulary
(torch function name -> GHN op type) derived from it is exactly the table trained checkpoints were built with."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from torch import nn

import wsl
from wsl.graph import registry
from wsl.graph.registry import PARAMETERS_ONLY, RESERVED, UNKNOWN_OP, register_op
from wsl.hyper import compgraph

ENTRIES = registry.entries()
HANDLERS = list({id(e.handler): e.handler for e in ENTRIES}.values())


def _entry_id(e: registry.Entry) -> str:
    return f"{'rule' if e.params else 'op'}:{e.name}"


def _handler_id(h: registry.Handler) -> str:
    names = sorted(e.name for e in ENTRIES if e.handler is h)
    return f"{h.__module__.rsplit('.', 1)[-1]}.{h.__qualname__}[{names[0]}]"


# torch function name -> GHN op type, as hand-kept in wsl/hyper/compgraph.py before the registry derived it.
# Trained hypernetworks saw these types; a change here changes their input, so it must be deliberate.
PINNED_OP_TYPES: dict[str, str] = {
    **dict.fromkeys(["conv1d", "conv2d", "conv3d"], "conv"),
    **dict.fromkeys(["conv_transpose1d", "conv_transpose2d", "conv_transpose3d"], "conv_transpose"),
    **dict.fromkeys(["addmm", "bilinear", "linear"], "linear"),
    "batch_norm": "bn",
    "layer_norm": "ln",
    "group_norm": "gn",
    "instance_norm": "instance_norm",
    "rms_norm": "rms_norm",
    **dict.fromkeys(["multi_head_attention_forward", "scaled_dot_product_attention"], "attention"),
    **dict.fromkeys(["__matmul__", "__rmatmul__", "baddbmm", "bmm", "einsum", "matmul", "mm"], "matmul"),
    **dict.fromkeys(["embedding", "embedding_bag"], "embedding"),
    **dict.fromkeys(["max_pool1d", "max_pool1d_with_indices", "max_pool2d", "max_pool2d_with_indices", "max_pool3d",
                     "max_pool3d_with_indices"], "max_pool"),
    **dict.fromkeys(["avg_pool1d", "avg_pool2d", "avg_pool3d", "lp_pool1d", "lp_pool2d"], "avg_pool"),
    **dict.fromkeys(["adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
                     "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices", "adaptive_max_pool3d", "amax", "mean",
                     "nanmean", "sum"], "global_pool"),
    **dict.fromkeys(["__add__", "__iadd__", "__isub__", "__radd__", "__rsub__", "__sub__", "add", "add_", "rsub",
                     "sub", "sub_"], "sum"),
    **dict.fromkeys(["__imul__", "__itruediv__", "__mul__", "__rmul__", "__rtruediv__", "__truediv__", "div", "div_",
                     "mul", "mul_", "true_divide"], "mul"),
    **dict.fromkeys(["cat", "concat", "concatenate", "hstack", "stack", "vstack"], "concat"),
    **dict.fromkeys(["hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "relu", "relu6", "relu_"], "relu"),
    **dict.fromkeys(["gelu", "gelu_"], "gelu"),
    **dict.fromkeys(["mish", "silu", "silu_"], "silu"),
    **dict.fromkeys(["hardsigmoid", "hardsigmoid_", "logsigmoid", "sigmoid", "sigmoid_"], "sigmoid"),
    **dict.fromkeys(["tanh", "tanh_"], "tanh"),
    **dict.fromkeys(["log_softmax", "softmax", "softmin"], "softmax"),
    **dict.fromkeys(["hardswish", "hardswish_"], "hardswish"),
    **dict.fromkeys(["celu", "cos", "elu", "elu_", "exp", "glu", "prelu", "selu", "selu_", "sin", "softplus",
                     "softsign"], "act_other"),
}

PINNED_OP_VOCABULARY = (
    "input", "output", "conv", "conv_transpose", "linear", "bn", "ln", "gn", "instance_norm", "rms_norm",
    "attention", "matmul", "embedding", "pos_enc", "cls_token", "scale", "max_pool", "avg_pool",
    "global_pool", "sum", "mul", "concat", "relu", "gelu", "silu", "sigmoid", "tanh", "softmax",
    "hardswish", "act_other", "other",
)


def test_op_vocabulary_is_pinned() -> None:
    assert compgraph.OP_TYPES == PINNED_OP_VOCABULARY  # checkpoints index this tuple: never reorder it


def test_torch_name_to_op_type_map_is_pinned() -> None:
    assert compgraph._NAME_TO_OP == PINNED_OP_TYPES


# ------------------------------------------------------------------------------------- the registry
@pytest.mark.parametrize("entry", ENTRIES, ids=_entry_id)
def test_every_registered_name_resolves(entry: registry.Entry) -> None:
    assert registry.lookup(entry.name, params=entry.params) == entry
    assert entry.name in RESERVED or entry.name in registry.names(params=entry.params)
    if entry.needs_buffers:
        assert entry.params, "needs_buffers only applies to parametric rules"
    if entry.op_type is not None:
        assert entry.op_type in compgraph.OP_TYPES
        assert compgraph._NAME_TO_OP[entry.name] == entry.op_type


@pytest.mark.parametrize("handler", HANDLERS, ids=_handler_id)
def test_every_handler_has_its_declared_kind(handler: registry.Handler) -> None:
    kinds = {e.params for e in ENTRIES if e.handler is handler}
    assert len(kinds) == 1, "a handler is either a parametric rule or an op handler"
    inspect.signature(handler).bind("tracer", "call")  # handler(tr, call)
    if kinds == {False}:
        assert not any(e.needs_buffers for e in ENTRIES if e.handler is handler)


def test_defaults_are_registered() -> None:
    assert registry.default(params=False).name == UNKNOWN_OP
    assert registry.default(params=True).name == PARAMETERS_ONLY
    assert UNKNOWN_OP not in registry.names(params=False) and PARAMETERS_ONLY not in registry.names(params=True)


def test_op_types_have_one_value_per_name() -> None:
    declared: dict[str, set[str]] = {}
    for e in ENTRIES:
        if e.op_type is not None:
            declared.setdefault(e.name, set()).add(e.op_type)
    assert all(len(v) == 1 for v in declared.values())
    assert registry.op_types() == {n: next(iter(v)) for n, v in declared.items()}


@pytest.mark.parametrize("name", sorted(compgraph._UNMODELLED_OP_TYPES))
def test_names_typed_outside_the_registry_have_no_rule(name: str) -> None:
    # once such a name gets a rule, move its op type into the registry (compgraph refuses both at import)
    assert registry.lookup(name, params=True) is None and registry.lookup(name, params=False) is None


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made in a test are undone afterwards."""
    for table in ("_ENTRIES", "_OP_TYPE", "_KIND"):
        monkeypatch.setattr(registry, table, dict(getattr(registry, table)))


@pytest.mark.usefixtures("scratch_registry")
def test_duplicates_and_inconsistent_registrations_raise() -> None:
    linear = registry.lookup("linear", params=True)
    with pytest.raises(ValueError, match="'linear' is already registered as a parametric rule"):
        register_op("linear", params=True)(lambda tr, call: None)
    register_op("linear", params=True, op_type="linear")(linear.handler)  # the same registration again: no-op
    assert registry.lookup("linear", params=True) == linear
    with pytest.raises(ValueError, match="one kind"):
        register_op("test_other_name")(linear.handler)
    with pytest.raises(ValueError, match="already has op_type 'relu'"):
        register_op("relu", params=True, op_type="gelu")(lambda tr, call: None)
    assert registry.lookup("relu", params=True) is None  # a refused registration leaves nothing behind
    with pytest.raises(ValueError, match="params=True"):
        register_op("test_norm", needs_buffers=True)
    with pytest.raises(ValueError, match="at least one"):
        register_op()

    def handler(tr, call) -> None:
        pass

    register_op("test_new_op", op_type="act_other")(handler)
    assert registry.lookup("test_new_op", params=False).handler is handler
    assert registry.op_types()["test_new_op"] == "act_other"


@pytest.mark.usefixtures("scratch_registry")
def test_tracer_dispatches_through_the_registry() -> None:
    seen: list[tuple[str, bool, str]] = []
    for key, e in list(registry._ENTRIES.items()):

        def spy(tr, call, e=e) -> None:
            seen.append((e.name, e.params, call.name))
            e.handler(tr, call)

        registry._ENTRIES[key] = dataclasses.replace(e, handler=spy)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 4)
            self.bn = nn.BatchNorm1d(4, affine=False)  # buffers only: reaches the rule through needs_buffers
            self.gamma = nn.Parameter(torch.ones(4))

        def forward(self, x):
            h = self.bn(torch.relu(self.lin(x)))
            h = h * self.gamma.reshape(1, 4)  # reshape of a parameter alone, then a parametric mul
            return torch.logcumsumexp(h + h, -1)  # an op handler, then an op no entry names

    wsl.graph.trace(Net(), torch.zeros(2, 3), cache=False)
    assert set(seen) >= {("linear", True, "linear"), ("relu", False, "relu"), ("batch_norm", True, "batch_norm"),
                         (PARAMETERS_ONLY, True, "reshape"), ("mul", True, "mul"),
                         ("add", False, "add"), (UNKNOWN_OP, False, "logcumsumexp")}


def test_parameter_without_rule_names_the_registry() -> None:
    class Bilinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.b = nn.Bilinear(3, 3, 2)

        def forward(self, x):
            return self.b(x, x)

    with pytest.raises(wsl.ConversionError, match=r"register_op\(\.\.\., params=True\)"):
        wsl.graph.trace(Bilinear(), torch.zeros(2, 3), cache=False)
