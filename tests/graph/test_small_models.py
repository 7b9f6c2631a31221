"""Hand-made tiny models: bit-exact round trip, symmetry invariance, sensitivity, and graph structure.

Every model is built with a fixed seed, put in eval mode and perturbed with ``randomize_`` so that no weight
is degenerate (zero heads, unit norm weights ...) and a wrong permutation really shows in the outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import wsl
from wsl.graph import EDGE_TYPES, NODE_TYPES
from wsl.testing.checks import (
    assert_roundtrip,
    inconsistent_graph,
    max_output_diff,
    randomize_,
    symmetry_output_diff,
)

SYM_TOL = 1e-5  # max abs output change allowed under a symmetry
SENSITIVITY = 1e-4  # min abs output change required under an inconsistent permutation
SEEDS = (0, 1, 2)  # symmetry elements drawn per model


# ------------------------------------------------------------------------------------------------ helpers
def build(make: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = make().eval()
    randomize_(model, torch.Generator().manual_seed(seed + 1))
    return model


def _set_ranges(graph: wsl.ParamGraph) -> list[tuple[int, int, str]]:
    return [(s.start, s.start + s.size, s.name) for s in graph.spec.sets]


def check_model(model: nn.Module, x: Any, *, seeds: tuple[int, ...] = SEEDS) -> wsl.ParamGraph:
    """Round trip, symmetry invariance (several elements), fixed I/O, and inconsistent-permutation sensitivity."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph = wsl.to_graph(model, example_inputs=x)
    assert graph.num_nodes == graph.spec.num_nodes
    assert graph.edge_index.shape == (2, graph.spec.num_edges)
    assert graph.edge_attr.shape == (graph.spec.num_edges, 1)
    assert_roundtrip(graph, model.state_dict())

    n = graph.num_nodes
    ident = torch.arange(n)
    io_nodes = torch.nonzero(graph.io != 0).flatten()
    assert io_nodes.numel() > 0, "graph marks no input / output neuron"
    assert bool((graph.io_index[io_nodes] >= 0).all())
    assert bool((graph.io_index[graph.io == 0] == -1).all())
    moved = 0
    for seed in seeds:
        el = graph.spec.sample_symmetry(torch.Generator().manual_seed(seed))
        assert el.perm.shape == (n,)
        assert torch.equal(torch.sort(el.perm).values, ident), "perm is not a permutation"
        moved += int(not torch.equal(el.perm, ident))  # a small group can give the identity by chance
        assert torch.equal(el.perm[io_nodes], io_nodes), f"seed {seed}: an input / output neuron moved"
        for a, b, name in _set_ranges(graph):  # a neuron never leaves its set
            p = el.perm[a:b]
            assert bool(((p >= a) & (p < b)).all()), f"seed {seed}: neuron of set {name!r} left its set"
        if el.scale is not None:
            assert bool((el.scale[io_nodes] == 1).all()), "input / output neurons rescaled"
        diff = symmetry_output_diff(model, graph, el, x)
        assert diff <= SYM_TOL, f"seed {seed}: symmetry changed the outputs by {diff:.3e}"
    assert moved > 0, "no sampled symmetry element moved a node"
    bad = inconsistent_graph(graph, torch.Generator().manual_seed(0))
    diff = max_output_diff(model, wsl.from_graph(bad, model), x)
    assert diff > SENSITIVITY, f"inconsistent permutation left the outputs unchanged (diff {diff:.3e})"
    after = model.state_dict()  # nothing above may modify the caller's model
    assert all(torch.equal(before[k], after[k]) for k in before)
    return graph


def classes(graph: wsl.ParamGraph) -> list[dict[str, Any]]:
    return graph.spec.groups()


def class_of(graph: wsl.ParamGraph, set_name: str) -> dict[str, Any]:
    found = [c for c in classes(graph) if set_name in c["sets"]]
    assert len(found) == 1, f"set {set_name!r} is in {len(found)} free classes: {classes(graph)}"
    return found[0]


def set_info(graph: wsl.ParamGraph, name: str):
    found = [s for s in graph.spec.sets if s.name == name]
    assert len(found) == 1, f"{len(found)} sets named {name!r}"
    return found[0]


