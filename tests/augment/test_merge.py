"""Merging: averaging, aligned averaging, linear paths, loss barriers, BatchNorm statistics reset."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import wsl
from wsl.align import weight_distance
from wsl.merging import average_graphs, interpolate, loss_barrier, merge, reset_bn
from wsl.testing.checks import max_output_diff

from .nets import THREE, build


@pytest.mark.parametrize("arch", THREE)
def test_aligned_merge_of_permuted_copies_is_the_network(arch: str) -> None:
    model, a, inputs = build(arch, seed=1)
    copies = [a.apply_symmetry(a.spec.sample_symmetry(torch.Generator().manual_seed(s), scale=False))
              for s in range(3)]
    for method in ("aligned", "aligned_iterative"):
        merged = merge([a, *copies], method=method)
        assert weight_distance(merged, a) < 1e-5
    naive = merge([a, *copies], method="average")
    assert weight_distance(naive, a) > 1e-2
    assert max_output_diff(model, wsl.from_graph(naive, model), inputs) > 1e-3


def test_modules_in_module_out_and_weights() -> None:
    m1, g1, _ = build("mlp_relu", 0)
    m2, g2, _ = build("mlp_relu", 1)
    out = merge([m1, m2], weights=[3, 1])
    assert isinstance(out, nn.Module)
    want = average_graphs([g1, g2], [0.75, 0.25]).to_state_dict()
    assert all(torch.allclose(out.state_dict()[k], want[k]) for k in want)
    p = dict(out.named_parameters())["0.weight"]
    assert torch.allclose(p, 0.75 * m1[0].weight + 0.25 * m2[0].weight)
    assert isinstance(merge([m1, m2], method="aligned"), nn.Module)
    with pytest.raises(ValueError, match="method"):
        merge([m1, m2], method="mean")
    _, c, _ = build("rescnn")
    with pytest.raises(ValueError, match="different architecture"):
        merge([g1, c])


def test_identity_edges_stay_one() -> None:
    _, a, _ = build("transformer", 0)
    _, b, _ = build("transformer", 1)
    m = average_graphs([a, b], [0.3, 0.7])
    for off, cnt in a.spec.identity_edges:
        assert bool((m.edge_attr[off : off + cnt] == 1).all())


def test_interpolate_and_barrier() -> None:
    m1, _, x = build("mlp_relu", 0)
    m2, _, _ = build("mlp_relu", 1)
    path = interpolate(m1, m2, [0.0, 0.5, 1.0])
    assert max_output_diff(path[0], m1, x) == 0 and max_output_diff(path[2], m2, x) == 0
    assert torch.allclose(path[1][0].weight, 0.5 * (m1[0].weight + m2[0].weight))
    target = torch.randn(x.shape[0], 2, generator=torch.Generator().manual_seed(0))

    def loss(m: nn.Module) -> float:
        with torch.no_grad():
            return float(((m(x) - target) ** 2).mean())

    same = loss_barrier(m1, m1, loss, alphas=5)
    assert abs(same.barrier) < 1e-6 and len(same.losses) == 5
    res = loss_barrier(m1, m2, loss, alphas=[0.0, 0.25, 0.5, 0.75, 1.0])
    chord = [(1 - t) * res.losses[0] + t * res.losses[-1] for t in res.alphas]
    assert res.barrier == pytest.approx(max(l - c for l, c in zip(res.losses, chord)))
    _, ga, _ = build("mlp_relu", 0)
    with pytest.raises(ValueError, match="model="):
        loss_barrier(ga, ga, loss)


def test_reset_bn_recomputes_statistics() -> None:
    model, _, _ = build("rescnn", 0)
    x = torch.randn(32, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    reset_bn(model, [x[:16], x[16:]])
    with torch.no_grad():
        h = model.stem(x)
    assert torch.allclose(model.bn1.running_mean, h.mean((0, 2, 3)), atol=1e-5)
    assert not model.training
    m2, _, _ = build("rescnn", 1)
    merged = merge([model, m2], bn_data=x)
    with torch.no_grad():
        h = merged.stem(x)
    assert torch.allclose(merged.bn1.running_mean, h.mean((0, 2, 3)), atol=1e-5)


def _finetunes(n: int = 4, seed: int = 0):
    """A base MLP and ``n`` small perturbations of it (fine-tunes of one network), plus one wrecked copy."""
    base, g, x = build("mlp_relu", seed)
    gen = torch.Generator().manual_seed(seed)
    ings = []
    for i in range(n + 1):
        m = wsl.from_graph(g, base)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * (0.05 if i < n else 3.0))
        ings.append(m)
    data = torch.randn(256, x.shape[1], generator=gen)
    with torch.no_grad():
        target = base(data)
    return base, ings, data, target


def test_uniform_soup_is_the_average() -> None:
    _, ings, _, _ = _finetunes(3)
    a, b = merge(ings[:3], "uniform_soup"), merge(ings[:3], "average")
    want = {k: sum(m.state_dict()[k] for m in ings[:3]) / 3 for k in a.state_dict()}
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in want)
    assert all(torch.allclose(a.state_dict()[k], want[k], atol=1e-6) for k in want)


def test_greedy_soup_keeps_helpful_ingredients_and_drops_the_wrecked_one() -> None:
    from wsl.merging import greedy_soup

    _, ings, data, target = _finetunes(4)

    def score(m: nn.Module) -> float:
        with torch.no_grad():
            return -float((m(data) - target).pow(2).mean())

    soup, kept = greedy_soup(ings, score)
    own = [score(m) for m in ings]
    assert kept[0] == max(range(len(ings)), key=lambda i: own[i])  # starts from the best ingredient
    assert 4 not in kept and len(kept) >= 2  # the wrecked copy would hurt the soup
    assert score(soup) >= max(own)
    expected = merge([ings[i] for i in kept], "average")
    assert all(torch.allclose(soup.state_dict()[k], v) for k, v in expected.state_dict().items())
    assert score(merge(ings, "average")) < score(soup)  # the uniform soup of all five is worse
    with pytest.raises(ValueError, match="greedy_soup.*score"):
        merge(ings, "greedy_soup")
    assert torch.equal(merge(ings, "greedy_soup", score=score).state_dict()["0.weight"], soup.state_dict()["0.weight"])


def test_cli_merge_aligned_checkpoints(tmp_path, capsys) -> None:
    from safetensors.torch import load_file, save_file

    from wsl.cli import main

    _, a, _ = build("mlp_relu", seed=1)
    b = a.apply_symmetry(a.spec.sample_symmetry(torch.Generator().manual_seed(0)))
    save_file(a.to_state_dict(), str(tmp_path / "a.safetensors"))
    save_file(b.to_state_dict(), str(tmp_path / "b.safetensors"))
    arch = "module:tests.augment.test_merge:mlp_relu_arch"
    out = tmp_path / "m.safetensors"
    assert main(["merge", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--arch", arch,
                 "--input-shape", "2,3", "-o", str(out)]) == 0
    assert "merged 2 checkpoints (aligned" in capsys.readouterr().out
    merged = load_file(str(out))
    assert all(torch.allclose(merged[k], v, atol=1e-6) for k, v in a.to_state_dict().items())  # b is a's copy
    assert main(["merge", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--arch", arch,
                 "--input-shape", "2,3", "--method", "average", "-o", str(tmp_path / "avg.pt")]) == 0
    avg = torch.load(tmp_path / "avg.pt", weights_only=True)
    assert not torch.allclose(avg["0.weight"], a.to_state_dict()["0.weight"])
    with pytest.raises(SystemExit, match="must end in .safetensors"):
        main(["merge", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--arch", arch,
              "-o", str(tmp_path / "m.txt")])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["merge", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "--arch", arch,
              "-o", str(tmp_path / "nodir" / "m.pt")])
    assert not (tmp_path / "nodir").exists() and not (tmp_path / "m.txt").exists()


def mlp_relu_arch() -> nn.Module:
    from tests.nn.archs import BUILDERS

    return BUILDERS["mlp_relu"][0]()
