"""wsl's GHN-3 predicts, from a ghn3 release file, what ghn3's GHN3 predicts.

Golden data: ``tests/fixtures/published_ghn/ghn3_golden.{json,safetensors}``, made by running the reference
(``generate_ghn3_predictions.py``, provenance in the README there) on seeded weights in three configurations
(a ghn3tm8-shaped GHN-3, a small GHN-3 saved with its embeddings at the top level, and GHN-2 weights run by
ghn3's class). Each checkpoint is rebuilt here from the same seed (``ghn3_models.seeded_state_dict``), written
with ``joblib.dump`` as the releases are and read with :func:`~wsl.hyper.published.read_checkpoint`, which
infers the configuration from the keys. Tolerance: per tensor ``max |wsl - reference| <= 1e-5 * max
|reference|`` (whole tensors, strided samples, node embeddings) and a relative 1e-5 on float64 norms and
absolute sums; measured: bit-identical.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import joblib
import pytest
import torch
from safetensors.torch import load_file

from wsl.hyper import HypernetError, predict_parameters
from wsl.hyper.published import (
    PublishedGHN3,
    ghn3_graph,
    read_checkpoint,
    write_converted,
)

HERE = Path(__file__).parents[1] / "fixtures" / "published_ghn"
_spec = importlib.util.spec_from_file_location("ghn3_models", HERE / "ghn3_models.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)
GOLDEN = json.loads((HERE / "ghn3_golden.json").read_text())
TENSORS = load_file(str(HERE / "ghn3_golden.safetensors"))
RTOL = 1e-5
SLOW = {"resnet50", "densenet121", "convnext_tiny", "efficientnet_b0", "vit_b_16", "swin_t"}  # 1.5-6 s each


def _cases(ok: bool) -> list:
    out = []
    for cfg, entry in GOLDEN["configs"].items():
        for name, rec in entry["models"].items():
            if ("reference_error" not in rec) == ok:
                marks = [pytest.mark.slow] if name in SLOW else []
                out.append(pytest.param(cfg, name, marks=marks, id=f"{cfg}-{name}"))
    return out


def _tuples(cfg: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


_FILES: dict[str, Path] = {}
_GHNS: dict[str, PublishedGHN3] = {}


def release_file(cfg: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded checkpoint of the fixture, written as the ghn3 releases are (a joblib-pickled state dict)."""
    if cfg not in _FILES:
        entry = GOLDEN["configs"][cfg]
        sd = fx.seeded_state_dict(entry["file_state_dict_shapes"], entry["seed"])
        for k, s in entry["file_state_dict_sums"].items():
            assert float(sd[k].double().sum()) == pytest.approx(s, rel=1e-12, abs=1e-9), k
        _FILES[cfg] = tmp_path_factory.mktemp("ghn3") / f"ghn3_{cfg}.pt"
        joblib.dump(sd, _FILES[cfg])
    return _FILES[cfg]


def ghn(cfg: str, tmp_path_factory: pytest.TempPathFactory) -> PublishedGHN3:
    if cfg not in _GHNS:
        ckpt = read_checkpoint(release_file(cfg, tmp_path_factory))
        assert ckpt.format == "ghn3-joblib" and ckpt.config_source == "inferred"
        _GHNS[cfg] = PublishedGHN3.from_checkpoint(ckpt)
    return _GHNS[cfg]


def build(name: str) -> torch.nn.Module:
    if name.startswith(("timm_", "hf_")):
        pytest.importorskip("timm" if name.startswith("timm_") else "transformers")
    return fx.build(name)


def close(a: torch.Tensor, ref: torch.Tensor, what: str) -> float:
    assert a.shape == ref.shape, (what, a.shape, ref.shape)
    rel = float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
    assert rel <= RTOL, f"{what}: max relative difference {rel:.3g}"
    return rel


@pytest.mark.parametrize("cfg", list(GOLDEN["configs"]))
def test_config_inferred_from_the_release_file_builds_the_references_ghn(cfg, tmp_path_factory):
    entry = GOLDEN["configs"][cfg]
    ckpt = read_checkpoint(release_file(cfg, tmp_path_factory))
    assert ckpt.config == _tuples(entry["inferred_config"])
    assert ckpt.is_ghn2 == (cfg == "ghn2")
    built = PublishedGHN3(**ckpt.config)
    assert {k: list(v.shape) for k, v in built.state_dict().items()} == entry["ghn_state_dict_shapes"]
    loaded = ghn(cfg, tmp_path_factory).state_dict()  # strict: every file tensor has a place
    assert sorted(loaded) == sorted(entry["ghn_state_dict_shapes"])


@pytest.mark.parametrize("name", fx.FULL_GRAPHS)
def test_graph_is_the_references(name):
    ref = GOLDEN["configs"]["tm8"]["models"][name]["graph"]
    g = ghn3_graph(fx.build(name))
    assert [n.name for n in g.nodes] == ref["names"]
    assert g.ops == ref["ops"]
    assert g.edges.tolist() == ref["edges"]
    got = [[p.index, p.name, p.op, list(p.shape) if p.shape is not None else None, p.last_weight, p.last_bias]
           for p in g.param_nodes]
    assert got == ref["param_nodes"]


