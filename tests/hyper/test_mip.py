"""Tests for wsl.hyper.external (externalize / using / batched) and wsl.hyper.mip (MIP hypernetworks)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsl.hyper.external import externalize
from wsl.hyper.mip import (
    ConstantNormEncoding,
    MIPHypernetwork,
    ResidualHead,
    constant_norm_encode,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.conv(x)).relu().mean((-2, -1))
        return self.fc(self.ln(h))


def random_like(shapes: dict, g: torch.Generator, batch: tuple[int, ...] = ()) -> dict:
    return {k: torch.randn(*batch, *s, generator=g) for k, s in shapes.items()}


# ----------------------------------------------------------------------------------------- externalize


def test_externalize_lists_params_and_removes_them_from_model() -> None:
    m = mlp()
    ext = externalize(m, modules=["0", "2"])
    assert ext.shapes == {"0.weight": (7, 5), "0.bias": (7,), "2.weight": (3, 7), "2.bias": (3,)}
    assert ext.numel == 7 * 5 + 7 + 3 * 7 + 3
    assert list(m.parameters()) == []
    assert "0.weight" not in m.state_dict()


def test_using_matches_manual_forward() -> None:
    m = mlp()
    ext = externalize(m, modules=["0", "2"])
    p = random_like(ext.shapes, gen())
    x = torch.randn(4, 5, generator=gen(1))
    with ext.using(p):
        y = m(x)
    manual = F.linear(F.linear(x, p["0.weight"], p["0.bias"]).relu(), p["2.weight"], p["2.bias"])
    torch.testing.assert_close(y, manual, rtol=0, atol=0)


def test_initial_values_reproduce_original_model() -> None:
    m = ConvNet()
    x = torch.randn(2, 2, 5, 5, generator=gen())
    ref = m(x)
    ext = externalize(m, modules=(nn.Conv2d, nn.GroupNorm, nn.LayerNorm))
    assert set(ext.names) == {"conv.weight", "conv.bias", "norm.weight", "norm.bias", "ln.weight", "ln.bias"}
    assert [n for n, _ in m.named_parameters()] == ["fc.weight", "fc.bias"]  # untouched module stays trainable
    with ext.using(ext.initial):
        torch.testing.assert_close(m(x), ref)


def test_predicate_and_params_filter() -> None:
    m = mlp()
    ext = externalize(m, modules=lambda name, mod: isinstance(mod, nn.Linear), params=["weight"])
    assert ext.names == ["0.weight", "2.weight"]
    assert [n for n, _ in m.named_parameters()] == ["0.bias", "2.bias"]


def test_gradients_flow_through_using() -> None:
    m = mlp()
    ext = externalize(m, modules="0")
    p = {k: v.clone().requires_grad_() for k, v in ext.initial.items()}
    with ext.using(p):
        m(torch.randn(3, 5, generator=gen())).pow(2).sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in p.values())
    assert m[2].weight.grad is not None  # the non-external layer trains as usual


def test_restored_after_exception_and_reusable() -> None:
    m = mlp()
    ext = externalize(m, modules=["0", "2"])
    p = random_like(ext.shapes, gen())
    with pytest.raises(ZeroDivisionError), ext.using(p):
        m(torch.randn(2, 5))
        raise ZeroDivisionError
    assert m[0]._parameters["weight"] is None and m[2]._parameters["bias"] is None
    with pytest.raises(RuntimeError, match="ext.using"):
        m(torch.randn(2, 5))  # outside using: clear error, not a None crash
    # a forward error inside the block: slots emptied again
    with pytest.raises(RuntimeError, match="mat1"), ext.using(p):
        m(torch.randn(2, 6))
    assert m[0]._parameters["weight"] is None
    with ext.using(p):  # and the handle still works
        assert m(torch.randn(2, 5)).shape == (2, 3)


def test_nested_using_errors() -> None:
    m = mlp()
    ext = externalize(m, modules=["0"])
    p = random_like(ext.shapes, gen())
    with ext.using(p):
        with pytest.raises(RuntimeError, match="nested"), ext.using(p):
            pass
        assert m[0]._parameters["weight"] is p["0.weight"]  # outer block unaffected by the refused inner one
    assert m[0]._parameters["weight"] is None


@pytest.mark.parametrize("model_fn,x_shape,modules", [
    (mlp, (6, 5), ["0", "2"]),
    (ConvNet, (3, 2, 5, 5), None),
])
def test_batched_matches_per_sample_loop(model_fn, x_shape, modules) -> None:
    m = model_fn()
    ext = externalize(m, modules=modules)
    B = 4
    g = gen(3)
    p = {k: v + 0.3 * torch.randn(B, *v.shape, generator=g) for k, v in ext.initial.items()}
    x = torch.randn(B, *x_shape, generator=g)
    out = ext.batched(p, x)
    loop = []
    for b in range(B):
        with ext.using({k: v[b] for k, v in p.items()}):
            loop.append(m(x[b]))
    torch.testing.assert_close(out, torch.stack(loop), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out[0], out[1])  # weight sets really differ per sample


def test_tied_weights_become_one_external() -> None:
    lin = nn.Linear(4, 4)
    m = nn.Sequential(lin, nn.Tanh(), lin)
    ext = externalize(m)
    assert ext.names == ["0.weight", "0.bias"]
    p = random_like(ext.shapes, gen())
    x = torch.randn(3, 4, generator=gen(1))
    manual = F.linear(torch.tanh(F.linear(x, p["0.weight"], p["0.bias"])), p["0.weight"], p["0.bias"])
    with ext.using(p):
        torch.testing.assert_close(m(x), manual)
    pb = {k: v.unsqueeze(0).expand(2, *v.shape) for k, v in p.items()}
    torch.testing.assert_close(ext.batched(pb, x.expand(2, 3, 4))[1], manual)


def test_restore_gives_back_parameters() -> None:
    m = mlp()
    x = torch.randn(2, 5, generator=gen())
    ref = m(x)
    ext = externalize(m, modules=["0"])
    ext.restore()
    assert [n for n, _ in m.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    torch.testing.assert_close(m(x), ref)
    with pytest.raises(RuntimeError, match="restore"), ext.using(ext.initial):
        pass
    externalize(m, modules=["0"])  # can be externalized again


def test_errors_are_clear() -> None:
    m = mlp()
    with pytest.raises(KeyError, match="no module named 'nope'"):
        externalize(m, modules=["nope"])
    with pytest.raises(ValueError, match="hold no parameters"):
        externalize(m, modules=["1"])  # ReLU
    with pytest.raises(ValueError, match="no module of type"):
        externalize(m, modules=nn.Conv2d)
    ext = externalize(m, modules=["0"])
    with pytest.raises(RuntimeError, match="already external"):
        externalize(m, modules=["0"])
    good = random_like(ext.shapes, gen())
    with pytest.raises(ValueError, match=r"0\.weight.*shape \(5, 7\)"), ext.using(
        {**good, "0.weight": torch.zeros(5, 7)}
    ):
        pass
    with pytest.raises(KeyError, match="missing"), ext.using({"0.weight": good["0.weight"]}):
        pass
    with pytest.raises(ValueError, match="leading batch"):
        ext.batched(good, torch.randn(2, 3, 5))
    batched = {k: v.expand(2, *v.shape) for k, v in good.items()}
    with pytest.raises(ValueError, match="B=2"):
        ext.batched(batched, torch.randn(3, 4, 5))


# ----------------------------------------------------------------------------------------------- MIP


@pytest.mark.parametrize("mode,p", [("l2", 2), ("l1", 1)])
def test_encoding_has_constant_norm(mode: str, p: int) -> None:
    g = gen()
    gamma = torch.cat([torch.rand(200, 3, generator=g), torch.zeros(1, 3), torch.ones(1, 3)])
    enc = constant_norm_encode(gamma, mode)
    norms = enc.norm(p=p, dim=-1)
    expected = math.sqrt(3) if mode == "l2" else 3.0
    torch.testing.assert_close(norms, torch.full_like(norms, expected))
    raw = gamma.norm(dim=-1)
    assert raw.max() / raw.min().clamp_min(1e-9) > 10  # the raw inputs' norms did vary


def test_encoding_module_rescales_range_and_rejects_outside() -> None:
    enc = ConstantNormEncoding(1, low=-2.0, high=2.0)
    out = enc(torch.tensor([[-2.0], [0.0], [2.0]]))
    torch.testing.assert_close(out[:, 0], torch.tensor([1.0, math.cos(math.pi / 4), 0.0]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"\[low, high\]"):
        enc(torch.tensor([[3.0]]))
    assert ConstantNormEncoding(1, check_range=False)(torch.tensor([[3.0]])).shape == (1, 2)
    with pytest.raises(ValueError, match="shape"):
        enc(torch.zeros(4, 2))


def test_mip_init_is_theta0_plus_small_delta() -> None:
    m = mlp()
    ext = externalize(m, modules=["0", "2"])
    h = MIPHypernetwork(2, ext, hidden=(32, 32), delta_scale=0.05, generator=gen())
    names = [n for n, _ in h.named_parameters()]
    assert {"head.theta0.0.weight", "head.theta0.2.bias"} <= set(names)
    for k, v in ext.initial.items():  # theta0 starts at the primary net's own init
        torch.testing.assert_close(h.theta0[k].detach(), v, rtol=0, atol=0)
    gamma = torch.rand(16, 2, generator=gen(1))
    theta = h(gamma)
    for k, v in ext.initial.items():
        assert theta[k].shape == (16, *v.shape)
        rel = (theta[k] - v).pow(2).mean().sqrt() / ext.initial["0.weight"].pow(2).mean().sqrt()
        assert 0 < rel < 0.2, (k, rel)
    assert not torch.allclose(theta["0.weight"][0], theta["0.weight"][1])  # still depends on gamma
    single = h(gamma[0])
    assert single["0.weight"].shape == (7, 5)
    torch.testing.assert_close(single["0.weight"], theta["0.weight"][0])


def test_gradients_reach_theta0_and_head() -> None:
    m = mlp()
    ext = externalize(m)
    h = MIPHypernetwork(1, ext, hidden=(16,), generator=gen())
    gamma = torch.rand(3, 1, generator=gen(1))
    out = ext.batched(h(gamma), torch.randn(3, 4, 5, generator=gen(2)))
    out.pow(2).mean().backward()
    for name, p in h.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_reproducible_with_generator() -> None:
    t = {"w": (4, 3), "b": (4,)}
    a, b = MIPHypernetwork(1, t, generator=gen(5)), MIPHypernetwork(1, t, generator=gen(5))
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=n)


def test_standard_hypernetwork_path() -> None:
    m = mlp()
    ext = externalize(m)
    h = MIPHypernetwork(1, ext, hidden=(16,), mip=False, generator=gen())
    assert h.theta0 is None
    assert not any("theta0" in n for n, _ in h.named_parameters())
    assert isinstance(h.encoding, nn.Identity)
    theta = h(torch.tensor([[0.0], [5.0]]))  # raw inputs, no range restriction
    assert theta["2.bias"].shape == (2, 3)
    # direct outputs are not anchored at the primary init
    assert not torch.allclose(theta["0.weight"][0], ext.initial["0.weight"], atol=1e-3)
    y = ext.batched(theta, torch.randn(2, 4, 5))
    assert y.shape == (2, 4, 3)


def test_mip_rejects_bad_inputs() -> None:
    h = MIPHypernetwork(2, {"w": (3,)}, generator=gen())
    with pytest.raises(ValueError, match=r"shape \[B, 2\]"):
        h(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"\[low, high\]"):
        h(torch.full((1, 2), 1.5))
    with pytest.raises(TypeError, match="target"):
        MIPHypernetwork(1, 3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode"):
        ConstantNormEncoding(1, mode="l3")  # type: ignore[arg-type]


def test_residual_head_shapes_only_init() -> None:
    head = ResidualHead(8, {"a.weight": (3, 4), "a.bias": (3,)}, generator=gen())
    t0 = head.theta0.as_dict()
    assert torch.count_nonzero(t0["a.bias"]) == 0 and t0["a.weight"].std() > 0
    out = head(torch.randn(5, 8, generator=gen(1)))
    assert out["a.weight"].shape == (5, 3, 4) and out["a.bias"].abs().max() > 0


def test_mip_trains_faster_than_standard_on_a_tiny_task() -> None:
    """Smoke version of scripts/bench_mip.py: after a few Adam steps MIP's objective is lower."""
    x = torch.linspace(-1, 1, 64).unsqueeze(-1)

    def final_loss(mip: bool) -> float:
        torch.manual_seed(0)
        primary = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 1))
        ext = externalize(primary)
        h = MIPHypernetwork(1, ext, hidden=(32, 32), mip=mip, generator=gen())
        opt = torch.optim.Adam(h.parameters(), lr=1e-3)
        g = gen(1)
        for _ in range(60):
            gamma = torch.rand(8, 1, generator=g)
            y = torch.sin(math.pi * (1 + gamma.unsqueeze(-1)) * x)  # [8, 64, 1]
            loss = F.mse_loss(ext.batched(h(gamma), x.expand(8, 64, 1)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss.item()

    assert final_loss(True) < final_loss(False)