def edges_of(graph: wsl.ParamGraph, key: str) -> tuple[Tensor, Tensor, Tensor]:
    """(src, dst, edge_pos) of the edges holding state-dict tensor ``key``."""
    t = graph.spec.tensors[key]
    assert t.kind == "edges", f"{key} is stored as {t.kind}"
    sl = slice(t.offset, t.offset + t.numel)
    return graph.edge_index[0, sl], graph.edge_index[1, sl], graph.edge_pos[sl].long()


def assert_edges_in(graph: wsl.ParamGraph, key: str, src_set: str, dst_set: str) -> None:
    src, dst, _ = edges_of(graph, key)
    s, d = set_info(graph, src_set), set_info(graph, dst_set)
    assert bool(((src >= s.start) & (src < s.start + s.size)).all()), f"{key}: sources outside {src_set}"
    assert bool(((dst >= d.start) & (dst < d.start + d.size)).all()), f"{key}: targets outside {dst_set}"


def assert_diagonal(graph: wsl.ParamGraph, key: str, src_set: str, dst_set: str) -> None:
    """Norm scales / layer scales: element i is the edge (src_set[i] -> dst_set[i])."""
    src, dst, _ = edges_of(graph, key)
    s, d = set_info(graph, src_set), set_info(graph, dst_set)
    n = graph.spec.tensors[key].numel
    assert torch.equal(src, s.start + torch.arange(n)), f"{key}: sources not {src_set} in order"
    assert torch.equal(dst, d.start + torch.arange(n)), f"{key}: targets not {dst_set} in order"


def node_kind_count(graph: wsl.ParamGraph, kind: str) -> int:
    return int((graph.node_type == NODE_TYPES.index(kind)).sum())


