"""Models with their graphs and inputs for the augmentation / alignment tests (built on tests/nn/archs.py)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

import wsl
from tests.nn.archs import BUILDERS
from wsl.data.generate import siren
from wsl.graph import ParamGraph
from wsl.testing.checks import randomize_

ARCHS = ("mlp_relu", "mlp_tanh", "siren", "rescnn", "transformer")
THREE = ("mlp_relu", "rescnn", "transformer")  # MLP, CNN with BatchNorm + residual, attention


def build(name: str, seed: int = 0) -> tuple[nn.Module, ParamGraph, Tensor]:
    """``(model, graph, inputs)`` of a randomized ``name`` network (deterministic in ``seed``)."""
    make, shape = BUILDERS[name]
    torch.manual_seed(seed)
    model = make()
    g = torch.Generator().manual_seed(seed)
    randomize_(model, g, scale=0.5, calibrate=torch.randn(*shape, generator=g))
    inputs = torch.randn(8, *shape[1:], generator=g)
    return model, wsl.to_graph(model, example_inputs=inputs), inputs


def digits_siren(seed: int = 0, w0: float = 30.0) -> tuple[nn.Module, ParamGraph]:
    """A SIREN-initialized 2-32-32-1 INR like the digits-INR zoo's (sin(w0 x), first layer U(-1/2, 1/2))."""
    torch.manual_seed(seed)
    model = siren(w0=w0)
    with torch.no_grad():
        for i, lin in enumerate(m for m in model if isinstance(m, nn.Linear)):
            a = lin.in_features
            bound = 1.0 / a if i == 0 else math.sqrt(6.0 / a) / w0
            lin.weight.uniform_(-bound, bound)
            lin.bias.uniform_(-1 / math.sqrt(a), 1 / math.sqrt(a))
    return model, wsl.to_graph(model, example_inputs=torch.zeros(4, 2))


def grid(size: int = 16) -> Tensor:
    lin = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    return torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=-1)


def snapshot(graph: ParamGraph) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in graph._store.items() if isinstance(v, Tensor)}


def assert_unchanged(graph: ParamGraph, snap: dict[str, Tensor]) -> None:
    for k, v in snap.items():
        assert torch.equal(graph._store[k], v), f"input graph field {k} was mutated"
