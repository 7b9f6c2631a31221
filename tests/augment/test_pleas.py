"""PLeaS (Nasery et al. 2024): partial matching + per-layer least squares; exact on permuted copies and at
width 2 (both models side by side), closer to the ensemble than averaging on trained networks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import wsl
from wsl.align.pleas import pleas
from wsl.merging import merge
from wsl.testing.checks import max_output_diff

from .nets import build


def mlp(w1: int = 16, w2: int = 12) -> nn.Module:
    return nn.Sequential(nn.Linear(4, w1), nn.ReLU(), nn.Linear(w1, w2), nn.ReLU(), nn.Linear(w2, 3))


class ResCNN(nn.Module):
    """Conv + BatchNorm stem, one residual block (width ``h``) on a stream of width ``c``, linear head."""

    def __init__(self, c: int = 4, h: int = 6) -> None:
        super().__init__()
        self.stem, self.bn1 = nn.Conv2d(2, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv1, self.bnh = nn.Conv2d(c, h, 3, padding=1), nn.BatchNorm2d(h)
        self.conv2, self.bn2 = nn.Conv2d(h, c, 3, padding=1), nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.stem(x)))
        y = F.relu(self.bnh(self.conv1(x)))
        x = F.relu(x + self.bn2(self.conv2(y)))
        return self.fc(x.mean(dim=(2, 3)))


def _gauss(seed: int, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _random_cnn(seed: int, c: int = 4, h: int = 6) -> ResCNN:
    torch.manual_seed(seed)
    m = ResCNN(c, h)
    with torch.no_grad():
        for bn in (m.bn1, m.bnh, m.bn2):
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.3, 0.3)
            bn.running_mean.uniform_(-0.2, 0.2), bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _trained_mlp(seed: int, x: Tensor, y: Tensor, steps: int = 300) -> nn.Module:
    torch.manual_seed(seed)
    m = mlp()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    return m.eval()


def _task(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Three classes from a fixed random teacher (nonlinear boundaries)."""
    x = _gauss(seed, n, 4)
    g = torch.Generator().manual_seed(123)
    w1, w2 = torch.randn(4, 8, generator=g), torch.randn(8, 3, generator=g)
    return x, (torch.tanh(x @ w1) @ w2).argmax(1)


def _err(model: nn.Module, target: Tensor, x: Tensor) -> float:
    with torch.no_grad():
        return float((model.eval()(x) - target).pow(2).mean().sqrt())


@pytest.mark.parametrize("arch", ["mlp_relu", "mlp_tanh", "rescnn"])
def test_full_width_recovers_a_permuted_copy(arch: str) -> None:
    model, g, x = build(arch, seed=1)
    model.eval()
    copy = wsl.from_graph(g.apply_symmetry(g.spec.sample_symmetry(torch.Generator().manual_seed(0), scale=True)),
                          model)
    data, held = _gauss(1, 256, *x.shape[1:]), _gauss(2, 64, *x.shape[1:])
    with torch.no_grad():
        scale = float(model(held).abs().max())
    assert max_output_diff(model, merge([model, copy], method="average"), held) > 1e-2 * scale
    exact = merge([model, copy], method="pleas", data=data, ridge=0.0)
    assert isinstance(exact, type(model)) and not exact.training
    assert max_output_diff(model, exact, held) < 1e-5 * scale
    assert max_output_diff(model, merge([copy, model], method="pleas", data=data), held) < 1e-2 * scale
    res = pleas([model, copy], data)
    assert all(len(grp) == 2 for groups in res.groups.values() for grp in groups)  # every neuron merged


