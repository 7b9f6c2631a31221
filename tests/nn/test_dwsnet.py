"""DWSNet (Navon et al. 2023): per-block equivariance, fixed input / output neurons, sensitivity to inconsistent
permutations, the layer spans exactly the equivariant affine maps (rank = Burnside orbit count; a hand-written
and a group-averaged random equivariant map are fitted exactly), errors, and learning on held-out graphs."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch

import wsl
from wsl.nn import DWSNet
from wsl.nn.dws_layers import DWSLayer
from wsl.testing.checks import inconsistent_graph

from .archs import make_graph
from .test_baselines import ResidualMLP, zoo

SPACES = [(2, 8, 6, 3), (3, 5, 1), (2, 4, 5, 3, 2)]  # two hidden layers, one, three (interior + distant weights)
CONFIGS = [("ds", "sum"), ("ds", "mean"), ("ds", "max"), ("sab", "max")]
Tensors = tuple[list[Tensor], list[Tensor]]


# --------------------------------------------------------------------------- helpers (independent of wsl)
def random_space(dims, batch: int, channels: int, gen: torch.Generator) -> Tensors:
    ws = [torch.randn(batch, dims[i + 1], dims[i], channels, generator=gen, dtype=torch.float64)
          for i in range(len(dims) - 1)]
    bs = [torch.randn(batch, dims[i + 1], channels, generator=gen, dtype=torch.float64) for i in range(len(dims) - 1)]
    return ws, bs


def permute(ws: list[Tensor], bs: list[Tensor], perms: list[Tensor]) -> Tensors:
    """``W_i -> P_{i+1} W_i P_i^T``, ``b_i -> P_{i+1} b_i`` with one index permutation per neuron layer."""
    return ([w[:, perms[i + 1]][:, :, perms[i]] for i, w in enumerate(ws)],
            [b[:, perms[i + 1]] for i, b in enumerate(bs)])


def both(pair: Tensors) -> list[Tensor]:
    """Weights then biases in one list."""
    return [*pair[0], *pair[1]]


def hidden_perms(dims, gen: torch.Generator) -> list[Tensor]:
    """Random permutations of every hidden layer (none the identity), identity on inputs and outputs."""
    perms = [torch.arange(d) for d in dims]
    for k in range(1, len(dims) - 1):
        p = torch.randperm(dims[k], generator=gen)
        perms[k] = torch.roll(p, 1) if torch.equal(p, torch.arange(dims[k])) else p
    return perms


def close(a: Tensor, b: Tensor, tol: float = 1e-10) -> bool:
    return float((a - b).abs().max()) <= tol * (1 + float(b.abs().max()))


def layer(dims, c_in: int, c_out: int, set_layer: str = "ds", reduction: str = "sum", seed: int = 0) -> DWSLayer:
    torch.manual_seed(seed)
    return DWSLayer(dims, c_in, c_out, set_layer=set_layer, reduction=reduction, num_heads=2).double()


# --------------------------------------------------------------------------- equivariance
@pytest.mark.parametrize("set_layer,reduction", CONFIGS)
@pytest.mark.parametrize("dims", SPACES)
def test_every_block_is_equivariant(dims, set_layer, reduction):
    """Each (source tensor -> target tensor) block on its own: only the source is non-zero, the zero-input
    output (the affine offset) is subtracted; the block is not zero and permutes with the hidden neurons."""
    gen = torch.Generator().manual_seed(0)
    lay = layer(dims, 2, 4, set_layer, reduction)
    n = len(dims) - 1
    zeros = [torch.zeros_like(t) for t in both(random_space(dims, 3, 2, gen))]
    with torch.no_grad():
        offset = both(lay(zeros[:n], zeros[n:]))
        for src in range(2 * n):
            x = [t.clone() for t in zeros]
            x[src] = torch.randn(x[src].shape, generator=gen, dtype=torch.float64)
            perms = hidden_perms(dims, gen)
            out = [o - c for o, c in zip(both(lay(x[:n], x[n:])), offset)]
            px = permute(x[:n], x[n:], perms)
            pout = [o - c for o, c in zip(both(lay(*px)), offset)]
            want = both(permute(out[:n], out[n:], perms))
            for dst in range(2 * n):
                assert float(out[dst].abs().max()) > 1e-6, (src, dst)  # the block exists
                assert close(pout[dst], want[dst]), (src, dst, float((pout[dst] - want[dst]).abs().max()))


@pytest.mark.parametrize("set_layer,reduction", CONFIGS)
@pytest.mark.parametrize("dims", SPACES)
def test_inputs_and_outputs_are_not_permuted(dims, set_layer, reduction):
    """Input neurons (columns of W_0) and output neurons (rows of W_{L-1}, b_{L-1}) are not a symmetry: the layer
    is not equivariant to permuting them, and the invariant model output changes."""
    gen = torch.Generator().manual_seed(1)
    lay = layer(dims, 1, 3, set_layer, reduction)
    ws, bs = random_space(dims, 2, 1, gen)
    torch.manual_seed(0)
    graph = wsl.to_graph(_mlp(dims), example_inputs=torch.randn(2, dims[0]))
    model = DWSNet(graph, 3, hidden_dim=4, num_layers=2, set_layer=set_layer, reduction=reduction, num_heads=2)
    model = model.double().eval()
    for end in (0, len(dims) - 1):
        if dims[end] < 2:
            continue
        perms = [torch.arange(d) for d in dims]
        perms[end] = torch.roll(perms[end], 1)
        with torch.no_grad():
            out = both(lay(ws, bs))
            pout = both(lay(*permute(ws, bs, perms)))
            want = both(permute(out[: len(ws)], out[len(ws) :], perms))
            assert not all(close(a, b, 1e-6) for a, b in zip(pout, want)), end
            ref, moved = model.invariant_forward(ws, bs), model.invariant_forward(*permute(ws, bs, perms))
        assert not close(moved, ref, 1e-6), end


@pytest.mark.parametrize("set_layer,reduction", CONFIGS)
@pytest.mark.parametrize("dims", SPACES)
def test_model_equivariant_features_and_invariant_output(dims, set_layer, reduction):
    torch.manual_seed(0)
    graph = wsl.to_graph(_mlp(dims), example_inputs=torch.randn(2, dims[0]))
    model = DWSNet(graph, 3, hidden_dim=4, num_layers=3, set_layer=set_layer, reduction=reduction, num_heads=2)
    model = model.double().eval()
    gen = torch.Generator().manual_seed(2)
    ws, bs = random_space(dims, 3, 1, gen)
    perms = hidden_perms(dims, gen)
    with torch.no_grad():
        fw, fb = model.equivariant_forward(ws, bs)
        pw, pb = model.equivariant_forward(*permute(ws, bs, perms))
        ref, out = model.invariant_forward(ws, bs), model.invariant_forward(*permute(ws, bs, perms))
    for a, b in zip(pw + pb, both(permute(fw, fb, perms))):
        assert close(a, b)
    assert close(out, ref)
    assert float((ref[0] - ref[1]).abs().max()) > 1e-6  # not a constant function


def _mlp(dims) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


@pytest.mark.parametrize("set_layer,reduction", CONFIGS)
def test_invariant_on_graph_symmetries_and_sees_inconsistent_permutations(set_layer, reduction):
    graphs = [make_graph("mlp_relu", s) for s in range(3)] + [make_graph("siren", 3)]  # same 3-6-5-2 architecture
    for g in graphs:
        g.x, g.edge_attr = g.x.double(), g.edge_attr.double()
    torch.manual_seed(0)
    model = DWSNet(graphs[0], 3, hidden_dim=8, num_layers=3, set_layer=set_layer, reduction=reduction,
                   num_heads=2).double().eval()
    gen = torch.Generator().manual_seed(3)
    moved = [g.apply_symmetry(g.spec.sample_symmetry(gen, scale=False)) for g in graphs]
    assert any(not torch.equal(a.edge_attr, b.edge_attr) for a, b in zip(graphs, moved))
    bad = [inconsistent_graph(graphs[0], gen)] + graphs[1:]
    with torch.no_grad():
        ref = model(Batch.from_data_list(graphs))
        out = model(Batch.from_data_list(moved))
        wrong = model(Batch.from_data_list(bad))
    assert ref.shape == (4, 3) and ref.dtype == torch.float64
    assert close(out, ref)
    assert float((wrong[0] - ref[0]).abs().max()) > 1e-6 * (1 + float(ref[0].abs().max()))
    assert close(wrong[1:], ref[1:])  # graphs in a batch do not interact (eval mode)


def test_inconsistent_tensor_permutation_changes_output():
    """Rows of W_0 permuted without b_0 and the columns of W_1: not a symmetry."""
    dims = (2, 8, 6, 3)
    gen = torch.Generator().manual_seed(4)
    torch.manual_seed(0)
    model = DWSNet(wsl.to_graph(_mlp(dims), example_inputs=torch.randn(2, 2)), 2, hidden_dim=4, num_layers=2)
    model = model.double().eval()
    ws, bs = random_space(dims, 2, 1, gen)
    bad = [ws[0][:, torch.roll(torch.arange(8), 1)], *ws[1:]]
    with torch.no_grad():
        assert not close(model.invariant_forward(bad, bs), model.invariant_forward(ws, bs), 1e-6)


# --------------------------------------------------------------------------- expressivity
def _index_perm(dims, perms) -> Tensor:
    """The permutation of the flattened weight space (channel 1) that ``perms`` induces."""
    n = sum(dims[i] * dims[i + 1] + dims[i + 1] for i in range(len(dims) - 1))
    ws, bs = _unflat(dims, torch.arange(n, dtype=torch.float64)[None])
    return _flat(*permute(ws, bs, perms))[0].long()


def _flat(ws: list[Tensor], bs: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(t.shape[0], -1) for t in ws + bs], dim=1)


def _unflat(dims, v: Tensor, channels: int = 1) -> Tensors:
    out, i = [], 0
    shapes = [(dims[k + 1], dims[k]) for k in range(len(dims) - 1)] + [(dims[k + 1],) for k in range(len(dims) - 1)]
    for s in shapes:
        m = channels * int(torch.tensor(s).prod())
        out.append(v[:, i : i + m].reshape(v.shape[0], *s, channels))
        i += m
    return out[: len(dims) - 1], out[len(dims) - 1 :]


def group(dims):
    """Every element of S_{d_1} x ... x S_{d_{L-1}} as per-layer index permutations."""
    hidden = [list(itertools.permutations(range(d))) for d in dims[1:-1]]
    for combo in itertools.product(*hidden):
        yield [torch.arange(dims[0]), *[torch.tensor(p) for p in combo], torch.arange(dims[-1])]


def orbit_counts(dims) -> tuple[int, int]:
    """(orbits of G on index pairs, orbits on indices) by Burnside's lemma: averages of fix(g)^2 and fix(g)."""
    fixes = [int((p == torch.arange(len(p))).sum()) for p in (_index_perm(dims, g) for g in group(dims))]
    assert sum(f * f for f in fixes) % len(fixes) == 0 and sum(fixes) % len(fixes) == 0
    return sum(f * f for f in fixes) // len(fixes), sum(fixes) // len(fixes)


