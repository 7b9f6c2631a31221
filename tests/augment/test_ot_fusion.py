"""OT fusion (Singh & Jaggi 2020): permuted copies fuse back exactly, different widths fuse into the target's."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import wsl
from wsl.align import ot_align, weight_distance
from wsl.merging import merge
from wsl.testing.checks import max_output_diff, randomize_

from .nets import build

pytest.importorskip("ot")


def mlp(w1: int = 16, w2: int = 12) -> nn.Module:
    return nn.Sequential(nn.Linear(8, w1), nn.ReLU(), nn.Linear(w1, w2), nn.ReLU(), nn.Linear(w2, 4))


class WideResCNN(nn.Module):
    """A CNN with BatchNorm and one residual block: stream width ``c``, block width ``h``."""

    def __init__(self, c: int = 4, h: int = 6) -> None:
        super().__init__()
        self.stem, self.bn1 = nn.Conv2d(2, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv1, self.bnh = nn.Conv2d(c, h, 3, padding=1), nn.BatchNorm2d(h)
        self.conv2, self.bn2 = nn.Conv2d(h, c, 3, padding=1), nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.stem(x)))
        y = F.relu(self.bnh(self.conv1(x)))
        x = F.relu(x + self.bn2(self.conv2(y)))
        return self.fc(x.mean(dim=(2, 3)))


def _randomized(model: nn.Module, seed: int, x: Tensor) -> nn.Module:
    randomize_(model, torch.Generator().manual_seed(seed), scale=0.5, calibrate=x)
    return model.eval()


def _copies(n: int, total: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """A function-preserving widening of ``n`` neurons to ``total`` (a multiple of ``n``): each new neuron's
    original (every original ``total / n`` times, shuffled) and its random share of the original's outgoing
    weights (shares sum to 1). Even copy counts: with uniform masses each original's copies carry its mass."""
    idx = (torch.arange(total) % n)[torch.randperm(total, generator=gen)]
    r = torch.rand(total, generator=gen) + 0.2
    return idx, r / torch.zeros(n).index_add_(0, idx, r)[idx]


def widen_mlp(m: nn.Module, w1: int, w2: int, gen: torch.Generator) -> nn.Module:
    big = mlp(w1, w2)
    i1, s1 = _copies(m[0].out_features, w1, gen)
    i2, s2 = _copies(m[2].out_features, w2, gen)
    with torch.no_grad():
        big[0].weight.copy_(m[0].weight[i1]), big[0].bias.copy_(m[0].bias[i1])
        big[2].weight.copy_(m[2].weight[i2][:, i1] * s1), big[2].bias.copy_(m[2].bias[i2])
        big[4].weight.copy_(m[4].weight[:, i2] * s2), big[4].bias.copy_(m[4].bias)
    return big


def widen_rescnn(m: WideResCNN, c: int, h: int, gen: torch.Generator) -> WideResCNN:
    big = WideResCNN(c, h).eval()
    ic, sc = _copies(m.bn1.num_features, c, gen)
    ih, sh = _copies(m.bnh.num_features, h, gen)
    with torch.no_grad():
        for name, rows, cols, share in (("stem", ic, None, None), ("conv1", ih, ic, sc), ("conv2", ic, ih, sh)):
            w = getattr(m, name).weight[rows]
            getattr(big, name).weight.copy_(w if cols is None else w[:, cols] * share[None, :, None, None])
            getattr(big, name).bias.copy_(getattr(m, name).bias[rows])
        for name, rows in (("bn1", ic), ("bnh", ih), ("bn2", ic)):
            for k in ("weight", "bias", "running_mean", "running_var"):
                getattr(getattr(big, name), k).copy_(getattr(getattr(m, name), k)[rows])
        big.fc.weight.copy_(m.fc.weight[:, ic] * sc), big.fc.bias.copy_(m.fc.bias)
    return big


@pytest.mark.parametrize("arch", ["mlp_relu", "rescnn"])
@pytest.mark.parametrize("solver", ["emd", "sinkhorn"])
def test_permuted_copy_fuses_back_to_the_network(arch: str, solver: str) -> None:
    model, a, x = build(arch, seed=1)
    for seed, scale in ((0, False), (1, True)):  # permutations, then permutations x positive scales
        b = a.apply_symmetry(a.spec.sample_symmetry(torch.Generator().manual_seed(seed), scale=scale))
        assert weight_distance(b, a) > 0.5
        fused = merge([a, b], method="ot_fusion", solver=solver, reg=1e-3)
        assert weight_distance(fused, a) < 1e-5, (arch, solver, scale)
        assert max_output_diff(model, wsl.from_graph(fused, model), x) < 1e-5
    plans, _ = ot_align(a, b, solver=solver, reg=1e-3)
    for T in plans.values():  # a scaled permutation matrix: every neuron sent whole to one neuron
        assert torch.allclose(T.max(1).values * T.shape[0], torch.ones(T.shape[0], dtype=T.dtype), atol=1e-6)
    naive = merge([a, b], method="average")
    assert weight_distance(naive, a) > 1e-2


