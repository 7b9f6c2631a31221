"""Single-architecture baselines: stacked state dicts, StatNN and the nfn-based NFN (symmetry, errors, learning)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch

import wsl
from wsl.nn.baselines import NFN, StatNN, batch_tensors
from wsl.nn.dwsnet import DWSNet
from wsl.testing.checks import inconsistent_graph, randomize_

from .archs import make_graph

pytest.importorskip("nfn")

TOL = 1e-4


def plain_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))


class ResidualMLP(nn.Module):
    """Shapes chain like a plain MLP, but the hidden layer has a skip connection."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(3, 5), nn.Linear(5, 5), nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.fc1(x))
        return self.out(h + F.relu(self.fc2(h)))


def graph_of(build, shape, seed: int):
    torch.manual_seed(seed)
    model = build()
    gen = torch.Generator().manual_seed(seed)
    randomize_(model, gen, scale=0.5)
    return wsl.to_graph(model, example_inputs=torch.randn(*shape, generator=gen))


def zoo(arch: str, n: int = 4, start: int = 0) -> list:
    if arch == "cnn":
        return [graph_of(plain_cnn, (2, 2, 6, 6), s) for s in range(start, start + n)]
    return [make_graph("mlp_relu", s) for s in range(start, start + n)]


MODELS = {
    "statnn": lambda g: StatNN(3, hidden_dim=32),
    "nfn_np": lambda g: NFN(g, 3, hidden_dim=8, num_layers=2, head_dim=32),
    "nfn_hnp": lambda g: NFN(g, 3, hidden_dim=8, num_layers=2, head_dim=32, mode="HNP"),
    "nfn_np_fourier": lambda g: NFN(g, 3, hidden_dim=8, num_layers=2, head_dim=32, fourier_features=4),
    "nfn_hnp_fourier": lambda g: NFN(g, 3, hidden_dim=8, num_layers=2, head_dim=32, mode="HNP",
                                     fourier_features=4),
    "dwsnet": lambda g: DWSNet(g, 3, hidden_dim=8, num_layers=2, num_heads=2),
}
MLP_ONLY = {"dwsnet"}  # DWSNet refuses CNN zoos (tests/nn/test_dwsnet.py)


def _model(name: str, graph):
    torch.manual_seed(0)
    return MODELS[name](graph).eval()


def _close(a: Tensor, b: Tensor, tol: float = TOL) -> bool:
    return float((a - b).abs().max()) <= tol * (1 + float(b.abs().max()))


# --------------------------------------------------------------------------- batch_tensors
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_batch_tensors_equal_stacked_state_dicts(arch):
    graphs = zoo(arch)
    got = batch_tensors(Batch.from_data_list(graphs))
    want = [g.to_state_dict() for g in graphs]
    assert list(got) == list(want[0])
    for key, v in got.items():
        assert v.dtype == want[0][key].dtype
        assert torch.equal(v, torch.stack([sd[key] for sd in want])), key
    single = batch_tensors(graphs[1])  # one graph, and a list, work too
    assert all(torch.equal(single[k][0], want[1][k]) for k in single)
    listed = batch_tensors(graphs[:2])
    assert all(listed[k].shape[0] == 2 for k in listed)


def test_batch_tensors_is_differentiable():
    batch = Batch.from_data_list(zoo("cnn", 3))
    batch.edge_attr.requires_grad_(True)
    batch.x.requires_grad_(True)
    t = batch_tensors(batch)
    sum(v.sum() for v in t.values()).backward()
    assert torch.equal(batch.edge_attr.grad, torch.ones_like(batch.edge_attr))  # every edge is a weight
    bias_nodes = torch.cat([a.atoms for k, a in batch.spec[0].tensors.items() if k.endswith("bias")])
    assert float(batch.x.grad[:, 0].sum()) == 3 * bias_nodes.numel()
    assert float(batch.x.grad[:, 1:].abs().sum()) == 0


@pytest.mark.parametrize("name", ["statnn", "nfn_np", "dwsnet"])
def test_baselines_see_dataset_normalization(name):
    """A normalizing dataset attaches edge_norm / node_norm: batch_tensors(standardize=True) applies them per
    tensor, and the baselines read those values (before this, NFN / StatNN silently got raw weights)."""
    from wsl.nn.stats import WeightStats

    graphs = zoo("mlp", 6)
    stats = WeightStats.fit(graphs)
    raw, normed = Batch.from_data_list(graphs), Batch.from_data_list([stats(g) for g in graphs])
    t_raw, t_std = batch_tensors(raw), batch_tensors(normed, standardize=True)
    for key, v in t_raw.items():
        flat = v.double().reshape(-1)
        assert torch.allclose(t_std[key].double().reshape(-1), (flat - flat.mean()) / flat.std(unbiased=False),
                              atol=1e-5), key
    assert all(torch.equal(batch_tensors(raw, standardize=True)[k], v.float()) for k, v in t_raw.items())
    model = _model(name, graphs[0])
    with torch.no_grad():
        assert not _close(model(normed), model(raw))


def test_batch_tensors_rejects_mixed_architectures():
    graphs = [make_graph("mlp_relu", 0), zoo("cnn", 1)[0]]
    with pytest.raises(ValueError, match="single-architecture zoo") as err:
        batch_tensors(Batch.from_data_list(graphs))
    assert "'0.weight'" in str(err.value) and "graph 1" in str(err.value)