@pytest.mark.parametrize(("cfg", "name"), _cases(ok=True))
def test_predictions_are_the_references(cfg, name, tmp_path_factory):
    rec = GOLDEN["configs"][cfg]["models"][name]
    model = build(name)
    net = ghn(cfg, tmp_path_factory)
    graph = net.graph(model)
    assert (graph.n_nodes, len(graph.edges)) == (rec["graph"]["n_nodes"], rec["graph"]["n_edges"])
    assert fx.graph_digest([n.name for n in graph.nodes], graph.ops, graph.edges) == rec["graph"]["digest"]
    emb = net.embeddings(model, graph)
    close(fx.stored(emb), TENSORS[f"{cfg}/{name}/:embeddings"], "embeddings")
    for k, v in fx.summary(emb).items():
        assert v == pytest.approx(rec["embeddings"][k], rel=RTOL), ("embeddings", k)
    pred = net.predict(model, graph=graph, generator=torch.Generator().manual_seed(GOLDEN["class_token_seed"]))
    assert sorted(pred) == sorted(rec["predicted"])
    assert net.unpredicted(model, pred) == rec["not_predicted"]
    for pname, stats in rec["predicted"].items():
        t = pred[pname]
        assert list(t.shape) == stats["shape"], pname
        close(fx.stored(t), TENSORS[f"{cfg}/{name}/{pname}"], pname)
        for k, v in fx.summary(t).items():
            assert v == pytest.approx(stats[k], rel=RTOL), (pname, k)


@pytest.mark.parametrize(("cfg", "name"), _cases(ok=False))
def test_models_the_reference_fails_on_raise_a_clear_error(cfg, name, tmp_path_factory):
    assert "KeyError" in GOLDEN["configs"][cfg]["models"][name]["reference_error"]
    with pytest.raises(HypernetError, match="exact type"):
        ghn(cfg, tmp_path_factory).predict(build(name))


def test_converted_directory_predicts_identically(tmp_path_factory, tmp_path):
    path = release_file("small", tmp_path_factory)
    conv = write_converted(read_checkpoint(path), tmp_path / "ghn3_small")
    ckpt = read_checkpoint(conv)
    assert ckpt.format == "converted:ghn3-joblib" and not ckpt.is_ghn2
    assert ckpt.config == read_checkpoint(path).config
    model = fx.build("tiny_vit")
    a = ghn("small", tmp_path_factory).predict(model, generator=torch.Generator().manual_seed(0))
    b = PublishedGHN3.from_checkpoint(conv).predict(model, generator=torch.Generator().manual_seed(0))
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_training_checkpoint_with_stored_config(tmp_path_factory, tmp_path):
    """ghn3's Trainer.save: torch.save({state_dict, config, args, epoch, step}); the config is used as stored."""
    entry = GOLDEN["configs"]["small"]
    sd = fx.seeded_state_dict(entry["file_state_dict_shapes"], entry["seed"])
    config = {**entry["args"], "hypernet": "gatedgnn", "decoder": "conv"}
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": sd, "config": config, "args": argparse.Namespace(lr=4e-4), "epoch": 1, "step": 2},
               path)
    ckpt = read_checkpoint(path)
    assert ckpt.format == "ghn3-torch" and ckpt.config_source == "file"
    model = fx.build("tiny")
    a = ghn("small", tmp_path_factory).predict(model)
    b = PublishedGHN3.from_checkpoint(ckpt).predict(model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_class_token_is_the_only_random_part(tmp_path_factory):
    net, model = ghn("tm8", tmp_path_factory), fx.build("tiny_vit")
    a = net.predict(model, generator=torch.Generator().manual_seed(1))
    b = net.predict(model, generator=torch.Generator().manual_seed(2))
    pos = "encoder.pos_embedding"
    assert all(torch.equal(a[k], b[k]) for k in a if k != pos)
    assert torch.equal(a[pos][:, 1:], b[pos][:, 1:]) and not torch.equal(a[pos][:, 0], b[pos][:, 0])
    assert a[pos].shape == (1, 17, 16) and float(a[pos][0, 0].abs().max()) < 0.2  # N(0, 0.02^2)


def test_set_parameters_writes_the_predictions(tmp_path_factory):
    model = fx.build("tiny")
    before = model.unused.weight.detach().clone()
    pred = ghn("tm8", tmp_path_factory).set_parameters(model)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in pred.items())
    assert torch.equal(model.unused.weight, before)  # not predicted, left alone
    assert model.bn1.track_running_stats  # the reference's default: BatchNorm untouched
    ghn("tm8", tmp_path_factory).set_parameters(model, bn_track_running_stats=False)
    assert model.bn1.training and not model.bn1.track_running_stats
    model.eval()
    assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()


def test_predicting_leaves_the_model_unchanged(tmp_path_factory):
    model = fx.build("tiny")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pred = ghn("small", tmp_path_factory).predict(model, predict_class_layers=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert "fc.weight" not in pred and "fc.bias" not in pred and "fc1.weight" in pred


def test_predict_parameters_with_a_release_file(tmp_path_factory):
    path = release_file("small", tmp_path_factory)
    model = fx.build("tiny")
    out, report = predict_parameters(model, path, example_inputs=torch.zeros(1, 3, 32, 32), check=False)
    expected = ghn("small", tmp_path_factory).predict(fx.build("tiny"))
    got = dict(out.named_parameters())
    assert all(torch.equal(got[k], w) for k, w in expected.items())
    assert sorted(report.predicted) == sorted(expected) and sorted(report.not_predicted) == ["unused.bias",
                                                                                            "unused.weight"]


def test_unsupported_configurations_are_refused():
    with pytest.raises(HypernetError, match="max_shape"):
        PublishedGHN3(max_shape=(8, 8, 3), num_classes=10, hid=32)
    with pytest.raises(HypernetError, match="gated-GNN"):
        PublishedGHN3(max_shape=(8, 8, 3, 3), num_classes=10, hid=32, is_ghn2=True, hypernet="mlp")
