"""Function-preserving augmentations leave outputs unchanged, change the weights, and never mutate input."""

from __future__ import annotations

import pytest
import torch

import wsl
import wsl.augment as A
from wsl.graph.symmetry import POSITIVE, SIGN
from wsl.testing.checks import inconsistent_graph, max_output_diff

from .nets import ARCHS, assert_unchanged, build, digits_siren, grid, snapshot

PRESERVING = {
    "permutation": A.RandomPermutation(),
    "scaling": A.RandomScaling(log2_range=1.0),
    "sign_flip": A.RandomSignFlip(),
    "symmetry": A.RandomSymmetry(),
    "composed": A.Compose([A.RandomPermutation(), A.RandomScaling(), A.RandomSignFlip()]),
}


def _acts(graph, kind: int) -> bool:
    return bool((graph.spec.symmetry.scale_kind == kind).any())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", list(PRESERVING))
def test_function_preserving(arch: str, name: str) -> None:
    model, graph, inputs = build(arch, seed=3)
    t = PRESERVING[name]
    assert t.function_preserving
    snap = snapshot(graph)
    for seed in range(3):
        new = t(graph, generator=torch.Generator().manual_seed(seed))
        assert new is not graph
        assert max_output_diff(model, wsl.from_graph(new, model), inputs) <= 1e-5
        moved = not torch.equal(new.edge_attr, graph.edge_attr)
        expect = {"scaling": _acts(graph, POSITIVE), "sign_flip": _acts(graph, SIGN)}.get(name, True)
        assert moved == expect
    assert_unchanged(graph, snap)


@pytest.mark.parametrize("arch", ARCHS)
def test_check_is_sensitive(arch: str) -> None:
    """The output comparison above can fail: a wrong permutation changes the outputs."""
    model, graph, inputs = build(arch, seed=3)
    bad = inconsistent_graph(graph, torch.Generator().manual_seed(0))
    assert max_output_diff(model, wsl.from_graph(bad, model), inputs) > 1e-3


def test_scaling_changes_relu_weights_but_not_tanh() -> None:
    _, relu, _ = build("mlp_relu")
    _, tanh, _ = build("mlp_tanh")
    g = torch.Generator().manual_seed(0)
    assert not torch.allclose(A.RandomScaling()(relu, g).edge_attr, relu.edge_attr)
    assert torch.equal(A.RandomScaling()(tanh, g).edge_attr, tanh.edge_attr)
    flipped = A.RandomSignFlip(p=1.0)(tanh, g)  # every odd neuron flipped: hidden rows negated
    assert torch.equal(flipped.x[3:14, 0], -tanh.x[3:14, 0])


@pytest.mark.parametrize("w0", [1.0, 30.0])
def test_siren_bias_shift_exact(w0: float) -> None:
    if w0 == 1.0:
        model, graph, inputs = build("siren", seed=1)
    else:
        model, graph = digits_siren(seed=1, w0=w0)
        inputs = grid(16)
    t = A.SirenBiasShift(w0=w0, max_shift=3)
    snap = snapshot(graph)
    for seed in range(3):
        new = t(graph, generator=torch.Generator().manual_seed(seed))
        assert not torch.equal(new.x, graph.x)
        assert max_output_diff(model, wsl.from_graph(new, model), inputs) <= 1e-5
    assert_unchanged(graph, snap)
    # sensitivity: the same bias shift without the outgoing sign fix changes the function
    new = t(graph, generator=torch.Generator().manual_seed(0))
    half = new.clone_structure()
    half.edge_attr = graph.edge_attr
    assert max_output_diff(model, wsl.from_graph(half, model), inputs) > 1e-3


def test_state_dict_path_matches_graph_path() -> None:
    model, graph, _ = build("rescnn")
    t = A.RandomSymmetry()
    sd = t.apply_state_dict(model.state_dict(), graph.spec, torch.Generator().manual_seed(5))
    ref = t(graph, torch.Generator().manual_seed(5)).to_state_dict()
    assert list(sd) == list(ref)
    assert all(torch.equal(sd[k], ref[k]) for k in sd)


def test_bad_input_errors() -> None:
    with pytest.raises(TypeError, match="ParamGraph"):
        A.RandomPermutation()(torch.zeros(3))
    from torch_geometric.data import Batch

    _, graph, _ = build("mlp_relu")
    with pytest.raises(ValueError, match="single graphs"):
        A.GaussianNoise()(Batch.from_data_list([graph, graph]))