def matrix_jacobian(lay: DWSLayer, dims, c_in: int) -> tuple[Tensor, Tensor, list[str]]:
    """For an affine layer ``y = M(theta) x + c(theta)``: columns ``vec M`` and ``c`` per parameter (the map is
    linear in each parameter tensor, so setting one parameter to 1 and the rest to 0 reads off its column)."""
    n_in = _flat(*random_space(dims, 1, c_in, torch.Generator())).shape[1]
    basis = torch.eye(n_in, dtype=torch.float64)
    inputs = _unflat(dims, torch.cat([basis, torch.zeros(1, n_in, dtype=torch.float64)]), c_in)
    names = [n for n, _ in lay.named_parameters()]
    cols_m, cols_c = [], []
    params = dict(lay.named_parameters())
    for name in names:
        for j in range(params[name].numel()):
            probe = {k: torch.zeros_like(v) for k, v in params.items()}
            probe[name].view(-1)[j] = 1.0
            out = _flat(*torch.func.functional_call(lay, probe, inputs))
            cols_m.append((out[:-1] - out[-1:]).reshape(-1))
            cols_c.append(out[-1])
    return torch.stack(cols_m, 1), torch.stack(cols_c, 1), names


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("dims,c_in,c_out", [((2, 3, 2, 1), 1, 1), ((1, 2, 3, 2, 1), 1, 1), ((2, 3, 1), 2, 3),
                                             ((3, 2), 1, 2)])