# --------------------------------------------------------------------------- symmetry
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_invariant_under_symmetries(name, arch):
    if arch == "cnn" and name in MLP_ONLY:
        pytest.skip(f"{name} takes MLP zoos only")
    graphs = zoo(arch)
    model = _model(name, graphs[0])
    gen = torch.Generator().manual_seed(1)
    moved = [g.apply_symmetry(g.spec.sample_symmetry(gen, scale=False)) for g in graphs]
    assert any(not torch.equal(a.edge_attr, b.edge_attr) for a, b in zip(graphs, moved))
    with torch.no_grad():
        ref = model(Batch.from_data_list(graphs))
        out = model(Batch.from_data_list(moved))
    assert ref.shape == (len(graphs), 3)
    assert _close(out, ref), (out - ref).abs().max()


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("name", sorted(n for n in MODELS if n.startswith("nfn")))
def test_nfn_sees_inconsistent_permutations(name, arch):
    graphs = zoo(arch)
    model = _model(name, graphs[0])
    gen = torch.Generator().manual_seed(3)
    moved = [g.apply_symmetry(g.spec.sample_symmetry(gen, scale=False)) for g in graphs]
    bad = [inconsistent_graph(graphs[0], gen)] + graphs[1:]
    with torch.no_grad():
        ref = model(Batch.from_data_list(graphs))
        noise = float((model(Batch.from_data_list(moved))[0] - ref[0]).abs().max())  # rounding under a symmetry
        out = model(Batch.from_data_list(bad))
    assert float((out[0] - ref[0]).abs().max()) > 100 * noise + 1e-6 * (1 + float(ref[0].abs().max()))
    assert _close(out[1:], ref[1:], 1e-6)  # graphs in a batch do not interact


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_statnn_sees_weight_noise(arch):
    graphs = zoo(arch)
    model = _model("statnn", graphs[0])
    noisy = [g.clone_structure() for g in graphs]
    noisy[0].edge_attr = graphs[0].edge_attr + 0.1 * torch.randn(graphs[0].edge_attr.shape)
    with torch.no_grad():
        ref = model(Batch.from_data_list(graphs))
        out = model(Batch.from_data_list(noisy))
    assert float((out[0] - ref[0]).abs().max()) > 1e-3 * (1 + float(ref[0].abs().max()))
    assert _close(out[1:], ref[1:], 1e-6)


# --------------------------------------------------------------------------- errors
def test_nfn_rejects_unsupported_architectures():
    with pytest.raises(ValueError, match="'bn1.weight'.*plain CNN.*wsl.nn.GMN"):
        NFN(make_graph("rescnn", 0))
    with pytest.raises(ValueError, match="'ln1.weight'"):
        NFN(make_graph("transformer", 0))
    no_bias = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="'0.weight'.*no bias"):
        NFN(wsl.to_graph(no_bias, example_inputs=torch.randn(2, 3)))
    with pytest.raises(ValueError, match="'out.weight'.*not wired as a plain chain"):
        NFN(wsl.to_graph(ResidualMLP(), example_inputs=torch.randn(2, 3)))
    one_layer = wsl.to_graph(nn.Linear(3, 2), example_inputs=torch.randn(2, 3))
    with pytest.raises(ValueError, match="at least two layers"):
        NFN(one_layer)
    with pytest.raises(ValueError, match="mode"):
        NFN(make_graph("mlp_relu", 0), mode="full")


def test_models_reject_another_architecture():
    mlp, cnn = zoo("mlp", 2), zoo("cnn", 2)
    other = graph_of(lambda: nn.Sequential(nn.Linear(3, 7), nn.ReLU(), nn.Linear(7, 2)), (4, 3), 0)
    model = NFN(Batch.from_data_list(mlp))  # built from a batch (or a graph / spec / list)
    for wrong in (cnn, [other]):
        with pytest.raises(ValueError, match="built for"):
            model(Batch.from_data_list(wrong))
    stat = StatNN()
    stat(mlp)
    with pytest.raises(ValueError, match="another architecture"):
        stat(cnn)


# --------------------------------------------------------------------------- learning
@pytest.mark.parametrize("name", ["statnn", "nfn_np", "dwsnet"])
def test_learns_synthetic_target(name):
    graphs = [make_graph("mlp_relu", s) for s in range(16)]
    batch = Batch.from_data_list(graphs)
    target = torch.stack([g.to_state_dict()["4.bias"].mean() for g in graphs])[:, None]
    target = (target - target.mean()) / target.std()
    torch.manual_seed(0)
    model = {"statnn": lambda: StatNN(1, hidden_dim=64),
             "nfn_np": lambda: NFN(graphs[0], 1, hidden_dim=16, num_layers=2, head_dim=64),
             "dwsnet": lambda: DWSNet(graphs[0], 1, hidden_dim=16, num_layers=2, num_heads=4)}[name]()
    model(batch)  # materialize lazy layers before building the optimizer
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        first = float(F.mse_loss(model(batch), target))
    for _ in range(60):
        opt.zero_grad()
        loss = F.mse_loss(model(batch), target)
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = float(F.mse_loss(model(batch), target))
    assert last < 0.5 * first, (first, last)
