"""Weight-space mixup: weights and labels mixed, aligned variant mixes corresponding neurons, collate."""

from __future__ import annotations

import pytest
import torch

import wsl.augment as A
from wsl.align import weight_distance

from .nets import assert_unchanged, build, snapshot


def _labelled(arch: str, seed: int, label: int):
    _, g, _ = build(arch, seed)
    g.y = torch.tensor([label])
    return g


def test_mixes_weights_and_labels() -> None:
    a, b = _labelled("rescnn", 0, 2), _labelled("rescnn", 1, 7)
    sa, sb = snapshot(a), snapshot(b)
    out = A.MixUp(num_classes=10)(a, b, lam=0.3)
    y = torch.zeros(1, 10)
    y[0, 2], y[0, 7] = 0.3, 0.7
    assert torch.allclose(out.y, y)
    param = A.param_index(a.spec).edge_param
    assert torch.allclose(out.edge_attr[param], 0.3 * a.edge_attr[param] + 0.7 * b.edge_attr[param], atol=1e-6)
    assert torch.equal(out.edge_attr[~param], a.edge_attr[~param])  # identity edges
    assert torch.allclose(out.x, 0.3 * a.x + 0.7 * b.x, atol=1e-6)
    assert torch.equal(out.buffers, a.buffers)
    assert_unchanged(a, sa)
    assert_unchanged(b, sb)


def test_lambda_distribution_and_reproducibility() -> None:
    a, b = _labelled("mlp_relu", 0, 0), _labelled("mlp_relu", 1, 1)
    t = A.MixUp(alpha=0.4, num_classes=2)
    lams = [float(t(a, b, torch.Generator().manual_seed(s)).y[0, 0]) for s in range(200)]
    assert len(set(lams)) > 150 and min(lams) >= 0 and max(lams) <= 1
    assert abs(sum(lams) / len(lams) - 0.5) < 0.08
    assert lams[0] == float(t(a, b, torch.Generator().manual_seed(0)).y[0, 0])


def test_float_labels_mixed_directly() -> None:
    a, b = _labelled("mlp_relu", 0, 0), _labelled("mlp_relu", 1, 0)
    a.y, b.y = torch.tensor([0.9]), torch.tensor([0.5])
    assert torch.allclose(A.MixUp()(a, b, lam=0.25).y, torch.tensor([[0.6]]))
    with pytest.raises(ValueError, match="num_classes"):
        A.MixUp()(_labelled("mlp_relu", 0, 0), _labelled("mlp_relu", 1, 1))


@pytest.mark.parametrize("arch", ["mlp_relu", "rescnn", "transformer"])
def test_aligned_mixup_of_a_permuted_copy_is_the_network(arch: str) -> None:
    a = _labelled(arch, 0, 1)
    b = A.RandomPermutation()(a, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(0)
    aligned = A.AlignedMixUp(num_classes=3)(a, b, g)
    assert weight_distance(aligned, a) < 1e-5
    naive = A.MixUp(num_classes=3)(a, b, torch.Generator().manual_seed(0))
    assert weight_distance(naive, a) > 1e-2
    permuted = A.PermutedMixUp(num_classes=3)(a, a, torch.Generator().manual_seed(0))
    assert weight_distance(permuted, a) > 1e-2


def test_different_architectures_rejected() -> None:
    with pytest.raises(ValueError, match="different architectures"):
        A.MixUp(num_classes=10)(_labelled("mlp_relu", 0, 1), _labelled("rescnn", 0, 1))


def test_pairwise_collate() -> None:
    graphs = [_labelled("mlp_relu", i, i % 3) for i in range(6)] + [_labelled("siren", 9, 2)]
    collate = A.PairwiseCollate(A.MixUp(num_classes=3), torch.Generator().manual_seed(0))
    batch = collate(graphs)
    assert batch.num_graphs == 7 and batch.y.shape == (7, 3)
    assert torch.allclose(batch.y.sum(1), torch.ones(7))
    assert torch.equal(batch.y[6], torch.tensor([0.0, 0.0, 1.0]))  # the only siren has no partner
    mixed = (batch.y.max(1).values < 1).sum()
    assert int(mixed) >= 4
    again = A.PairwiseCollate(A.MixUp(num_classes=3), torch.Generator().manual_seed(0))(graphs)
    assert torch.equal(again.edge_attr, batch.edge_attr) and torch.equal(again.y, batch.y)
    pairs = [(g, int(g.y)) for g in graphs]
    b2, labels = A.PairwiseCollate(A.MixUp(num_classes=3), torch.Generator().manual_seed(0))(pairs)
    assert labels.shape == (7, 3) and b2.num_graphs == 7
    assert all(g.y.shape == (1,) for g in graphs)  # inputs untouched
    assert A.is_pairwise(A.MixUp()) and not A.is_pairwise(A.RandomPermutation())