def test_batchnorm_is_folded_with_recomputed_statistics() -> None:
    a, b = _random_cnn(0), _random_cnn(1)
    data = _gauss(0, 64, 2, 6, 6)
    merged = merge([a, b], method="pleas", data=data)
    feats = []
    h = merged.stem.register_forward_hook(lambda _m, _i, y: feats.append(y))
    merged(data)
    h.remove()
    y = feats[0].double()
    assert torch.allclose(merged.bn1.running_mean.double(), y.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(merged.bn1.running_var.double(), y.var((0, 2, 3), unbiased=False), rtol=1e-4, atol=1e-6)


def test_trained_mlps_merge_closer_to_the_ensemble_than_averaging() -> None:
    x, y = _task(512, 0)
    held, _ = _task(512, 1)
    a, b = _trained_mlp(0, x, y), _trained_mlp(1, x, y)
    with torch.no_grad():
        ens = (a(held) + b(held)) / 2
    naive = _err(merge([a, b], method="average"), ens, held)
    aligned = _err(merge([a, b], method="aligned"), ens, held)
    ours = _err(merge([a, b], method="pleas", data=x), ens, held)
    assert ours < 0.7 * aligned and ours < 0.7 * naive, (ours, aligned, naive)
    both = _err(merge([a, b], method="pleas", data=x, width=2.0, build=lambda w: mlp(w["0"], w["2"]),
                      ridge=0.0), ens, held)
    assert both < 1e-4 * float(ens.abs().max())  # no pair merged: the two networks side by side, exact
    half = _err(merge([a, b], method="pleas", data=x, width=1.5, build=lambda w: mlp(w["0"], w["2"])), ens, held)
    assert half < ours


def test_width_budget_builds_the_wider_network() -> None:
    a, b = mlp(), mlp()
    data = _gauss(0, 128, 4)
    res = pleas([a, b], data, width=1.5, build=lambda w: mlp(w["0"], w["2"]))
    assert res.widths == {"0": 24, "2": 18}
    assert res.model[0].weight.shape == (24, 4) and res.model[2].weight.shape == (18, 24)
    assert res.model(data).shape == (128, 3)
    assert sum(len(g) == 2 for g in res.groups["0"]) == 8  # 2n - m pairs merged, 2 * 8 neurons kept apart
    assert sorted(i for g in res.groups["0"] for j, i in g if j == 1) == list(range(16))
    res = pleas([a, b], data, width={"2": 20}, build=lambda w: mlp(w["0"], w["2"]))
    assert res.widths == {"0": 16, "2": 20} and res.model(data).shape == (128, 3)
    ca, cb = _random_cnn(0), _random_cnn(1)
    imgs, held = _gauss(1, 32, 2, 6, 6), _gauss(2, 16, 2, 6, 6)
    for width in (1.5, 2.0):
        res = pleas([ca, cb], imgs, width=width, build=lambda w: ResCNN(w["stem"], w["conv1"]).eval(), ridge=0.0)
        c, h = int(round(4 * width)), int(round(6 * width))
        assert res.widths["stem"] == res.widths["bn2"] == c and res.widths["conv1"] == h
        assert res.model.conv2.weight.shape == (c, h, 3, 3) and res.model(held).shape == (16, 3)
    with torch.no_grad():  # width 2: both CNNs side by side, exactly their ensemble
        ens = (ca(held) + cb(held)) / 2
        assert float((res.model(held) - ens).abs().max()) < 1e-4 * float(ens.abs().max())


def test_data_free_variant_runs_and_is_finite() -> None:
    a, b = mlp(), mlp()
    x = _gauss(0, 8, 4)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    m1 = merge([a, b], method="pleas", data="synthetic", example_inputs=x, generator=gen())
    m2 = merge([a, b], method="pleas", data="synthetic", example_inputs=x, generator=gen())
    out = m1(x)
    assert out.shape == (8, 3) and bool(torch.isfinite(out).all()) and torch.equal(out, m2(x))
    ca, cb = _random_cnn(0), _random_cnn(1)
    imgs = _gauss(1, 4, 2, 6, 6)
    out = merge([ca, cb], method="pleas", data="synthetic", example_inputs=imgs)(imgs)
    assert out.shape == (4, 3) and bool(torch.isfinite(out).all())
    public = _gauss(3, 64, 4)  # unlabelled inputs of another distribution
    assert bool(torch.isfinite(merge([a, b], method="pleas", data=public * 2 + 1)(x)).all())


def test_three_models_align_to_the_first_and_fit_the_average() -> None:
    model, g, x = build("mlp_relu", seed=2)
    copies = [wsl.from_graph(g.apply_symmetry(g.spec.sample_symmetry(torch.Generator().manual_seed(s))), model)
              for s in range(2)]
    data, held = _gauss(0, 256, 3), _gauss(1, 64, 3)
    assert max_output_diff(model, merge([model, *copies], method="pleas", data=data, ridge=0.0), held) < 1e-5
    xs, ys = _task(512, 0)
    nets = [_trained_mlp(s, xs, ys, steps=150) for s in range(3)]
    test, _ = _task(256, 1)
    with torch.no_grad():
        ens = sum(m(test) for m in nets) / 3
    res = pleas(nets, [(xs[:256], ys[:256]), (xs[256:], ys[256:])])  # batches of (x, y) pairs
    assert all(len(grp) == 3 for grp in res.groups["0"])
    assert _err(res.model, ens, test) < 0.7 * _err(merge(nets, method="aligned"), ens, test)


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 3, groups=2), nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.b(F.relu(self.a(x))).mean((2, 3)))


