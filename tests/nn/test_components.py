"""Metanetwork plumbing: k-hop neighbourhoods, writing equivariant outputs back into weights, per-layer
normalization statistics, input validation, and that every model can actually learn."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch

import wsl
from wsl.nn import (
    GMN,
    NGGNN,
    GraphContext,
    RelationalTransformer,
    ScaleGMN,
    apply_outputs,
    state_dicts,
)
from wsl.nn.stats import WeightStats
from wsl.testing.checks import assert_roundtrip

from .archs import BUILDERS, make_graph, mixed_graphs


def test_hop_edges_match_dense_adjacency_powers():
    graphs = mixed_graphs(0)
    batch = Batch.from_data_list(graphs)
    ctx = GraphContext.from_batch(batch)
    n = ctx.num_nodes
    adj = torch.zeros(n, n)
    adj[ctx.src, ctx.dst] = 1
    (s, d), length = ctx.hop_edges(3)
    reach, best = adj.clone(), torch.zeros(n, n, dtype=torch.long)
    power = adj.clone()
    for k in (2, 3):
        power = (power @ adj).clamp(max=1)
        new = (power > 0) & (reach == 0)
        best[new] = k
        reach = (reach + power).clamp(max=1)
    want = torch.nonzero(best)
    got = torch.stack([s, d], 1)
    assert got.shape == want.shape and len(got) > 0
    assert torch.equal(torch.sort(got[:, 0] * n + got[:, 1]).values, torch.sort(want[:, 0] * n + want[:, 1]).values)
    order = torch.argsort(s * n + d)
    assert torch.equal(length[order], best[want[:, 0], want[:, 1]])
    assert bool((batch.batch[s] == batch.batch[d]).all())  # never crosses graphs


def test_apply_outputs_roundtrip_and_edit():
    graphs = mixed_graphs(0)
    batch = Batch.from_data_list(graphs)
    zeros_e = torch.zeros(batch.edge_attr.shape[0], 1)
    zeros_n = torch.zeros(batch.num_nodes, 1)
    for g, new in zip(graphs, apply_outputs(batch, zeros_e, zeros_n)):
        assert_roundtrip(new, g.to_state_dict())
    # replacing every parameter with 0.5 (identity edges stay 1, bias-less nodes stay 0)
    edited = apply_outputs(batch, torch.full_like(zeros_e, 0.5), torch.full_like(zeros_n, 0.5), residual=False)
    torch.manual_seed(0)
    model = BUILDERS["mlp_relu"][0]()
    model = wsl.from_graph(edited[0], model)
    for name, p in model.named_parameters():
        assert bool((p == 0.5).all()), name
    sd = edited[3].to_state_dict()  # residual CNN: BatchNorm statistics untouched
    assert torch.equal(sd["bn1.running_var"], graphs[3].to_state_dict()["bn1.running_var"])
    assert bool((sd["bn1.weight"] == 0.5).all())


def test_state_dicts_are_exact_and_differentiable():
    graphs = mixed_graphs(1)
    batch = Batch.from_data_list(graphs)
    ev = batch.edge_attr.clone().requires_grad_()
    sds = state_dicts(batch, ev)
    for g, sd in zip(graphs, sds):
        ref = g.to_state_dict()
        assert list(sd) == list(ref)
        for k in ref:
            assert torch.equal(sd[k].detach().to(ref[k].dtype), ref[k]), k
    torch.manual_seed(1)
    model = BUILDERS["mlp_relu"][0]()
    out = torch.func.functional_call(model, sds[0], (torch.randn(4, 3),))
    out.square().sum().backward()
    n0 = graphs[0].edge_attr.shape[0]
    assert float(ev.grad[:n0].abs().sum()) > 0 and float(ev.grad[n0:].abs().sum()) == 0


def test_weight_stats_standardize_per_tensor():
    graphs = [make_graph("mlp_relu", s) for s in range(6)] + [make_graph("rescnn", 10)]
    stats = WeightStats.fit(graphs)
    assert len(stats.stats) == 2
    g = stats(graphs[0])
    mean, std = g.edge_norm[:, 0], g.edge_norm[:, 1]
    first = g.spec.tensors["0.weight"]
    allw = torch.cat([h.edge_attr[first.offset : first.offset + first.numel, 0] for h in graphs[:6]]).double()
    assert abs(float(mean[first.offset]) - float(allw.mean())) < 1e-6
    assert abs(float(std[first.offset]) - float(allw.std(unbiased=False))) < 1e-6
    # restored from its plain form it gives the same tensors; an unknown architecture is a clear error
    again = WeightStats.from_state_dict(stats.state_dict())(graphs[0])
    assert torch.equal(again.edge_norm, g.edge_norm) and torch.equal(again.node_norm, g.node_norm)
    with pytest.raises(KeyError, match="TinyTransformer"):
        stats(make_graph("transformer", 0))
    # the encoder uses them, and symmetry invariance survives (statistics are per tensor)
    model = GMN(out_dim=2, hidden_dim=8, num_layers=2).eval()
    el = g.spec.sample_symmetry(torch.Generator().manual_seed(0), scale=False)
    with torch.no_grad():
        a, b, raw = model(g), model(g.apply_symmetry(el)), model(graphs[0])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(a, raw)


def test_inputs_are_validated():
    model = GMN(out_dim=2, hidden_dim=8, num_layers=1)
    with pytest.raises(TypeError, match="ParamGraphs"):
        model(torch.randn(3, 3))
    with pytest.raises(ValueError, match="output must be one of"):
        model(make_graph("mlp_relu", 0), output="weights")
    with pytest.raises(ValueError, match="empty list"):
        model([])
    with pytest.raises(ValueError, match="divisible"):
        RelationalTransformer(hidden_dim=10, heads=4)
    g = make_graph("mlp_relu", 0)
    del g.spec
    with pytest.raises(ValueError, match="NetworkSpec"):
        ScaleGMN(hidden_dim=8, num_layers=1)(g)


@pytest.mark.parametrize("cls", [GMN, NGGNN, RelationalTransformer, ScaleGMN])
def test_models_learn_a_weight_space_task(cls):
    """Regress a permutation-invariant function of the weights (mean |w| of the last layer, standardized)
    over a mixed batch of MLPs, CNNs and transformers: the training loss must drop well below its start."""
    names = list(BUILDERS)
    graphs = [make_graph(names[i % len(names)], 100 + i) for i in range(20)]
    last = [g.spec.tensors[[k for k in g.spec.keys if k.endswith("weight")][-1]] for g in graphs]
    y = torch.stack([g.edge_attr[t.offset : t.offset + t.numel].abs().mean() for g, t in zip(graphs, last)])
    y = ((y - y.mean()) / y.std())[:, None]
    batch = Batch.from_data_list(graphs)
    torch.manual_seed(0)
    model = cls(out_dim=1, hidden_dim=16, num_layers=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        opt.zero_grad()
        loss = F.mse_loss(model(batch), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])


def test_io_readout_reads_only_the_input_and_output_neurons_by_position():
    from wsl.nn.readout import IOPool

    torch.manual_seed(0)
    graphs = mixed_graphs(0)
    ctx = GraphContext.from_batch(Batch.from_data_list(graphs))
    pool = IOPool(8, 3, torch.nn.SiLU).eval()
    h = torch.randn(ctx.num_nodes, 8)
    ref = pool(h, ctx)
    assert ref.shape == (len(graphs), 3)
    hidden = (ctx.io == 0).nonzero().squeeze(1)
    moved = h.clone()
    moved[hidden] = torch.randn(hidden.numel(), 8)
    assert torch.equal(pool(moved, ctx), ref)  # hidden neurons are not read
    # two input neurons of graph 0 swapping states is not a symmetry: the readout knows which is which
    first = ((ctx.io == 1) & (ctx.node_batch == 0)).nonzero().squeeze(1)[:2]
    swapped = h.clone()
    swapped[first] = h[first.flip(0)]
    out = pool(swapped, ctx)
    assert float((out[0] - ref[0]).abs().max()) > 1e-4
    assert torch.equal(out[1:], ref[1:])  # graphs do not interact
    with pytest.raises(ValueError, match="readout must be one of"):
        GMN(out_dim=2, readout="neurons")
    with pytest.raises(ValueError, match="readout='nodes\\+edges' is not available"):
        ScaleGMN(out_dim=2, readout="nodes+edges")
