"""wsl's GHN-2 predicts, from a ppuda checkpoint, what ppuda's GHN-2 predicts.

Golden data: ``tests/fixtures/published_ghn/ghn2_golden.{json,safetensors}``, made by running the reference
(``generate_ghn2_predictions.py``, provenance in the README there) on seeded GHN-2 weights in both released
configurations. The checkpoint is rebuilt here from the same seed (``ghn2_models.seeded_state_dict``), written
as ppuda writes it and read with :func:`~wsl.hyper.published.read_checkpoint`. Tolerance: per tensor,
``max |wsl - reference| <= 1e-5 * max |reference|`` (whole tensors, strided samples, node embeddings) and a
relative 1e-5 on float64 norms and absolute sums.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from wsl.hyper import HypernetError
from wsl.hyper.published import PublishedGHN2, PublishedGraph, read_checkpoint

HERE = Path(__file__).parents[1] / "fixtures" / "published_ghn"
_spec = importlib.util.spec_from_file_location("ghn2_models", HERE / "ghn2_models.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)
GOLDEN = json.loads((HERE / "ghn2_golden.json").read_text())
TENSORS = load_file(str(HERE / "ghn2_golden.safetensors"))
RTOL = 1e-5
SLOW = {"resnet50", "densenet121", "convnext_tiny", "efficientnet_b0", "vit_b_16", "swin_t"}


def _cases(ok: bool) -> list:
    out = []
    for cfg, entry in GOLDEN["configs"].items():
        for name, rec in entry["models"].items():
            if ("reference_error" not in rec) == ok:
                marks = [pytest.mark.slow] if name in SLOW else []
                out.append(pytest.param(cfg, name, marks=marks, id=f"{cfg}-{name}"))
    return out


_GHNS: dict[str, PublishedGHN2] = {}


def ghn(cfg: str, tmp_path_factory: pytest.TempPathFactory) -> PublishedGHN2:
    """The seeded GHN-2 of the fixture, through a ppuda-format file."""
    if cfg not in _GHNS:
        entry = GOLDEN["configs"][cfg]
        sd = fx.seeded_state_dict(entry["state_dict_shapes"], entry["seed"])
        for k, s in entry["state_dict_sums"].items():
            assert float(sd[k].double().sum()) == pytest.approx(s, rel=1e-12, abs=1e-9), k
        path = tmp_path_factory.mktemp("ghn2") / f"ghn2_{cfg}.pt"
        torch.save({"state_dict": sd, "config": entry["config"], "epoch": 0}, path)
        ckpt = read_checkpoint(path)
        assert ckpt.format == "ppuda" and ckpt.is_ghn2
        _GHNS[cfg] = PublishedGHN2.from_checkpoint(ckpt)
    return _GHNS[cfg]


def close(a: torch.Tensor, ref: torch.Tensor, what: str) -> float:
    assert a.shape == ref.shape, (what, a.shape, ref.shape)
    rel = float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
    assert rel <= RTOL, f"{what}: max relative difference {rel:.3g}"
    return rel


def test_state_dict_layout_is_the_references():
    for entry in GOLDEN["configs"].values():
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in entry["config"].items()}
        got = {k: list(v.shape) for k, v in PublishedGHN2(**cfg).state_dict().items()}
        assert got == entry["state_dict_shapes"]


@pytest.mark.parametrize("name", fx.FULL_GRAPHS)
def test_graph_is_the_references(name):
    ref = GOLDEN["configs"]["imagenet"]["models"][name]["graph"]
    g = PublishedGraph.from_module(fx.build(name))
    assert [n.name for n in g.nodes] == ref["names"]
    assert g.ops == ref["ops"]
    assert g.edges.tolist() == ref["edges"]
    got = [[p.index, p.name, p.op, list(p.shape) if p.shape is not None else None, p.last_weight, p.last_bias]
           for p in g.param_nodes]
    assert got == ref["param_nodes"]


def test_graph_without_virtual_edges_keeps_the_real_ones():
    model = fx.build("tiny")
    full, real = PublishedGraph.from_module(model), PublishedGraph.from_module(model, ve_cutoff=1)
    assert torch.equal(real.edges, full.edges[full.edges[:, 2] == 1])
    assert full.edges[:, 2].max() > 1 and real.edges[:, 2].max() == 1


@pytest.mark.parametrize(("cfg", "name"), _cases(ok=True))
def test_predictions_are_the_references(cfg, name, tmp_path_factory):
    rec = GOLDEN["configs"][cfg]["models"][name]
    model = fx.build(name)
    net = ghn(cfg, tmp_path_factory)
    graph = net.graph(model)
    assert (graph.n_nodes, len(graph.edges)) == (rec["graph"]["n_nodes"], rec["graph"]["n_edges"])
    assert fx.graph_digest([n.name for n in graph.nodes], graph.ops, graph.edges) == rec["graph"]["digest"]
    close(net.embeddings(model, graph), TENSORS[f"{cfg}/{name}/:embeddings"], "embeddings")
    pred = net.predict(model, graph=graph)
    assert sorted(pred) == sorted(rec["predicted"])
    assert net.unpredicted(model, pred) == rec["not_predicted"]
    for pname, stats in rec["predicted"].items():
        t = pred[pname]
        assert list(t.shape) == stats["shape"], pname
        flat = t.flatten()
        stored = TENSORS[f"{cfg}/{name}/{pname}"]
        close(flat if flat.numel() <= GOLDEN["full_numel"] else flat[fx.sample_index(flat.numel())], stored, pname)
        for k, v in fx.summary(t).items():
            assert v == pytest.approx(stats[k], rel=RTOL), (pname, k)


@pytest.mark.parametrize(("cfg", "name"), _cases(ok=False))
def test_models_the_reference_fails_on_raise_a_clear_error(cfg, name, tmp_path_factory):
    with pytest.raises(HypernetError, match="reference|GHN-2"):
        ghn(cfg, tmp_path_factory).predict(fx.build(name))


def test_small_transformers_are_refused():
    import torchvision

    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=1,
                                               hidden_dim=8, mlp_dim=8)
    with pytest.raises(HypernetError, match="VisionTransformer"):
        PublishedGraph.from_module(vit)
    swin = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 1],
                                              window_size=[2, 2], num_classes=10)
    swin.expected_input_sz = 16
    with pytest.raises(HypernetError, match="exactly one node fed by the input"):
        PublishedGraph.from_module(swin)


def test_kernels_larger_than_the_slots_are_refused(tmp_path_factory):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 7), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    model.expected_input_sz = 8
    model(torch.zeros(1, 3, 8, 8))
    with pytest.raises(HypernetError, match="larger than its spatial slots"):
        ghn("cifar10", tmp_path_factory).predict(model)


def test_set_parameters_writes_the_predictions(tmp_path_factory):
    model = fx.build("tiny")
    before = model.unused.weight.detach().clone()
    pred = ghn("imagenet", tmp_path_factory).set_parameters(model)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in pred.items())
    assert torch.equal(model.unused.weight, before)  # not predicted, left alone (the reference deletes it)
    assert model.bn1.training and not model.bn1.track_running_stats
    model.eval()
    assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()


def test_predicting_leaves_the_model_unchanged(tmp_path_factory):
    model = fx.build("tiny")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ghn("cifar10", tmp_path_factory).predict(model, predict_class_layers=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_unsupported_configurations_are_refused():
    with pytest.raises(HypernetError, match="released GHN-2"):
        PublishedGHN2(max_shape=(8, 8, 3, 3), num_classes=10, decoder="mlp")