def test_bad_input_is_refused_with_what_to_do() -> None:
    a, b = mlp(), mlp()
    data = _gauss(0, 64, 4)
    with pytest.raises(ValueError, match="needs data=.*synthetic"):
        merge([a, b], method="pleas")
    with pytest.raises(ValueError, match="nn.Modules.*from_graph"):
        merge([wsl.to_graph(a, example_inputs=data), wsl.to_graph(b, example_inputs=data)], method="pleas",
              data=data)
    with pytest.raises(ValueError, match=r"wider.*'0': 24.*build="):
        merge([a, b], method="pleas", data=data, width=1.5)
    with pytest.raises(ValueError, match=r"ratio in \[1, 2\]"):
        merge([a, b], method="pleas", data=data, width=2.5)
    with pytest.raises(ValueError, match="two models"):
        merge([a, b, mlp()], method="pleas", data=data, width=1.5, build=lambda w: mlp(w["0"], w["2"]))
    with pytest.raises(ValueError, match="no hidden.*'0', '2'"):
        merge([a, b], method="pleas", data=data, width={"4": 5})
    with pytest.raises(ValueError, match="other widths.*set '0' has 16, asked 24"):
        merge([a, b], method="pleas", data=data, width=1.5, build=lambda w: mlp(16, w["2"]))
    with pytest.raises(ValueError, match="only to method='pleas'"):
        merge([a, b], method="aligned", width=1.5)
    with pytest.raises(ValueError, match="data='x'"):
        merge([a, b], method="pleas", data="x")
    t, _, tx = build("transformer", seed=0)
    with pytest.raises(ValueError, match="LayerNorm.*not supported.*method='aligned'"):
        merge([t, t], method="pleas", data=tx)
    with pytest.raises(ValueError, match="groups"):
        merge([Grouped(), Grouped()], method="pleas", data=_gauss(0, 8, 2, 6, 6))


def mlp_arch() -> nn.Module:
    return mlp()


def test_cli_merge_pleas_is_data_free(tmp_path, capsys) -> None:
    from safetensors.torch import save_file

    from wsl.cli import main

    a = mlp()
    g = wsl.to_graph(a, example_inputs=_gauss(0, 2, 4))
    b = g.apply_symmetry(g.spec.sample_symmetry(torch.Generator().manual_seed(0)))
    save_file(g.to_state_dict(), str(tmp_path / "a.safetensors"))
    save_file(b.to_state_dict(), str(tmp_path / "b.safetensors"))
    out = tmp_path / "m.pt"
    assert main(["merge", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--arch",
                 "module:tests.augment.test_pleas:mlp_arch", "--input-shape", "2,4", "--method", "pleas",
                 "--ridge", "0", "-o", str(out)]) == 0
    assert "merged 2 checkpoints (pleas" in capsys.readouterr().out
    merged = mlp()
    merged.load_state_dict(torch.load(out, weights_only=True))
    assert max_output_diff(a, merged, _gauss(1, 32, 4)) < 1e-4