def test_layer_spans_exactly_the_equivariant_affine_maps(dims, c_in, c_out, reduction):
    """dim Hom_G(V, V') = (orbits of G on index pairs) * c c' (permutation representations); the affine offsets:
    orbits on indices * c'. The linear DWS layer reaches that rank, with exactly that many weights."""
    lay = layer(dims, c_in, c_out, "ds", reduction)
    jm, jc, _ = matrix_jacobian(lay, dims, c_in)
    pairs, singles = orbit_counts(dims)
    assert int(torch.linalg.matrix_rank(jm)) == pairs * c_in * c_out
    assert int(torch.linalg.matrix_rank(jc)) == singles * c_out
    n_params = sum(p.numel() for p in lay.parameters())
    assert n_params == pairs * c_in * c_out + singles * c_out  # no redundant parameter


def _fit_residual(lay: DWSLayer, dims, target: Tensor) -> float:
    jm, _, _ = matrix_jacobian(lay, dims, 1)
    sol = torch.linalg.lstsq(jm, target.T.reshape(-1, 1)).solution  # inputs x outputs layout of matrix_jacobian
    return float((jm @ sol - target.T.reshape(-1, 1)).norm() / target.norm())


def _as_matrix(fn, dims) -> Tensor:
    n = _flat(*random_space(dims, 1, 1, torch.Generator())).shape[1]
    return _flat(*fn(*_unflat(dims, torch.eye(n, dtype=torch.float64)))).T  # column j = image of e_j


