"""Weight / activation matching recover a permuted copy exactly, keep the function, and bring nets closer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import wsl
from wsl.align import activation_matching, weight_distance, weight_matching
from wsl.testing.checks import max_output_diff

from .nets import THREE, build


@pytest.mark.parametrize("arch", THREE)
def test_recovers_permuted_copy(arch: str) -> None:
    model, a, inputs = build(arch, seed=1)
    for seed in range(3):
        el = a.spec.sample_symmetry(torch.Generator().manual_seed(seed), scale=False)
        b = a.apply_symmetry(el)
        assert weight_distance(a, b) > 0.1
        found, aligned = weight_matching(a, b, generator=torch.Generator().manual_seed(seed))
        assert weight_distance(a, aligned) == 0.0
        assert torch.equal(aligned.edge_attr, a.edge_attr) and torch.equal(aligned.x, a.x)
        assert torch.equal(b.apply_symmetry(found).x, aligned.x)
        assert max_output_diff(model, wsl.from_graph(aligned, model), inputs) <= 1e-5


@pytest.mark.parametrize("arch", THREE)
def test_aligns_independent_networks(arch: str) -> None:
    model, a, inputs = build(arch, seed=1)
    model_c, c, _ = build(arch, seed=7)
    _, aligned = weight_matching(a, c)
    assert weight_distance(a, aligned) < weight_distance(a, c)
    # aligned is a symmetry of c: same function as c
    assert max_output_diff(model_c, wsl.from_graph(aligned, model), inputs) <= 1e-5


class Grouped(nn.Module):
    """Grouped conv between plain convs: channels permute within groups, groups as blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 8, 3, padding=1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.b = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.relu(self.g(F.relu(self.a(x))))).mean((2, 3))


def test_grouped_conv() -> None:
    torch.manual_seed(0)
    model = Grouped()
    x = torch.randn(4, 2, 6, 6)
    a = wsl.to_graph(model, example_inputs=x)
    assert a.spec.symmetry.num_free_classes() > 0
    for seed in range(3):
        b = a.apply_symmetry(a.spec.sample_symmetry(torch.Generator().manual_seed(seed), scale=False))
        _, aligned = weight_matching(a, b)
        assert weight_distance(a, aligned) == 0.0


@pytest.mark.parametrize("arch", THREE)
def test_activation_matching_recovers_permuted_copy(arch: str) -> None:
    model, a, inputs = build(arch, seed=2)
    b = a.apply_symmetry(a.spec.sample_symmetry(torch.Generator().manual_seed(0), scale=False))
    model_b = wsl.from_graph(b, model)
    data = torch.randn(64, *inputs.shape[1:], generator=torch.Generator().manual_seed(1))
    _, aligned = activation_matching(model, model_b, data, graph_a=a, graph_b=b)
    assert weight_distance(a, aligned) == 0.0
    # without graphs: traced on the data; batches of (x, y) pairs work too
    _, aligned2 = activation_matching(model, model_b, [(data[:32], None), (data[32:], None)])
    assert weight_distance(a, aligned2) == 0.0


def test_different_architectures_rejected() -> None:
    _, a, _ = build("mlp_relu")
    _, c, _ = build("rescnn")
    with pytest.raises(ValueError, match="different architectures"):
        weight_matching(a, c)


def test_align_to_reference_recovers_permuted_copies() -> None:
    from wsl.align import align_to_reference

    _, a, _ = build("mlp_relu", seed=1)
    copies = [a.apply_symmetry(a.spec.sample_symmetry(torch.Generator().manual_seed(s), scale=False))
              for s in range(4)]
    out = align_to_reference([a, *copies], reference=0)
    assert len(out) == 5 and out[0] is not a and torch.equal(out[0].edge_attr, a.edge_attr)
    for c, g in zip(copies, out[1:]):
        assert weight_distance(a, c) > 0.1 and weight_distance(a, g) == 0.0
    _, other, _ = build("rescnn", seed=1)
    with pytest.raises(ValueError, match="graph 1"):
        align_to_reference([a, other])