def test_importance_masses_and_activation_cost_recover_a_permuted_copy() -> None:
    model, a, x = build("mlp_relu", seed=2)
    b = a.apply_symmetry(a.spec.sample_symmetry(torch.Generator().manual_seed(4), scale=False))
    assert weight_distance(merge([a, b], method="ot_fusion", masses="importance"), a) < 1e-5
    data = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    fused = merge([model, wsl.from_graph(b, model)], method="ot_fusion", cost="activation", data=data)
    assert isinstance(fused, nn.Module)
    assert max_output_diff(model, fused, x) < 1e-5
    with pytest.raises(ValueError, match="activation.*data"):
        merge([model, wsl.from_graph(b, model)], method="ot_fusion", cost="activation")
    with pytest.raises(ValueError, match="solver"):
        merge([a, b], method="ot_fusion", solver="hungarian")
    with pytest.raises(ValueError, match="only to method='ot_fusion'"):
        merge([a, b], method="aligned", solver="sinkhorn")


def test_different_networks_fuse_to_neither_input_nor_the_plain_average() -> None:
    m0, a, x = build("mlp_relu", seed=0)
    _, b, _ = build("mlp_relu", seed=1)
    for solver in ("emd", "sinkhorn"):
        fused = merge([a, b], method="ot_fusion", solver=solver)
        assert weight_distance(fused, merge([a, b], method="average")) > 1e-2
        assert min(weight_distance(fused, a), weight_distance(fused, b)) > 1e-2
        out = wsl.from_graph(fused, m0)(x)
        assert bool(torch.isfinite(out).all())
    ab = merge([a, b], method="ot_fusion", weights=[3, 1])
    ba = merge([a, b], method="ot_fusion", weights=[1, 3])
    assert weight_distance(ab, a) < weight_distance(ba, a)


def test_three_fine_tunes_fuse_close_to_each() -> None:
    base, g, x = build("rescnn", seed=3)
    gen = torch.Generator().manual_seed(0)
    models = [base]
    for s in range(2):  # permuted copies with a small perturbation of every parameter
        m = wsl.from_graph(g.apply_symmetry(g.spec.sample_symmetry(torch.Generator().manual_seed(s))), base)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
        models.append(m.eval())
    fused = merge(models, method="ot_fusion", solver="sinkhorn", reg=1e-3)
    with torch.no_grad():
        outs = [m.eval()(x) for m in models]
        y = fused.eval()(x)
        naive = merge(models, method="average").eval()(x)
    assert bool(torch.isfinite(y).all())
    scale = float(outs[0].abs().max())
    assert max(float((y - o).abs().max()) for o in outs) < 0.25 * scale
    assert float((naive - outs[0]).abs().max()) > float((y - outs[0]).abs().max())