def hand_map(ws: list[Tensor], bs: list[Tensor]) -> Tensors:
    """A hand-written equivariant linear map of 2-3-4-1 MLPs (``[B, out, in, 1]`` / ``[B, out, 1]``)."""
    (w0, w1, w2), (b0, b1, b2) = ws, bs
    a = torch.tensor([1.0, -2.0], dtype=torch.float64).view(1, 1, 2, 1)  # depends on the (fixed) input index
    w0n = w0 - w0.mean(1, keepdim=True) + w1.sum(1).unsqueeze(2) * a
    w1n = 2 * w1 + b0.unsqueeze(1) - b1.unsqueeze(2) + w0[:, :, :1].transpose(1, 2)
    w2n = 3 * w2 + b2.unsqueeze(2) + w1.mean(2).unsqueeze(1) - w0.sum((1, 2)).view(-1, 1, 1, 1)
    b0n = b0 + w0[:, :, 1] - w1.sum(1)
    b1n = b1.sum(1, keepdim=True).expand_as(b1) + w2[:, 0]
    b2n = b2 + w1.mean((1, 2)).unsqueeze(1)
    return [w0n, w1n, w2n], [b0n, b1n, b2n]


def test_fits_hand_written_and_group_averaged_equivariant_maps():
    dims = (2, 3, 4, 1)
    lay = layer(dims, 1, 1, "ds", "sum")
    target = _as_matrix(hand_map, dims)
    elements = list(group(dims))
    gen = torch.Generator().manual_seed(5)
    perms = [_index_perm(dims, g) for g in elements[:: max(1, len(elements) // 6)]]
    assert all(close(target[p][:, p], target) for p in perms)  # the hand-written map is equivariant
    assert _fit_residual(lay, dims, target) < 1e-10
    rand = torch.randn(target.shape, generator=gen, dtype=torch.float64)
    averaged = sum(rand[_index_perm(dims, g)][:, _index_perm(dims, g)] for g in elements) / len(elements)
    assert _fit_residual(lay, dims, averaged) < 1e-10  # Reynolds projection: any equivariant map
    assert _fit_residual(lay, dims, rand) > 0.3  # control: a generic linear map is out of reach


# --------------------------------------------------------------------------- model
def test_single_layer_mlp_has_no_hidden_symmetry():
    graph = wsl.to_graph(nn.Linear(3, 2), example_inputs=torch.randn(2, 3))
    torch.manual_seed(0)
    model = DWSNet(graph, 2, hidden_dim=4, num_layers=2).double().eval()
    gen = torch.Generator().manual_seed(6)
    ws, bs = random_space((3, 2), 2, 1, gen)
    with torch.no_grad():
        ref = model.invariant_forward(ws, bs)
        swapped = model.invariant_forward([ws[0][:, :, [1, 0, 2]]], bs)
    assert not close(swapped, ref, 1e-6)


def test_rejects_unsupported_architectures_and_options():
    with pytest.raises(ValueError, match=r"'0.weight'.*not a Linear \[out, in\] weight.*DWSNet supports MLP"):
        DWSNet(zoo("cnn", 1)[0])
    with pytest.raises(ValueError, match="'bn1.weight'.*DWSNet supports MLP"):
        DWSNet(make_graph("rescnn", 0))
    with pytest.raises(ValueError, match="'ln1.weight'.*DWSNet supports MLP"):
        DWSNet(make_graph("transformer", 0))
    with pytest.raises(ValueError, match="'0.weight'.*no bias"):
        DWSNet(wsl.to_graph(nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2)),
                            example_inputs=torch.randn(2, 3)))
    with pytest.raises(ValueError, match="'out.weight'.*not wired as a plain chain"):
        DWSNet(wsl.to_graph(ResidualMLP(), example_inputs=torch.randn(2, 3)))
    with pytest.raises(ValueError, match="reduction"):
        DWSNet(make_graph("mlp_relu", 0), reduction="median")
    with pytest.raises(ValueError, match="set_layer"):
        DWSLayer((2, 3, 1), 1, 1, set_layer="gnn")
    with pytest.raises(ValueError, match=r"weights\[1\] has shape"):
        DWSLayer((2, 3, 1), 1, 1)([torch.zeros(1, 3, 2, 1), torch.zeros(1, 3, 1, 1)], [torch.zeros(1, 3, 1)] * 2)


def test_rejects_another_architecture_and_mixed_batches():
    model = DWSNet(zoo("mlp", 2))  # built from a list (or a graph / batch / spec)
    other = wsl.to_graph(nn.Sequential(nn.Linear(3, 7), nn.ReLU(), nn.Linear(7, 2)), example_inputs=torch.randn(2, 3))
    with pytest.raises(ValueError, match="built for .*'Sequential'.*one MLP architecture"):
        model([other])
    with pytest.raises(ValueError, match="batch mixes architectures.*single-architecture zoo"):
        model(Batch.from_data_list([make_graph("mlp_relu", 0), other]))


@pytest.fixture(scope="module")
def regression_zoo():
    graphs = [make_graph("mlp_relu", s) for s in range(64)]
    target = torch.stack([g.to_state_dict()["2.bias"].mean() for g in graphs])[:, None]  # pooled over hidden set
    return graphs, (target - target[:48].mean()) / target[:48].std()


def _train(graphs, target, seed: int = 0) -> DWSNet:
    torch.manual_seed(seed)
    model = DWSNet(graphs[0], 1, hidden_dim=16, num_layers=2, reduction="mean", num_heads=4)
    batch = Batch.from_data_list(graphs)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        F.mse_loss(model(batch), target).backward()
        opt.step()
    return model.eval()


def test_learns_invariant_target_on_held_out_graphs(regression_zoo):
    """Trained on 48 MLPs, tested on 16 others: beats the constant (train-mean) predictor; the same training on
    shuffled targets does not."""
    graphs, target = regression_zoo
    test = Batch.from_data_list(graphs[48:])
    constant = float(F.mse_loss(target[:48].mean().expand(16, 1), target[48:]))
    shuffled_target = target[:48][torch.randperm(48, generator=torch.Generator().manual_seed(0))]
    models = _train(graphs[:48], target[:48]), _train(graphs[:48], shuffled_target)
    with torch.no_grad():
        learned, shuffled = (float(F.mse_loss(m(test), target[48:])) for m in models)
    assert learned < 0.3 * constant, (learned, constant)
    assert shuffled > 0.7 * constant, (shuffled, constant)