# ------------------------------------------------------------------------------------------------- models
class MLP(nn.Module):
    def __init__(self, act: type[nn.Module] = nn.ReLU, dims: tuple[int, ...] = (3, 8, 8, 2)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(act())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Siren(nn.Module):
    def __init__(self, dims: tuple[int, ...] = (2, 8, 8, 1), w0: float = 30.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.w0 = w0

    def forward(self, x: Tensor) -> Tensor:
        for lin in self.layers[:-1]:
            x = torch.sin(self.w0 * lin(x))
        return self.layers[-1](x)


class ResCNN(nn.Module):
    def __init__(self, c: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(c)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.head = nn.Linear(c, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        x = F.relu(x + y)
        return self.head(x.mean(dim=(2, 3)))


class GroupedConvNet(nn.Module):
    """dense conv -> grouped conv (``groups``) -> pooled linear head."""

    def __init__(self, groups: int = 2, c: int = 8, cout: int = 8) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, c, 3, padding=1)
        self.g = nn.Conv2d(c, cout, 3, padding=1, groups=groups)
        self.head = nn.Linear(cout, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.c1(x))
        x = F.relu(self.g(x))
        return self.head(x.mean(dim=(2, 3)))


class GroupedThenDepthwise(nn.Module):
    """dense conv -> grouped conv (2 groups) -> depthwise conv -> pointwise conv (MobileNet-like)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 6, 1)
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.c1(x))
        x = F.relu(self.g(x))
        x = F.relu(self.dw(x))
        x = F.relu(self.pw(x))
        return self.head(x.mean(dim=(2, 3)))


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(2, 6, 5, padding=2)
        self.c2 = nn.Conv1d(6, 5, 3, stride=2)
        self.head = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.c1(x))
        x = torch.tanh(self.c2(x))
        return self.head(x.mean(-1))


class Conv3dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv3d(2, 5, 3, padding=1)
        self.c2 = nn.Conv3d(5, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.c1(x))
        x = F.relu(self.c2(x))
        return self.head(x.mean(dim=(2, 3, 4)))


class ConvTNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.up = nn.ConvTranspose2d(6, 5, 4, stride=2, padding=1)
        self.out = nn.Conv2d(5, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.c1(x))
        x = F.relu(self.up(x))
        return self.out(x)


class NormMLP(nn.Module):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.l1 = nn.Linear(4, 8)
        self.norm = norm
        self.l2 = nn.Linear(8, 8)
        self.l3 = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.l1(x))
        x = F.gelu(self.l2(x))
        return self.l3(x)


class GroupNormCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.c2 = nn.Conv2d(8, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.gn(self.c1(x)))
        x = F.relu(self.c2(x))
        return self.head(x.mean(dim=(2, 3)))


class DenseNetLike(nn.Module):
    def __init__(self, c0: int = 4, growth: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c0, 3, padding=1)
        self.b1 = nn.Conv2d(c0, growth, 3, padding=1)
        self.b2 = nn.Conv2d(c0 + growth, growth, 3, padding=1)
        self.trans = nn.Conv2d(c0 + 2 * growth, 5, 1)
        self.head = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem(x))
        x = torch.cat([x, F.relu(self.b1(x))], dim=1)
        x = torch.cat([x, F.relu(self.b2(x))], dim=1)
        x = F.relu(self.trans(x))
        return self.head(x.mean(dim=(2, 3)))


class EncoderBlock(nn.Module):
    def __init__(self, d: int = 8, heads: int = 2, hidden: int = 16) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    def __init__(self, d_in: int = 5, d: int = 8, heads: int = 2, n_out: int = 3) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.block = EncoderBlock(d, heads)
        self.ln = nn.LayerNorm(d)
        self.out = nn.Linear(d, n_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.ln(self.block(self.inp(x))))


class TinyViT(nn.Module):
    def __init__(self, d: int = 8, heads: int = 2, patch: int = 4, img: int = 8, n_out: int = 3) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, d, patch, stride=patch)
        n = (img // patch) ** 2
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, n + 1, d) * 0.1)
        self.block = EncoderBlock(d, heads)
        self.gamma = nn.Parameter(torch.full((d,), 0.5))  # layer scale
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, n_out)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos
        x = x + self.gamma * self.block(x)
        return self.head(self.ln(x[:, 0]))


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 11, d: int = 8, heads: int = 2, ctx: int = 6) -> None:
        super().__init__()
        self.heads = heads
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.ln = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab)

    def forward(self, ids: Tensor) -> Tensor:
        b, t = ids.shape
        x = self.tok(ids) + self.pos(torch.arange(t, device=ids.device))
        d = x.shape[-1]

        def split(z: Tensor) -> Tensor:
            return z.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        a = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)), is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        return self.lm_head(self.ln(x))


def _x(*shape: int, seed: int = 123) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------- MLPs
def test_mlp_relu() -> None:
    model = build(lambda: MLP(nn.ReLU))
    g = check_model(model, _x(4, 3))
    # structure: 3 inputs + 8 + 8 hidden + 2 outputs; one edge per weight element
    assert g.num_nodes == 3 + 8 + 8 + 2
    assert g.edge_index.shape[1] == 3 * 8 + 8 * 8 + 8 * 2
    assert int((g.io == 1).sum()) == 3 and int((g.io == 2).sum()) == 2
    assert torch.equal(g.io_index[g.io == 1], torch.arange(3))
    assert torch.equal(g.io_index[g.io == 2], torch.arange(2))
    cls = classes(g)
    assert len(cls) == 2, cls
    assert sorted(c["size"] for c in cls) == [8, 8]
    assert all(c["blocks"] is None for c in cls)
    assert g.spec.summary()["free_permutation_classes"] == 2
    assert sorted(g.spec.scale_sets()) == [("net.0", "positive scale"), ("net.2", "positive scale")]
    # biases are node features, weights edges in row-major order (edge k of W[out, in] is in k % 3 -> out k // 3)
    assert torch.equal(g.x[3:11, 0], model.net[0].bias.detach())
    src, dst, _ = edges_of(g, "net.0.weight")
    k = torch.arange(24)
    assert torch.equal(src, k % 3) and torch.equal(dst, 3 + k // 3)
    assert torch.equal(g.edge_attr[:24, 0], model.net[0].weight.detach().reshape(-1))
    assert bool((g.edge_type == EDGE_TYPES.index("linear")).all())
    # node_layer: inputs 0, then one layer per Linear
    assert g.node_layer.tolist() == [0] * 3 + [1] * 8 + [2] * 8 + [3] * 2
    # a scale element really rescales (ReLU positive scaling)
    el = g.spec.sample_symmetry(torch.Generator().manual_seed(0))
    assert el.scale is not None and bool((el.scale > 0).all()) and bool((el.scale[3:19] != 1).any())


def test_mlp_relu_scale_only_and_perm_only() -> None:
    model = build(lambda: MLP(nn.ReLU))
    x = _x(4, 3)
    g = wsl.to_graph(model, example_inputs=x)
    el = g.spec.sample_symmetry(torch.Generator().manual_seed(5), scale=False)
    assert el.scale is None
    assert symmetry_output_diff(model, g, el, x) <= SYM_TOL
    only_scale = wsl.SymmetryElement(torch.arange(g.num_nodes), g.spec.sample_symmetry(
        torch.Generator().manual_seed(6)).scale)
    moved = g.apply_symmetry(only_scale)
    assert not torch.equal(moved.edge_attr, g.edge_attr)
    assert symmetry_output_diff(model, g, only_scale, x) <= SYM_TOL


def test_mlp_tanh_sign_flip() -> None:
    model = build(lambda: MLP(nn.Tanh))
    g = check_model(model, _x(4, 3))
    assert sorted(g.spec.scale_sets()) == [("net.0", "sign flip"), ("net.2", "sign flip")]
    el = g.spec.sample_symmetry(torch.Generator().manual_seed(0))
    assert el.scale is not None
    assert set(el.scale[3:19].tolist()) <= {-1.0, 1.0} and bool((el.scale[3:19] == -1).any())
    assert bool((el.scale[g.io != 0] == 1).all())


def test_siren_sign_flip() -> None:
    model = build(Siren)
    x = torch.rand(5, 2, generator=torch.Generator().manual_seed(3)) * 2 - 1
    g = check_model(model, x)
    assert sorted(g.spec.scale_sets()) == [("layers.0", "sign flip"), ("layers.1", "sign flip")]
    assert sorted(c["size"] for c in classes(g)) == [8, 8]


# ---------------------------------------------------------------------------------------------------- CNNs
def test_residual_cnn_batchnorm() -> None:
    model = build(ResCNN)
    g = check_model(model, _x(2, 3, 6, 6))
    stream = class_of(g, "stem")
    assert stream["size"] == 6 and stream["blocks"] is None
    assert {"stem", "bn0", "conv2", "bn2"} <= set(stream["sets"]), stream  # residual tie
    inner = class_of(g, "conv1")
    assert inner is not stream and {"conv1", "bn1"} <= set(inner["sets"])
    assert len(classes(g)) == 2
    # 3x3 kernel: 9 edges per channel pair, offsets from the centre in {-1, 0, 1}^2
    src, dst, pos = edges_of(g, "stem.weight")
    assert src.numel() == 6 * 3 * 9
    assert set(map(tuple, pos.tolist())) == {(i, j, 0) for i in (-1, 0, 1) for j in (-1, 0, 1)}
    assert_edges_in(g, "conv2.weight", "bn1", "conv2")
    # BatchNorm: running statistics are node features, gamma a diagonal edge
    bn = set_info(g, "bn0")
    assert torch.equal(g.x[bn.start : bn.start + 6, 1], model.bn0.running_mean)
    assert torch.equal(g.x[bn.start : bn.start + 6, 2], model.bn0.running_var)
    assert_diagonal(g, "bn0.weight", "stem", "bn0")
    assert "bn0.num_batches_tracked" in g.spec.tensors
    assert g.spec.tensors["bn0.num_batches_tracked"].kind == "passthrough"
    assert node_kind_count(g, "merge") == 6  # the residual sum
    ident = g.edge_type == EDGE_TYPES.index("identity")
    assert int(ident.sum()) == 2 * 6 and bool((g.edge_attr[ident] == 1).all())


def test_grouped_conv() -> None:
    model = build(lambda: GroupedConvNet(groups=2))
    g = check_model(model, _x(2, 3, 5, 5))
    assert class_of(g, "g")["blocks"] == (2, 4)
    src, dst, _ = edges_of(g, "g.weight")
    assert src.numel() == 8 * 4 * 9  # only within-group channel pairs are edges
    c1, gs = set_info(g, "c1"), set_info(g, "g")
    assert torch.equal((src - c1.start) // 4, (dst - gs.start) // 4), "edge crosses conv groups"


def test_depthwise_conv() -> None:
    model = build(lambda: GroupedConvNet(groups=8))
    g = check_model(model, _x(2, 3, 5, 5))
    assert class_of(g, "g")["blocks"] == (8, 1)
    src, dst, _ = edges_of(g, "g.weight")
    assert src.numel() == 8 * 9
    assert torch.equal(src - set_info(g, "c1").start, dst - set_info(g, "g").start)


def test_depthwise_channel_multiplier() -> None:
    model = build(lambda: GroupedConvNet(groups=8, cout=16))
    g = check_model(model, _x(2, 3, 5, 5))
    assert class_of(g, "g")["blocks"] == (8, 2)


# Grouped convolutions next to fixed sets (the network input / output, conflicting group structures):
# the group permutation must stay fixed too (a past bug: it was permuted on the free side only).
def test_grouped_then_depthwise_conv() -> None:
    model = build(GroupedThenDepthwise)
    check_model(model, _x(2, 3, 5, 5))


def test_grouped_conv_on_input() -> None:
    model = build(lambda: nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(36, 2)))
    check_model(model, _x(2, 4, 5, 5), seeds=(0, 1, 2, 3))


def test_grouped_conv_as_output_layer() -> None:
    model = build(lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2)))
    check_model(model, _x(2, 3, 5, 5), seeds=(0, 1, 2, 3, 4, 5))


def test_conv1d() -> None:
    model = build(Conv1dNet)
    g = check_model(model, _x(2, 2, 12))
    _, _, pos = edges_of(g, "c1.weight")
    assert sorted(set(pos[:, 0].tolist())) == [-2, -1, 0, 1, 2]
    assert bool((pos[:, 1:] == 0).all())
    assert dict(g.spec.scale_sets()) == {"c1": "positive scale", "c2": "sign flip"}


def test_conv3d() -> None:
    model = build(Conv3dNet)
    g = check_model(model, _x(2, 2, 5, 5, 5))
    src, _, pos = edges_of(g, "c1.weight")
    assert src.numel() == 5 * 2 * 27
    assert len(set(map(tuple, pos.tolist()))) == 27
    assert g.edge_index.shape[1] == 5 * 2 * 27 + 4 * 5 * 27 + 2 * 4
    assert sorted(c["size"] for c in classes(g)) == [4, 5]


def test_conv_transpose2d() -> None:
    model = build(ConvTNet)
    g = check_model(model, _x(2, 3, 4, 4))
    # ConvTranspose weight is [in, out, kH, kW]: edge k goes from in-channel k // 80 to out-channel (k // 16) % 5
    src, dst, pos = edges_of(g, "up.weight")
    c1, up = set_info(g, "c1"), set_info(g, "up")
    k = torch.arange(6 * 5 * 16)
    assert torch.equal(src, c1.start + k // 80)
    assert torch.equal(dst, up.start + (k // 16) % 5)
    assert len(set(map(tuple, pos.tolist()))) == 16
    t = g.spec.tensors["up.weight"]
    assert bool((g.edge_type[t.offset : t.offset + t.numel] == EDGE_TYPES.index("conv_transpose")).all())
    assert sorted(c["size"] for c in classes(g)) == [5, 6]


# --------------------------------------------------------------------------------------------------- norms
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_layernorm_rmsnorm(norm: str) -> None:
    model = build(lambda: NormMLP(nn.LayerNorm(8) if norm == "layer" else nn.RMSNorm(8)))
    g = check_model(model, _x(4, 4))
    stream = class_of(g, "l1")
    assert set(stream["sets"]) == {"l1", "norm"} and stream["size"] == 8
    assert_diagonal(g, "norm.weight", "l1", "norm")
    assert node_kind_count(g, "norm") == 8
    assert len(classes(g)) == 2
    assert g.spec.scale_sets() == []  # a norm layer breaks the ReLU / sign scaling of l1; GELU has none


def test_groupnorm() -> None:
    model = build(GroupNormCNN)
    g = check_model(model, _x(2, 3, 5, 5))
    gn = class_of(g, "gn")
    assert gn["blocks"] == (2, 4) and "c1" in gn["sets"]
    assert any(c["size"] == 2 and c["blocks"] is None for c in classes(g))  # the group permutation
    assert_diagonal(g, "gn.weight", "c1", "gn")


# ----------------------------------------------------------------------------------------------- concat
def test_densenet_concat() -> None:
    model = build(DenseNetLike)
    g = check_model(model, _x(2, 3, 5, 5))
    for name, size in [("stem", 4), ("b1", 3), ("b2", 3), ("trans", 5)]:
        c = class_of(g, name)
        assert c["size"] == size and c["sets"] == [name], c
    # the transition conv reads [stem, b1, b2] concatenated: in-channel j of its weight is that neuron
    src, dst, _ = edges_of(g, "trans.weight")
    stem, b1, b2, trans = (set_info(g, n) for n in ("stem", "b1", "b2", "trans"))
    concat = torch.cat([stem.start + torch.arange(4), b1.start + torch.arange(3), b2.start + torch.arange(3)])
    k = torch.arange(5 * 10)
    assert torch.equal(src, concat[k % 10])
    assert torch.equal(dst, trans.start + k // 10)
    src2, _, _ = edges_of(g, "b2.weight")
    assert set(src2.tolist()) == set(concat[:7].tolist())


# ---------------------------------------------------------------------------------------------- attention
def test_tiny_transformer() -> None:
    heads, d = 2, 8
    model = build(lambda: TinyTransformer(d=d, heads=heads))
    g = check_model(model, _x(2, 5, 5))
    blocked = [c for c in classes(g) if c["blocks"] == (heads, d // heads)]
    assert len(blocked) == 2, classes(g)  # q with k, and v
    assert any({"block.attn.q", "block.attn.k"} <= set(c["sets"]) for c in blocked)
    assert any(set(c["sets"]) == {"block.attn.v"} for c in blocked)
    assert any(c["size"] == heads and c["blocks"] is None and len(c["sets"]) == 3 for c in classes(g))
    stream = class_of(g, "inp")
    assert {"inp", "block.ln1", "block.attn.out_proj", "block.ln2", "block.fc2", "ln"} <= set(stream["sets"])
    assert class_of(g, "block.fc1")["size"] == 16
    assert node_kind_count(g, "head") == 3 * heads
    # q / k / v share one head permutation: heads of v move exactly like heads of q
    for seed in SEEDS:
        el = g.spec.sample_symmetry(torch.Generator().manual_seed(seed))
        q, v = set_info(g, "block.attn.q"), set_info(g, "block.attn.v")
        hq = (el.perm[q.start : q.start + d] - q.start) // (d // heads)
        hv = (el.perm[v.start : v.start + d] - v.start) // (d // heads)
        assert torch.equal(hq, hv)


def test_tiny_vit() -> None:
    model = build(TinyViT)
    g = check_model(model, _x(2, 3, 8, 8))
    stream = class_of(g, "patch")
    assert {"patch", "block.fc2", "ln"} <= set(stream["sets"])
    assert any(c["blocks"] == (2, 4) for c in classes(g))
    # class token and positional embedding: per-position input nodes, never permuted
    pos_nodes = g.node_type == NODE_TYPES.index("position")
    assert int(pos_nodes.sum()) == 1 + 5
    assert bool((g.io[pos_nodes] == 1).all())
    assert g.spec.tensors["cls"].kind == "edges" and g.spec.tensors["pos"].kind == "edges"
    # the layer scale is a diagonal edge set (one edge per channel)
    t = g.spec.tensors["gamma"]
    assert t.kind == "edges" and t.numel == 8
    assert bool((g.edge_type[t.offset : t.offset + 8] == EDGE_TYPES.index("scale")).all())
    src, dst, _ = edges_of(g, "gamma")
    assert torch.equal(src - src[0], torch.arange(8)) and torch.equal(dst - dst[0], torch.arange(8))


def test_tiny_embedding_lm() -> None:
    vocab, ctx = 11, 6
    model = build(lambda: TinyLM(vocab=vocab, ctx=ctx))
    ids = torch.randint(0, vocab, (2, ctx), generator=torch.Generator().manual_seed(4))
    g = check_model(model, ids)
    assert node_kind_count(g, "embedding_in") == vocab + ctx
    assert int((g.io == 1).sum()) == vocab + ctx
    assert int((g.io == 2).sum()) == vocab
    stream = class_of(g, "tok")
    assert {"tok", "pos", "o", "ln"} <= set(stream["sets"])
    qk = class_of(g, "q")
    assert qk["blocks"] == (2, 4) and set(qk["sets"]) == {"q", "k"}
    assert class_of(g, "v")["blocks"] == (2, 4)
    # embedding weight [vocab, d]: edge k from vocabulary entry k // 8 to feature k % 8
    src, dst, _ = edges_of(g, "tok.weight")
    k = torch.arange(vocab * 8)
    assert torch.equal(src, set_info(g, "tok:vocab").start + k // 8)
    assert torch.equal(dst, set_info(g, "tok").start + k % 8)
