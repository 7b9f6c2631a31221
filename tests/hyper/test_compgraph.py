"""Computational graphs: op vocabulary, parameter ownership, data-flow order, shortest paths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.nn.archs import BUILDERS
from wsl.hyper.compgraph import OP_TYPES, comp_graph


def _check_graph(g, model: nn.Module) -> None:
    names = {k for k, _ in model.named_parameters()}
    assert set(g.owned) | set(g.unused) == names
    assert not g.unused
    assert all(o in OP_TYPES for o in g.op_names)
    src, dst = g.edge_index
    assert bool((src < dst).all()), "node order must be topological"
    assert g.op_names[0] == "input" and g.op_names[-1] == "output"
    for node in g.owned.values():  # parameters are owned by parametric ops
        assert g.op_names[node] not in ("input", "output", "relu", "sum")


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_small_archs(name: str) -> None:
    build, shape = BUILDERS[name]
    model = build()
    g = comp_graph(model, torch.zeros(shape))
    _check_graph(g, model)


def test_rescnn_ops_and_edges() -> None:
    build, shape = BUILDERS["rescnn"]
    g = comp_graph(build(), torch.zeros(shape))
    assert g.op_names == ["input", "conv", "bn", "relu", "conv", "bn", "sum", "relu", "global_pool", "linear",
                          "output"]
    edges = set(map(tuple, g.edge_index.t().tolist()))
    assert (3, 4) in edges and (3, 6) in edges and (5, 6) in edges  # the residual: relu feeds conv and sum
    assert g.owned["stem.weight"] == 1 and g.owned["bn2.bias"] == 5
    assert g.buffers["bn1.running_mean"] == 2
    assert g.shape[1].tolist() == [4, 2, 3, 3] and g.shape[2].tolist() == [4, 1, 1, 1]
    assert g.shape[3].tolist() == [0, 0, 0, 0]


def test_distances_and_virtual_edges() -> None:
    g = comp_graph(BUILDERS["mlp_relu"][0](), torch.zeros(1, 3))  # a chain of 7 nodes
    d = g.distances()
    assert d[0, 6] == 6 and d[6, 0] == -1 and bool((d.diagonal() == 0).all())
    ei, dist = g.virtual_edges(s_max=3)
    assert bool((dist > 1).all()) and bool((dist <= 3).all())
    assert ei.shape[1] == 5 + 4  # pairs at distance 2 (5 of them) and 3 (4) in a chain of 7
    assert int(dist.max()) == 3


def test_shapes_change_with_architecture() -> None:
    a = comp_graph(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()), torch.zeros(1, 1, 8, 8))
    b = comp_graph(nn.Sequential(nn.Conv2d(1, 4, 5), nn.ReLU()), torch.zeros(1, 1, 8, 8))
    assert a.op_names == b.op_names and not torch.equal(a.shape, b.shape)


def test_unknown_op_and_unused_parameter() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.w = nn.Parameter(torch.zeros(3))
            self.spare = nn.Linear(2, 2)

        def forward(self, x):
            return torch.lerp(self.fc(x), x, self.w)

    g = comp_graph(M(), torch.zeros(1, 3))
    assert g.op_names[g.owned["w"]] == "other"
    assert sorted(g.unused) == ["spare.bias", "spare.weight"]


def test_torchvision_resnet18_on_meta() -> None:
    tv = pytest.importorskip("torchvision")
    with torch.device("meta"):
        m = tv.models.resnet18()
    g = comp_graph(m, torch.zeros(1, 3, 64, 64))
    _check_graph(g, m)
    s = g.summary()["ops"]
    assert s["conv"] == 20 and s["bn"] == 20 and s["sum"] == 8 and s["linear"] == 1 and s["max_pool"] == 1


def test_torchvision_vit_b_16_on_meta() -> None:
    tv = pytest.importorskip("torchvision")
    with torch.device("meta"):
        m = tv.models.vit_b_16()
    g = comp_graph(m, torch.zeros(1, 3, 224, 224))
    _check_graph(g, m)
    s = g.summary()["ops"]
    assert s["attention"] == 12 and s["ln"] == 25 and s["cls_token"] == 1 and s["pos_enc"] == 1
    assert g.op_names[g.owned["encoder.pos_embedding"]] == "pos_enc"
    assert g.op_names[g.owned["class_token"]] == "cls_token"


def test_hf_gpt2_tiny() -> None:
    tr = pytest.importorskip("transformers")
    cfg = tr.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=32, bos_token_id=0,
                        eos_token_id=0)
    m = tr.GPT2LMHeadModel(cfg)
    g = comp_graph(m)
    _check_graph(g, m)  # named_parameters() lists the tied lm_head.weight once, as transformer.wte.weight
    assert g.aliases.get("lm_head.weight") == "transformer.wte.weight"
    assert g.op_names[g.owned["transformer.wte.weight"]] == "embedding"
    assert g.op_names[g.owned["transformer.wpe.weight"]] == "pos_enc"
    assert g.summary()["ops"]["attention"] == 2
    assert g.op_names[g.owned["transformer.h.0.attn.c_attn.weight"]] == "linear"
    assert not g.unused
