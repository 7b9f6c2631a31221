"""Structured pruning (DepGraph groups via torch-pruning), the differentiable group-sparsity regularizer, and
pruned networks saved as state_dict + JSON sidecar."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torch_pruning")

import torch_pruning as tp

from tests.prune.nets import GroupedCNN, ResCNN, randomize_norms, res_cnn_params
from wsl.prune import (
    channel_groups,
    count_macs,
    group_norms,
    group_sparsity,
    layer_widths,
    load_pruned,
    output_layers,
    prune,
    save_pruned,
)
from wsl.prune.depgraph import drop_lowest

X = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _model(seed: int = 0, width: int = 16, wide: int = 32) -> ResCNN:
    torch.manual_seed(seed)
    return randomize_norms(ResCNN(width, wide), seed)


@pytest.mark.parametrize("target", [2.0, 3.0])
def test_group_l2_pruning_removes_channels_to_the_target(target):
    model = _model(0, 32, 64)
    x = torch.randn(4, 3, 16, 16)
    pruned, report = prune(model, X, target)
    assert isinstance(pruned, ResCNN) and pruned is not model
    assert layer_widths(model)["c1"]["out"] == 32  # the input model is untouched
    w = layer_widths(pruned)
    # the residual stream (stem, c2, down's input) is one group: all its layers shrink together
    assert w["stem.0"]["out"] == w["c2"]["out"] == w["down.0"]["in"] == w["b2"]["out"] < 32
    assert w["c1"]["out"] < 32 and w["down.0"]["out"] < 64 and w["head"]["out"] == 10
    assert pruned(x).shape == (4, 10) and torch.isfinite(pruned(x)).all()
    params = sum(p.numel() for p in pruned.parameters())
    assert params == report.params_after
    # the parameter count follows from the widths alone
    s, c, d = w["stem.0"]["out"], w["c1"]["out"], w["down.0"]["out"]
    expect = 3 * s * 9 + s * c * 9 + c * s * 9 + s * d * 9 + 2 * (2 * s + c + d) + d * 10 + 10
    assert params == expect < res_cnn_params(32, 64)
    macs, _ = count_macs(pruned, X)
    assert macs == report.macs_after
    assert target <= report.speedup < target * 1.1, report.summary()
    assert report.channels_removed["c1"] == 32 - c


def test_speedup_one_changes_nothing():
    model = _model(1)
    pruned, report = prune(model, X, 1.0)
    assert report.steps == 0 and report.macs_after == report.macs_before and report.layers == {}
    assert layer_widths(pruned) == layer_widths(model)
    sd, sd0 = pruned.state_dict(), model.state_dict()
    assert sd.keys() == sd0.keys() and all(torch.equal(sd[k], sd0[k]) for k in sd)
    with pytest.raises(ValueError, match="speedup must be >= 1"):
        prune(model, X, 0.5)


def test_output_layers_are_found_from_the_trace():
    model = _model()
    assert output_layers(model, X) == [model.head]
    grouped = GroupedCNN()
    assert output_layers(grouped, torch.zeros(1, 3, 8, 8)) == [grouped.fc]


def _tp_norms(model, x, ignored):
    """Group-L2 norms straight from torch-pruning: sum of squares over the coupled layers, square-rooted."""
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    imp = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="sum", normalizer=None)
    out = []
    for g in dg.get_all_groups(ignored_layers=ignored, root_module_types=[torch.nn.Conv2d, torch.nn.Linear]):
        n = dg.get_out_channels(g[0].dep.target.module)
        out.append(imp(g)[:n].sqrt())
    return out


@pytest.mark.parametrize("net", ["res", "grouped"])
def test_regularizer_equals_torch_pruning_group_norms_and_has_gradients(net):
    if net == "res":
        model, x = _model(2), X
    else:
        torch.manual_seed(3)
        model, x = randomize_norms(GroupedCNN(), 3), torch.zeros(1, 3, 8, 8)
    groups = channel_groups(model, x)
    want = _tp_norms(model, x, output_layers(model, x))
    assert len(groups) == len(want) >= 2
    sd = {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in model.state_dict().items()}
    for g, ref in zip(groups, want):
        torch.testing.assert_close(g.norms(sd), ref.to(torch.float32), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g.reference, ref, rtol=1e-6, atol=1e-7)
    reg = group_sparsity(sd, groups, eps=0.0)
    torch.testing.assert_close(reg, sum(r.sum() for r in want), rtol=1e-5, atol=1e-5)
    reported = group_norms(model, x)
    torch.testing.assert_close(sum(r["norms"].sum() for r in reported), reg.detach(), rtol=1e-5, atol=1e-5)
    reg.backward()
    for key in {s.key for g in groups for s in g.slices}:
        assert sd[key].grad is not None and sd[key].grad.abs().sum() > 0, key
    # weighting (DepGraph's polarizing alpha): the weakest channel of a group counts alpha times
    assert float(group_sparsity(sd, groups, alpha=4.0).detach()) > float(reg.detach())


def test_zeroed_channels_compute_what_the_pruned_network_computes():
    """drop_lowest (the meta-pruning loss's view of the pruned network) matches torch-pruning's result."""
    model = _model(4)
    x = torch.randn(5, 3, 16, 16)
    pruned, report = prune(model, X, 2.0)
    groups = channel_groups(model, X)
    counts = [report.layers[g.root]["out"][0] - report.layers[g.root]["out"][1] for g in groups]
    assert all(k > 0 for k in counts)
    sd = drop_lowest(model.state_dict(), groups, counts)
    torch.testing.assert_close(torch.func.functional_call(model, sd, (x,)), pruned(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_pruned_checkpoint_reloads_without_pickled_modules(tmp_path, suffix):
    model = _model(5)
    pruned, report = prune(model, X, 2.0)
    path = tmp_path / f"pruned{suffix}"
    side = save_pruned(pruned, path, report=report, input_shape=X.shape)
    assert side == tmp_path / "pruned.json"
    if suffix == ".pt":  # plain tensors: loadable with weights_only
        assert isinstance(torch.load(path, weights_only=True), dict)
    back = load_pruned(path, ResCNN())
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(back(x), pruned(x))
    assert layer_widths(back) == layer_widths(pruned)
    with pytest.raises(ValueError, match="records no architecture"):
        load_pruned(path)
    (tmp_path / "pruned.json").unlink()
    with pytest.raises(FileNotFoundError, match="sidecar"):
        load_pruned(path, ResCNN())


def test_grouped_convolutions_and_flatten_prune():
    torch.manual_seed(0)
    model = GroupedCNN(depthwise=False).eval()
    x = torch.zeros(1, 3, 8, 8)
    pruned, report = prune(model, x, 2.0)
    assert report.speedup >= 2.0 and pruned.c2.groups == 2 and pruned.fc.in_features == 16 * pruned.c2.out_channels
    assert pruned(torch.randn(2, 3, 8, 8)).shape == (2, 10)
