"""Batching graphs of different architectures with PyG, and saving / loading graph files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

import wsl
from wsl.graph.serialize import GraphFileError, load_graph, save_graph
from wsl.testing.checks import assert_roundtrip, randomize_, symmetry_output_diff


# ------------------------------------------------------------------------------------------------- models
class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


class SmallAttention(nn.Module):
    def __init__(self, d: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.inp = nn.Linear(4, d)
        self.ln = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.out = nn.Linear(d, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.inp(x)
        h = self.ln(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return self.out(x)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 2))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


ARCHS = [
    ("mlp", _mlp, lambda: torch.randn(4, 3, generator=_gen(10))),
    ("cnn", SmallCNN, lambda: torch.randn(2, 3, 5, 5, generator=_gen(11))),
    ("attention", SmallAttention, lambda: torch.randn(2, 5, 4, generator=_gen(12))),
]


def _build(make, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = make().eval()
    randomize_(model, _gen(seed + 100))
    return model


@pytest.fixture(scope="module")
def zoo() -> list[tuple[nn.Module, Tensor, wsl.ParamGraph]]:
    out = []
    for i, (_, make, inputs) in enumerate(ARCHS):
        model, x = _build(make, seed=i), inputs()
        out.append((model, x, wsl.to_graph(model, example_inputs=x)))
    return out


# ----------------------------------------------------------------------------------------------- batching
def test_batch_offsets_and_unbatch(zoo) -> None:
    graphs = [g for _, _, g in zoo]
    assert len({g.spec.arch for g in graphs}) == 3
    batch = Batch.from_data_list(graphs)
    assert batch.num_graphs == 3
    n_nodes = [g.num_nodes for g in graphs]
    n_edges = [g.edge_index.shape[1] for g in graphs]
    assert batch.num_nodes == sum(n_nodes)
    assert batch.edge_index.shape == (2, sum(n_edges))
    ptr = torch.tensor([0] + n_nodes).cumsum(0)
    assert torch.equal(batch.ptr, ptr)
    assert torch.equal(batch.batch, torch.repeat_interleave(torch.arange(3), torch.tensor(n_nodes)))
    e0 = 0
    for i, g in enumerate(graphs):
        e1 = e0 + n_edges[i]
        ei = batch.edge_index[:, e0:e1]
        # each graph's edges are offset by its first node and stay inside its own node range
        assert torch.equal(ei, g.edge_index + ptr[i])
        assert bool(((ei >= ptr[i]) & (ei < ptr[i + 1])).all())
        # index-like fields that are not node ids are NOT offset
        assert torch.equal(batch.edge_type[e0:e1], g.edge_type)
        assert torch.equal(batch.edge_pos[e0:e1], g.edge_pos)
        assert torch.equal(batch.edge_attr[e0:e1], g.edge_attr)
        a, b = int(ptr[i]), int(ptr[i + 1])
        assert torch.equal(batch.io_index[a:b], g.io_index)
        assert torch.equal(batch.io[a:b], g.io)
        assert torch.equal(batch.node_type[a:b], g.node_type)
        assert torch.equal(batch.node_layer[a:b], g.node_layer)
        assert torch.equal(batch.x[a:b], g.x)
        e0 = e1
    assert torch.equal(batch.io_index, torch.cat([g.io_index for g in graphs]))
    assert torch.equal(batch.edge_type, torch.cat([g.edge_type for g in graphs]))
    assert int(batch.io_index.max()) < max(n_nodes)  # not offset by node counts
    # per-graph state dicts come back bit-exact
    for i, (model, x, g) in enumerate(zoo):
        ex = batch.get_example(i)
        assert ex.spec is g.spec or ex.spec.summary() == g.spec.summary()
        assert_roundtrip(ex, model.state_dict())
        el = ex.spec.sample_symmetry(_gen(i))
        assert symmetry_output_diff(model, ex, el, x) <= 1e-5


def test_batch_refuses_whole_batch_state_dict(zoo) -> None:
    batch = Batch.from_data_list([g for _, _, g in zoo])
    with pytest.raises(ValueError, match="get_example"):
        batch.to_state_dict()


def test_batch_same_architecture_twice(zoo) -> None:
    model, _, g = zoo[0]
    other = _build(_mlp, seed=7)
    g2 = wsl.to_graph(other, spec=g.spec)
    batch = Batch.from_data_list([g, g2, g])
    assert_roundtrip(batch.get_example(0), model.state_dict())
    assert_roundtrip(batch.get_example(1), other.state_dict())
    assert_roundtrip(batch.get_example(2), model.state_dict())
    n = g.num_nodes
    assert torch.equal(batch.edge_index[:, g.edge_index.shape[1] : 2 * g.edge_index.shape[1]], g.edge_index + n)


def test_pyg_dataloader(zoo) -> None:
    graphs = [g for _, _, g in zoo] * 3
    loader = DataLoader(graphs, batch_size=4, shuffle=True, generator=_gen(0))
    seen, batches = 0, 0
    for batch in loader:
        batches += 1
        seen += batch.num_graphs
        assert batch.edge_index.shape[1] == batch.edge_attr.shape[0] == batch.edge_type.shape[0]
        assert batch.x.shape[0] == batch.batch.shape[0] == batch.io_index.shape[0]
        # every edge joins two nodes of the same graph
        src, dst = batch.edge_index
        assert torch.equal(batch.batch[src], batch.batch[dst])
        assert int(batch.edge_index.max()) < batch.num_nodes
        for i in range(batch.num_graphs):
            ex = batch.get_example(i)
            state = ex.to_state_dict()
            assert set(state) == set(ex.spec.keys)
    assert seen == len(graphs) and batches == 3


# --------------------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("arch", range(len(ARCHS)), ids=[a[0] for a in ARCHS])
def test_save_load_roundtrip(zoo, tmp_path: Path, suffix: str, arch: int) -> None:
    model, x, g = zoo[arch]
    path = tmp_path / f"graph{suffix}"
    save_graph(g, path)
    assert path.is_file() and not (tmp_path / f"graph{suffix}.tmp").exists()
    loaded = load_graph(path)
    assert isinstance(loaded, wsl.ParamGraph)
    assert_roundtrip(loaded, model.state_dict())
    assert loaded.spec.summary() == g.spec.summary()
    assert loaded.spec.groups() == g.spec.groups()
    assert loaded.spec.scale_sets() == g.spec.scale_sets()
    for field in ("x", "edge_index", "edge_attr", "edge_type", "edge_pos", "node_type", "node_layer", "io",
                  "io_index", "buffers"):
        assert torch.equal(getattr(loaded, field), getattr(g, field)), field
    # the loaded spec samples the same symmetry elements and they still leave the function unchanged
    el = loaded.spec.sample_symmetry(_gen(3))
    ref = g.spec.sample_symmetry(_gen(3))
    assert torch.equal(el.perm, ref.perm)
    assert not torch.equal(el.perm, torch.arange(loaded.num_nodes))
    assert symmetry_output_diff(model, loaded, el, x) <= 1e-5
    assert torch.equal(loaded.apply_symmetry(el).edge_attr, g.apply_symmetry(ref).edge_attr)
    # loaded graphs batch like fresh ones
    batch = Batch.from_data_list([loaded, g])
    assert_roundtrip(batch.get_example(0), model.state_dict())


def test_pt_graph_file_loads_weights_only(zoo, tmp_path: Path) -> None:
    _, _, g = zoo[1]
    path = tmp_path / "g.pt"
    save_graph(g, path)
    payload = torch.load(path, weights_only=True)  # no pickled code objects in a graph file
    assert isinstance(payload, dict) and "__wsl__" in payload


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_random_bytes_is_not_a_graph(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(os.urandom(256) + bytes(range(256)))
    with pytest.raises(GraphFileError) as info:
        load_graph(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_checkpoint_is_not_a_graph(zoo, tmp_path: Path, suffix: str) -> None:
    model = zoo[0][0]
    path = tmp_path / f"ckpt{suffix}"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if suffix == ".pt":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    with pytest.raises(GraphFileError) as info:
        load_graph(path)
    assert str(path) in str(info.value)


def test_missing_file_is_graph_file_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(GraphFileError) as info:
        load_graph(path)
    assert str(path) in str(info.value)
    assert issubclass(GraphFileError, ValueError)


def test_truncated_graph_file(zoo, tmp_path: Path) -> None:
    _, _, g = zoo[2]
    for suffix in (".pt", ".safetensors"):
        path = tmp_path / f"g{suffix}"
        save_graph(g, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(GraphFileError) as info:
            load_graph(path)
        assert str(path) in str(info.value)
