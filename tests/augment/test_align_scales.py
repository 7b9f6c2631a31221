"""Alignment modulo the full symmetry group: permutations x positive scales (ReLU) x sign flips (tanh / sin).

A copy of a network transformed by a random group element must be matched back exactly (up to float rounding
of the scale factors), by weight matching and by activation matching; without the scale solve
(``scales=False``) the same copies keep a large residual, so these tests fail if the solve is dropped.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import wsl
from wsl.align import activation_matching, weight_matching
from wsl.align.canonical import canonical_scales, canonicalize
from wsl.testing.checks import max_output_diff, randomize_

from .nets import ARCHS, build


def relu_tanh_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 2))


def relu_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 6, 3), nn.ReLU(), nn.Conv2d(6, 5, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(5, 3))


EXTRA = {"relu_tanh_mlp": (relu_tanh_mlp, (8, 3)), "relu_cnn": (relu_cnn, (4, 2, 7, 7))}


def _build(name: str, seed: int = 1):
    if name in EXTRA:
        make, shape = EXTRA[name]
        torch.manual_seed(seed)
        model = make()
        randomize_(model, torch.Generator().manual_seed(seed), scale=0.5)
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
        return model, wsl.to_graph(model, example_inputs=x), x
    return build(name, seed=seed)


def _residual(g, ref) -> float:
    return max(float((g.edge_attr - ref.edge_attr).abs().max()), float((g.x - ref.x).abs().max()))


NAMES = list(ARCHS) + list(EXTRA)


@pytest.mark.parametrize("name", NAMES)
def test_weight_matching_recovers_any_group_element(name: str) -> None:
    model, a, x = _build(name)
    has_scales = bool(a.spec.scale_sets())
    for seed in range(3):
        el = a.spec.sample_symmetry(torch.Generator().manual_seed(seed))
        b = a.apply_symmetry(el)
        found, aligned = weight_matching(a, b)
        assert _residual(aligned, a) <= 1e-6 * max(1.0, float(a.edge_attr.abs().max())), name
        assert _residual(b.apply_symmetry(found), aligned) == 0.0
        assert max_output_diff(model, wsl.from_graph(aligned, model), x) <= 1e-5
        if has_scales:
            assert found.scale is not None
            assert _residual(weight_matching(a, b, scales=False)[1], a) > 0.05  # permutations alone fail


@pytest.mark.parametrize("name", ["mlp_relu", "mlp_tanh", "siren", "relu_tanh_mlp", "relu_cnn"])
def test_activation_matching_recovers_any_group_element(name: str) -> None:
    model, a, x = _build(name)
    el = a.spec.sample_symmetry(torch.Generator().manual_seed(5))
    b = a.apply_symmetry(el)
    model_b = wsl.from_graph(b, model)
    data = torch.randn(64, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    _, aligned = activation_matching(model, model_b, data, graph_a=a, graph_b=b)
    assert _residual(aligned, a) <= 1e-6 * max(1.0, float(a.edge_attr.abs().max()))
    _, perm_only = activation_matching(model, model_b, data, graph_a=a, graph_b=b, scales=False)
    assert _residual(perm_only, a) > 0.05


@pytest.mark.parametrize("name", ["relu_tanh_mlp", "relu_cnn", "siren"])
def test_canonical_scales_are_equivariant_and_keep_the_function(name: str) -> None:
    model, a, x = _build(name)
    f, ca = canonicalize(a)
    assert f is not None and bool((f != 1).any())
    assert max_output_diff(model, wsl.from_graph(ca, model), x) <= 1e-5
    el = a.spec.sample_symmetry(torch.Generator().manual_seed(3))
    _, cb = canonicalize(a.apply_symmetry(el))
    expected = ca.apply_symmetry(wsl.SymmetryElement(el.perm))  # canon(P S a) = P canon(a)
    assert _residual(cb, expected) <= 1e-6 * max(1.0, float(a.edge_attr.abs().max()))


def test_no_scale_symmetry_means_no_factors() -> None:
    _, a, _ = build("transformer", seed=1)
    assert not a.spec.scale_sets() and canonical_scales(a) is None