def test_different_widths_fuse_into_the_targets_width() -> None:
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    small, other = _randomized(mlp(16, 12), 0, x), _randomized(mlp(24, 10), 1, x)
    fused = merge([small, other], method="ot_fusion")
    assert {k: v.shape for k, v in fused.state_dict().items()} == {k: v.shape for k, v in small.state_dict().items()}
    assert bool(torch.isfinite(fused(x)).all())
    wide = merge([small, other], method="ot_fusion", target=1)  # fused into the wider one
    assert {k: v.shape for k, v in wide.state_dict().items()} == {k: v.shape for k, v in other.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    widened = widen_mlp(small, 32, 36, gen)
    assert max_output_diff(small, widened, x) < 1e-5
    into_wide = merge([small, widened], method="ot_fusion", target=1, scales=False)  # spread over the copies
    assert into_wide[0].out_features == 32 and max_output_diff(small, into_wide, x) < 1e-5
    # with scales, copies splitting their outgoing weights differently are canonicalized to other scales
    assert max_output_diff(small, merge([small, widened], method="ot_fusion", target=1), x) < 1e-2
    for solver in ("emd", "sinkhorn"):
        for scales in (True, False):
            out = merge([small, widened], method="ot_fusion", solver=solver, reg=1e-3, scales=scales)
            assert max_output_diff(small, out, x) < 1e-5, (solver, scales)
    sym = wsl.to_graph(widened, example_inputs=x)
    perm = wsl.from_graph(sym.apply_symmetry(sym.spec.sample_symmetry(torch.Generator().manual_seed(2))), widened)
    out3 = merge([small, perm, widened], method="ot_fusion")  # three models, two of them wider
    assert max_output_diff(small, out3, x) < 1e-5


def test_different_widths_residual_cnn_with_batchnorm() -> None:
    x = torch.randn(4, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    small = _randomized(WideResCNN(4, 6), 0, x)
    wide = widen_rescnn(small, 8, 18, torch.Generator().manual_seed(1))
    assert max_output_diff(small, wide, x) < 1e-5
    out = merge([small, wide], method="ot_fusion", example_inputs=x)
    assert {k: v.shape for k, v in out.state_dict().items()} == {k: v.shape for k, v in small.state_dict().items()}
    assert max_output_diff(small, out, x) < 1e-4
    torch.manual_seed(1)
    other = _randomized(WideResCNN(6, 5), 1, x)
    y = merge([small, other], method="ot_fusion", example_inputs=x)(x)
    assert bool(torch.isfinite(y).all())


def test_architectures_that_do_not_correspond_are_refused_by_name() -> None:
    x = torch.randn(4, 8)
    a = mlp()
    deeper = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(),
                           nn.Linear(12, 4))
    with pytest.raises(ValueError, match=r"does not correspond.*neuron sets \(input:0, 0, 2, 4\)"):
        merge([a, deeper], method="ot_fusion", example_inputs=x)
    other_in = nn.Sequential(nn.Linear(9, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    with pytest.raises(ValueError, match="set 'input:0' has 8 neurons in the target and 9"):
        merge([wsl.to_graph(a, example_inputs=x), wsl.to_graph(other_in, example_inputs=torch.randn(4, 9))],
              method="ot_fusion")
    _, t, _ = build("transformer", seed=0)
    with pytest.raises(ValueError, match="block-structured.*method='aligned'"):
        merge([t, t], method="ot_fusion")
    renamed = nn.Sequential(OrderedDict(fc1=nn.Linear(8, 16), a1=nn.ReLU(), fc2=nn.Linear(16, 12), a2=nn.ReLU(),
                                        fc3=nn.Linear(12, 4)))
    with pytest.raises(ValueError, match="neuron set 0 is 'input:0' .* and 'input:fc1' .* in model 1"):
        merge([a, renamed], method="ot_fusion", example_inputs=x)


def mlp_arch() -> nn.Module:
    return mlp(16, 12)


def wide_mlp_arch() -> nn.Module:
    return mlp(32, 24)


def test_cli_merge_ot_fusion(tmp_path, capsys) -> None:
    from safetensors.torch import load_file, save_file

    from wsl.cli import main

    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    small = _randomized(mlp(16, 12), 0, x)
    g = wsl.to_graph(small, example_inputs=x)
    b = g.apply_symmetry(g.spec.sample_symmetry(torch.Generator().manual_seed(0)))
    wide = widen_mlp(small, 32, 24, torch.Generator().manual_seed(1))
    save_file(g.to_state_dict(), str(tmp_path / "a.safetensors"))
    save_file(b.to_state_dict(), str(tmp_path / "b.safetensors"))
    save_file({k: v.contiguous() for k, v in wide.state_dict().items()}, str(tmp_path / "w.safetensors"))
    arch, warch = "module:tests.augment.test_ot_fusion:mlp_arch", "module:tests.augment.test_ot_fusion:wide_mlp_arch"
    out = tmp_path / "m.safetensors"
    assert main(["merge", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--arch", arch,
                 "--input-shape", "2,8", "--method", "ot_fusion", "--solver", "sinkhorn", "--reg", "0.001",
                 "-o", str(out)]) == 0
    assert "merged 2 checkpoints (ot_fusion" in capsys.readouterr().out
    merged = load_file(str(out))
    assert all(torch.allclose(merged[k], v, atol=1e-5) for k, v in g.to_state_dict().items())  # b is a's copy
    out2 = tmp_path / "w.pt"
    assert main(["merge", str(tmp_path / "w.safetensors"), str(tmp_path / "a.safetensors"), "--arch", warch,
                 "--arch", arch, "--input-shape", "2,8", "--method", "ot_fusion", "--target", "1",
                 "-o", str(out2)]) == 0
    assert "in the target, checkpoint 1" in capsys.readouterr().out
    fused = mlp(16, 12)
    fused.load_state_dict(torch.load(out2, weights_only=True))
    assert max_output_diff(small, fused, x) < 1e-5
    with pytest.raises(SystemExit, match="only with --method ot_fusion"):
        main(["merge", str(tmp_path / "w.safetensors"), str(tmp_path / "a.safetensors"), "--arch", warch,
              "--arch", arch, "--input-shape", "2,8", "-o", str(out2)])
