"""Meta pruning: the residual rewrite, the loss through functional_call, a short meta-training, the comparison."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

pytest.importorskip("torch_pruning")
pytest.importorskip("sklearn")

import wsl
from tests.prune.nets import digits, randomize_norms, trained_digit_cnns
from wsl.data.generate.cnn_arch import digits_cnn
from wsl.nn.stats import WeightStats
from wsl.prune import MetaPruner, NetworkIndex, compare, meta_train, pruning_loss, summarize, tensor_statistics

X8 = torch.zeros(1, 1, 8, 8)
ARCHS = [dict(depth=2, width=6, residual=True, norm="batchnorm"), dict(depth=2, width=6),
         dict(depth=3, width=4, residual=True, activation="tanh")]


def _graphs(models):
    index = NetworkIndex()
    graphs = []
    for m in models:
        spec = wsl.trace(m, X8)
        index.add(spec, m, X8)
        graphs.append(wsl.to_graph(m, spec=spec))
    return graphs, index


def test_self_statistics_equal_weight_stats_fitted_on_the_network_itself():
    torch.manual_seed(0)
    models = [randomize_norms(digits_cnn(**kw)) for kw in ARCHS]
    graphs = [wsl.to_graph(m, example_inputs=X8) for m in models]
    edge_norm, node_norm, edge_rms, _ = tensor_statistics(Batch.from_data_list(graphs))
    own = [WeightStats.fit([g])(g) for g in graphs]
    torch.testing.assert_close(edge_norm, torch.cat([g.edge_norm for g in own]))
    torch.testing.assert_close(node_norm, torch.cat([g.node_norm for g in own]))
    w = models[0].features[0].conv.weight
    torch.testing.assert_close(edge_rms[0], w.pow(2).mean().sqrt().detach())


def test_zero_output_rewrite_leaves_every_network_unchanged_and_a_nonzero_one_does_not():
    torch.manual_seed(1)
    models = [randomize_norms(digits_cnn(**kw), i) for i, kw in enumerate(ARCHS)]
    graphs, _ = _graphs(models)
    batch = Batch.from_data_list(graphs)
    pruner = MetaPruner.build("GMN", hidden_dim=8, num_layers=1)  # output heads start at zero
    x = torch.randn(6, 1, 8, 8)
    for m, sd in zip(models, pruner.state_dicts(batch)):
        torch.testing.assert_close(torch.func.functional_call(m, sd, (x,)), m(x), rtol=0, atol=0)
    torch.testing.assert_close(pruner.rewrite(models[0], X8)(x), models[0](x), rtol=0, atol=0)
    with torch.no_grad():
        pruner.metanet.edge_head.bias.fill_(0.1)
    moved = [torch.func.functional_call(m, sd, (x,)) for m, sd in zip(models, pruner.state_dicts(batch))]
    assert all((a - m(x)).abs().max() > 1e-3 for a, m in zip(moved, models))


def test_rewrite_is_differentiable_into_the_metanetwork():
    torch.manual_seed(2)
    models = [randomize_norms(digits_cnn(**kw), i) for i, kw in enumerate(ARCHS)]
    graphs, index = _graphs(models)
    pruner = MetaPruner.build("GMN", hidden_dim=8, num_layers=1)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(10, (16,))
    terms = pruning_loss(pruner, Batch.from_data_list(graphs), index, x, y, lam=0.5, pruned_weight=1.0,
                         baseline=True)
    assert terms["loss"].shape == (3,)
    torch.testing.assert_close(terms["task"], terms["base_task"])  # zero rewrite: the networks themselves
    torch.testing.assert_close(terms["pruned"], terms["base_pruned"])
    torch.testing.assert_close(terms["reg"], torch.ones(3))  # relative to the unrewritten networks
    terms["loss"].mean().backward()
    grads = [p.grad for p in pruner.metanet.edge_head.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.fixture(scope="module")
def zoo():
    models = trained_digit_cnns([ARCHS[i % 3] for i in range(5)], epochs=2)
    graphs, index = _graphs(models)
    return models, graphs, index


def _fixed_loss(pruner, graphs, index, data, **kw):
    pruner.eval()
    with torch.no_grad():
        return float(pruning_loss(pruner, Batch.from_data_list(graphs), index, *data, **kw)["loss"].mean())


def test_short_meta_training_lowers_task_plus_regularizer(zoo):
    _, graphs, index = zoo
    x, y, _, _ = digits()
    fixed = (x[:256], y[:256])
    kw = {"lam": 0.5, "pruned_weight": 1.0}
    torch.manual_seed(0)
    pruner = MetaPruner.build("GMN", hidden_dim=16, num_layers=2)
    before = _fixed_loss(pruner, graphs[:3], index, fixed, **kw)
    history = meta_train(pruner, graphs[:3], index, (x, y), steps=40, lr=3e-3, batch_size=3, data_batch=128,
                         generator=torch.Generator().manual_seed(0), **kw)
    after = _fixed_loss(pruner, graphs[:3], index, fixed, **kw)
    assert len(history) == 40 and set(history[0]) >= {"loss", "task", "pruned", "reg"}
    assert after < before - 0.1, (before, after)


def test_compare_runs_both_arms_with_the_same_budget(zoo, tmp_path):
    models, _, _ = zoo
    x, y, xt, yt = digits()
    pruner = MetaPruner.build("GMN", hidden_dim=8, num_layers=1)  # identity rewrite: both arms must agree
    rows = compare(pruner, models[3:], X8, (x, y), (xt, yt), speedup=2.0, finetune_steps=3)
    assert len(rows) == 2
    for r in rows:
        assert r["plain"] == r["learned"] and r["plain_pruned"] == r["learned_pruned"]
        assert r["plain_speedup"] >= 2.0 and 0 <= r["original"] <= 1
    s = summarize(rows)
    assert s["win_fraction"] == 0.0 and s["tie_fraction"] == 1.0 and s["networks"] == 2
    path = pruner.save(tmp_path / "p.safetensors")
    back = MetaPruner.load(path)
    assert back.config == pruner.config and back.delta_scale == pruner.delta_scale
    with pytest.raises(ValueError, match="metanetworks come from wsl.nn"):
        MetaPruner.build("os.system")
