"""Perturbing augmentations: randomness, reproducibility, what they touch and what they must leave alone."""

from __future__ import annotations

import pytest
import torch

import wsl.augment as A
from wsl.augment.noise import tensor_std

from .nets import assert_unchanged, build, digits_siren, snapshot

PERTURBING = {
    "gaussian_noise": A.GaussianNoise(sigma=0.1),
    "weight_dropout": A.WeightDropout(p=0.3),
    "neuron_dropout": A.NeuronDropout(p=0.5),
    "magnitude_pruning": A.MagnitudePruning(0.2, 0.6),
    "quantization": A.Quantization(bits=(3, 5)),
}


@pytest.mark.parametrize("arch", ["rescnn", "transformer"])
@pytest.mark.parametrize("name", list(PERTURBING))
def test_untouched_entries(arch: str, name: str) -> None:
    """Identity edges stay 1, running statistics and pass-through buffers stay, the input is not mutated."""
    _, graph, _ = build(arch, seed=2)
    spec = graph.spec
    assert spec.identity_edges, "test needs a network with identity edges"
    snap = snapshot(graph)
    new = PERTURBING[name](graph, generator=torch.Generator().manual_seed(0))
    assert_unchanged(graph, snap)
    assert not torch.equal(new.edge_attr, graph.edge_attr), f"{name} changed nothing"
    for off, cnt in spec.identity_edges:
        assert torch.equal(new.edge_attr[off : off + cnt], graph.edge_attr[off : off + cnt])
        assert bool((new.edge_attr[off : off + cnt] == 1).all())
    assert torch.equal(new.x[:, 1:], graph.x[:, 1:])  # running_mean / running_var
    assert torch.equal(new.buffers, graph.buffers)
    idx = A.param_index(spec)
    no_bias = ~idx.has_bias
    assert torch.equal(new.x[no_bias, 0], graph.x[no_bias, 0])  # nodes without a bias tensor stay 0


def test_gaussian_noise_random_and_reproducible() -> None:
    _, graph = digits_siren()
    t = A.GaussianNoise(sigma=0.05)
    a1 = t(graph, generator=torch.Generator().manual_seed(0))
    a2 = t(graph, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    b1, b2 = t(graph, generator=g), t(graph, generator=g)
    assert torch.equal(a1.edge_attr, a2.edge_attr) and torch.equal(a1.x, a2.x)
    assert torch.equal(a1.edge_attr, b1.edge_attr)
    assert not torch.equal(b1.edge_attr, b2.edge_attr)
    assert not torch.equal(b1.x, b2.x)  # biases are perturbed too


def test_gaussian_noise_is_relative_per_tensor() -> None:
    """The noise on each tensor has std ~ sigma * (that tensor's std): small for deep SIREN layers."""
    _, graph = digits_siren()
    idx = A.param_index(graph.spec)
    sigma = 0.1
    new = A.GaussianNoise(sigma=sigma)(graph, generator=torch.Generator().manual_seed(1))
    eids = torch.nonzero(idx.edge_param).flatten()
    v = torch.cat([graph.edge_attr[eids, 0], graph.x[idx.bias_node, 0]])
    d = torch.cat([new.edge_attr[eids, 0], new.x[idx.bias_node, 0]]) - v
    tid = torch.cat([idx.edge_tid[eids], idx.bias_tid])
    ratio = tensor_std(d, tid, idx.num_tensors) / tensor_std(v, tid, idx.num_tensors)
    big = torch.bincount(tid) >= 30
    assert bool(((ratio[big] > 0.7 * sigma) & (ratio[big] < 1.3 * sigma)).all()), ratio
    w1 = torch.nonzero(idx.edge_tid == 0).flatten()  # first layer (std ~0.3) vs second (std ~0.02)
    w2 = torch.nonzero(idx.edge_tid == 2).flatten()
    assert (new.edge_attr[w1] - graph.edge_attr[w1]).std() > 5 * (new.edge_attr[w2] - graph.edge_attr[w2]).std()


def test_weight_dropout_fraction() -> None:
    _, graph = digits_siren()
    new = A.WeightDropout(p=0.25)(graph, generator=torch.Generator().manual_seed(0))
    zero = (new.edge_attr == 0) & (graph.edge_attr != 0)
    assert 0.18 < float(zero.float().mean()) < 0.32
    kept = ~zero
    assert torch.equal(new.edge_attr[kept], graph.edge_attr[kept])
    scaled = A.WeightDropout(p=0.25, rescale=True)(graph, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(scaled.edge_attr[kept], graph.edge_attr[kept] / 0.75)


def test_neuron_dropout_removes_whole_neurons() -> None:
    _, graph = digits_siren()
    new = A.NeuronDropout(p=0.3)(graph, generator=torch.Generator().manual_seed(0))
    src, dst = graph.edge_index
    dead = [n for n in range(graph.num_nodes) if graph.io[n] == 0 and bool((new.edge_attr[dst == n] == 0).all())]
    assert dead, "no neuron was dropped"
    for n in dead:
        assert bool((new.edge_attr[src == n] == 0).all()) and float(new.x[n, 0]) == 0.0
    alive = [n for n in range(graph.num_nodes) if n not in dead and graph.io[n] == 0]
    for n in alive:
        e = (dst == n) & ~torch.isin(src, torch.tensor(dead))
        assert torch.equal(new.edge_attr[e], graph.edge_attr[e])


def test_magnitude_pruning_keeps_the_largest() -> None:
    _, graph = digits_siren()
    new = A.MagnitudePruning(0.5, 0.5)(graph, generator=torch.Generator().manual_seed(0))
    idx = A.param_index(graph.spec)
    for tid in torch.unique(idx.edge_tid[idx.edge_matrix]).tolist():
        e = idx.edge_tid == tid
        old, got = graph.edge_attr[e, 0], new.edge_attr[e, 0]
        pruned = got == 0
        assert int(pruned.sum()) == old.numel() // 2
        assert float(old[pruned].abs().max()) <= float(old[~pruned].abs().min())
    assert torch.equal(new.x, graph.x)  # biases are not pruned


@pytest.mark.parametrize("bits", [3, 6])
def test_quantization_levels_and_error(bits: int) -> None:
    _, graph = digits_siren()
    new = A.Quantization(bits=bits)(graph, generator=torch.Generator().manual_seed(0))
    idx = A.param_index(graph.spec)
    for tid in range(idx.num_tensors):
        e = idx.edge_tid == tid
        old, got = (graph.edge_attr[e, 0], new.edge_attr[e, 0]) if bool(e.any()) else (
            graph.x[idx.bias_node[idx.bias_tid == tid], 0], new.x[idx.bias_node[idx.bias_tid == tid], 0])
        assert torch.unique(got).numel() <= 2 ** bits - 1
        step = float(old.abs().max()) / (2 ** (bits - 1) - 1)
        assert float((got - old).abs().max()) <= step / 2 + 1e-6


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="sigma"):
        A.GaussianNoise(sigma=-1)
    with pytest.raises(ValueError, match="bits"):
        A.Quantization(bits=1)
    with pytest.raises(ValueError, match="max_fraction"):
        A.MagnitudePruning(0.6, 0.2)
