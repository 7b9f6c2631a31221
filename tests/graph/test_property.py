"""Property test over randomly generated small networks: bit-exact round trip and symmetry invariance.

``WSL_HYPOTHESIS_EXAMPLES`` sets the number of generated networks (default 50; CI asks for 200).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import wsl
from wsl.testing.checks import assert_roundtrip, max_output_diff, randomize_

FAMILIES = ("mlp", "cnn", "rescnn", "attention")
ACTIVATIONS = ("relu", "leaky_relu", "tanh", "gelu", "sigmoid", "sin")
NORMS = {
    "mlp": (None, "layer", "batch"),
    "cnn": (None, "batch", "group"),
    "rescnn": (None, "batch"),
    "attention": (None, "layer", "rms"),
}


def activation(name: str, x: Tensor) -> Tensor:
    if name == "relu":
        return F.relu(x)
    if name == "leaky_relu":
        return F.leaky_relu(x, 0.1)
    if name == "tanh":
        return torch.tanh(x)
    if name == "gelu":
        return F.gelu(x)
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "sin":
        return torch.sin(x)
    raise ValueError(name)


@dataclass(frozen=True)
class Arch:
    family: str
    widths: tuple[int, ...]  # one per layer / block (depth = len(widths))
    act: str
    bias: bool
    norm: str | None
    in_dim: int
    out_dim: int
    heads: int  # attention only
    groups: int  # GroupNorm only
    seed: int


# ------------------------------------------------------------------------------------------------ families
def _norm1d(kind: str | None, w: int) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(w, elementwise_affine=True)
    if kind == "batch":
        return nn.BatchNorm1d(w)
    if kind == "rms":
        return nn.RMSNorm(w)
    return nn.Identity()


class MLP(nn.Module):
    def __init__(self, a: Arch) -> None:
        super().__init__()
        self.act = a.act
        dims = (a.in_dim, *a.widths)
        self.layers = nn.ModuleList(nn.Linear(i, o, bias=a.bias) for i, o in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(_norm1d(a.norm, o) for o in a.widths)
        self.head = nn.Linear(dims[-1], a.out_dim, bias=a.bias)

    def forward(self, x: Tensor) -> Tensor:
        for lin, norm in zip(self.layers, self.norms):
            x = activation(self.act, norm(lin(x)))
        return self.head(x)


def _norm2d(kind: str | None, w: int, groups: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(w)
    if kind == "group":
        return nn.GroupNorm(groups if w % groups == 0 else 1, w)
    return nn.Identity()


class CNN(nn.Module):
    def __init__(self, a: Arch) -> None:
        super().__init__()
        self.act = a.act
        dims = (a.in_dim, *a.widths)
        self.convs = nn.ModuleList(
            nn.Conv2d(i, o, 3 if k % 2 == 0 else 1, padding=1 if k % 2 == 0 else 0, bias=a.bias)
            for k, (i, o) in enumerate(zip(dims[:-1], dims[1:]))
        )
        self.norms = nn.ModuleList(_norm2d(a.norm, o, a.groups) for o in a.widths)
        self.head = nn.Linear(dims[-1], a.out_dim, bias=a.bias)

    def forward(self, x: Tensor) -> Tensor:
        for conv, norm in zip(self.convs, self.norms):
            x = activation(self.act, norm(conv(x)))
        return self.head(x.mean(dim=(2, 3)))


class ResCNN(nn.Module):
    """A stem to ``widths[0]`` channels, then one residual block per width (inner width = that width)."""

    def __init__(self, a: Arch) -> None:
        super().__init__()
        self.act = a.act
        c = a.widths[0]
        self.stem = nn.Conv2d(a.in_dim, c, 3, padding=1, bias=a.bias)
        self.c1 = nn.ModuleList(nn.Conv2d(c, w, 3, padding=1, bias=a.bias) for w in a.widths)
        self.n1 = nn.ModuleList(_norm2d(a.norm, w, a.groups) for w in a.widths)
        self.c2 = nn.ModuleList(nn.Conv2d(w, c, 1, bias=a.bias) for w in a.widths)
        self.n2 = nn.ModuleList(_norm2d(a.norm, c, a.groups) for _ in a.widths)
        self.head = nn.Linear(c, a.out_dim, bias=a.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = activation(self.act, self.stem(x))
        for c1, n1, c2, n2 in zip(self.c1, self.n1, self.c2, self.n2):
            x = x + n2(c2(activation(self.act, n1(c1(x)))))
        return self.head(x.mean(dim=(2, 3)))


class AttentionNet(nn.Module):
    """Pre-norm transformer blocks (MHA + MLP with residuals) on a (B, T, in_dim) input."""

    def __init__(self, a: Arch) -> None:
        super().__init__()
        self.act = a.act
        d = a.heads * max(1, a.widths[0] // a.heads)
        self.inp = nn.Linear(a.in_dim, d, bias=a.bias)
        self.n1 = nn.ModuleList(_norm1d(a.norm, d) for _ in a.widths)
        self.attn = nn.ModuleList(nn.MultiheadAttention(d, a.heads, bias=a.bias, batch_first=True) for _ in a.widths)
        self.n2 = nn.ModuleList(_norm1d(a.norm, d) for _ in a.widths)
        self.fc1 = nn.ModuleList(nn.Linear(d, w, bias=a.bias) for w in a.widths)
        self.fc2 = nn.ModuleList(nn.Linear(w, d, bias=a.bias) for w in a.widths)
        self.head = nn.Linear(d, a.out_dim, bias=a.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.inp(x)
        for n1, attn, n2, fc1, fc2 in zip(self.n1, self.attn, self.n2, self.fc1, self.fc2):
            h = n1(x)
            x = x + attn(h, h, h, need_weights=False)[0]
            x = x + fc2(activation(self.act, fc1(n2(x))))
        return self.head(x)


def build(a: Arch) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(a.seed)
    cls = {"mlp": MLP, "cnn": CNN, "rescnn": ResCNN, "attention": AttentionNet}[a.family]
    model = cls(a).eval()
    gen = torch.Generator().manual_seed(a.seed)
    randomize_(model, gen)
    if a.family == "mlp":
        x = torch.randn(3, a.in_dim, generator=gen)
    elif a.family == "attention":
        x = torch.randn(2, 4, a.in_dim, generator=gen)
    else:
        x = torch.randn(2, a.in_dim, 5, 5, generator=gen)
    return model, x


@st.composite
def architectures(draw: st.DrawFn) -> Arch:
    family = draw(st.sampled_from(FAMILIES))
    depth = draw(st.integers(1, 3))
    widths = tuple(draw(st.lists(st.integers(1, 8), min_size=depth, max_size=depth)))
    heads = 1
    if family == "attention":
        heads = draw(st.sampled_from([h for h in (1, 2, 4) if h <= widths[0]]))
    return Arch(
        family=family,
        widths=widths,
        act=draw(st.sampled_from(ACTIVATIONS)),
        bias=draw(st.booleans()),
        norm=draw(st.sampled_from(NORMS[family])),
        in_dim=draw(st.integers(1, 4)),
        out_dim=draw(st.integers(1, 3)),
        heads=heads,
        groups=draw(st.sampled_from((1, 2))),
        seed=draw(st.integers(0, 2**20)),
    )


EXAMPLES = int(os.environ.get("WSL_HYPOTHESIS_EXAMPLES", "50"))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arch=architectures(), sym_seed=st.integers(0, 2**20))
# explicit examples: every family and activation is covered whatever hypothesis draws
@example(arch=Arch("mlp", (8, 8), "relu", True, "batch", 3, 2, 1, 1, 0), sym_seed=0)
@example(arch=Arch("mlp", (1, 5), "sigmoid", False, None, 1, 1, 1, 1, 1), sym_seed=1)
@example(arch=Arch("cnn", (4, 6, 8), "sin", False, "group", 2, 3, 1, 2, 2), sym_seed=2)
@example(arch=Arch("rescnn", (6, 3), "leaky_relu", True, "batch", 3, 2, 1, 1, 3), sym_seed=3)
@example(arch=Arch("attention", (8, 5), "gelu", True, "layer", 4, 3, 2, 1, 4), sym_seed=4)
@example(arch=Arch("attention", (4,), "tanh", False, "rms", 2, 2, 4, 1, 5), sym_seed=5)
def test_random_networks_roundtrip_and_symmetry(arch: Arch, sym_seed: int) -> None:
    model, x = build(arch)  # a fresh module per example (specs are cached per module object)
    graph = wsl.to_graph(model, example_inputs=x)
    assert_roundtrip(graph, model.state_dict())

    el = graph.spec.sample_symmetry(torch.Generator().manual_seed(sym_seed))
    n = graph.num_nodes
    assert torch.equal(torch.sort(el.perm).values, torch.arange(n))
    io_nodes = torch.nonzero(graph.io != 0).flatten()
    assert torch.equal(el.perm[io_nodes], io_nodes), "an input / output neuron moved"
    for s in graph.spec.sets:
        p = el.perm[s.start : s.start + s.size]
        assert bool(((p >= s.start) & (p < s.start + s.size)).all()), f"a neuron left set {s.name!r}"

    event(f"family={arch.family}")
    event("perm moves neurons" if not torch.equal(el.perm, torch.arange(n)) else "perm is identity")
    event("scale factors" if el.scale is not None else "no scale factors")

    moved = wsl.from_graph(graph.apply_symmetry(el), model)
    with torch.no_grad():
        out = model(x)
    diff = max_output_diff(model, moved, x)
    scale = max(1.0, float(out.abs().max()))
    assert diff <= 1e-5 * scale, f"{arch}: symmetry changed outputs by {diff:.3e} (output scale {scale:.3g})"
    # the transformed graph is still an exact encoding of the transformed model
    assert_roundtrip(wsl.to_graph(moved, spec=graph.spec), moved.state_dict())
