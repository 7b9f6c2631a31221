"""Small networks of three families (MLP, CNN with BatchNorm + residual block, transformer) for metanetwork tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import wsl
from wsl.graph import ParamGraph
from wsl.testing.checks import randomize_


class Sine(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x)


def mlp(act: str = "relu") -> nn.Module:
    a = {"relu": nn.ReLU, "tanh": nn.Tanh, "sin": Sine}[act]
    return nn.Sequential(nn.Linear(3, 6), a(), nn.Linear(6, 5), a(), nn.Linear(5, 2))


class ResCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.stem(x)))
        x = F.relu(x + self.bn2(self.conv(x)))
        return self.fc(x.mean(dim=(2, 3)))


class TinyTransformer(nn.Module):
    def __init__(self, d: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.inp = nn.Linear(3, d)
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.ff1 = nn.Linear(d, 12)
        self.ff2 = nn.Linear(12, d)
        self.out = nn.Linear(d, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.inp(x)
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.ff2(F.gelu(self.ff1(self.ln2(x))))
        return self.out(x.mean(dim=1))


BUILDERS = {
    "mlp_relu": (lambda: mlp("relu"), (4, 3)),
    "mlp_tanh": (lambda: mlp("tanh"), (4, 3)),
    "siren": (lambda: mlp("sin"), (4, 3)),
    "rescnn": (ResCNN, (2, 2, 5, 5)),
    "transformer": (TinyTransformer, (2, 4, 3)),
}


def make_graph(name: str, seed: int) -> ParamGraph:
    """The ParamGraph of a randomized ``name`` network (deterministic in ``seed``)."""
    build, shape = BUILDERS[name]
    torch.manual_seed(seed)
    model = build()
    g = torch.Generator().manual_seed(seed)
    randomize_(model, g, scale=0.5, calibrate=torch.randn(*shape, generator=g))
    return wsl.to_graph(model, example_inputs=torch.randn(*shape, generator=g))


def mixed_graphs(seed: int = 0) -> list[ParamGraph]:
    return [make_graph(name, seed + i) for i, name in enumerate(BUILDERS)]
