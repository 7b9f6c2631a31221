"""Loaders of the published CNN zoos stored as checkpoint folders (Model Zoos, CNN Wild Park), the inert
unpickler, and the symmetry check of every loader's models (fixtures in exactly the published formats)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.data import fixtures
from wsl.data.formats import ZooFormatError, small_cnn_zoo
from wsl.graph.convert import from_graph
from wsl.io import CheckpointError


# ---------------------------------------------------------------- Model Zoos
@pytest.mark.parametrize(("kind", "dropout", "positions"), [
    ("CNN", 0.0, [0, 3, 6, 9, 11]),       # layer_lst of the small zoos in ModelZoos' dataset_base.py
    ("CNN3", 0.1, [0, 4, 8, 13, 16]),     # ... and of the large zoos
    ("CNN", 0.2, [0, 4, 8, 11, 14]),
])
def test_model_zoos_module_list_positions(kind, dropout, positions):
    from wsl.data.formats.model_zoos import build_model

    m = build_model({"model::type": kind, "model::channels_in": 3, "model::nlin": "relu", "model::dropout": dropout})
    assert sorted({int(k.split(".")[1]) for k in m.state_dict()}) == positions
    size = 32 if kind == "CNN3" else 28
    assert m(torch.zeros(2, 3, size, size)).shape == (2, 10)


def test_model_zoos_trials_epochs_metrics_splits(tmp_path):
    from wsl.data.formats import model_zoos

    info = fixtures.write_model_zoo(tmp_path, trials=6, epochs=(0, 1, 2))
    recs = model_zoos.load(tmp_path)
    assert len(recs) == 6 and recs.metadata["epoch"] == [2] * 6
    assert torch.allclose(recs.labels, torch.tensor([0.1 * t + 0.02 for t in range(6)]))
    assert recs.metadata["config.model::nlin"] == ["tanh"] * 6 and len(recs.archs) == 1
    for i in range(6):
        assert torch.equal(recs.state_dict(i)["module_list.3.weight"], info["states"][(i, 2)]["module_list.3.weight"])
        fixtures.assert_round_trip(recs, i)
    every = model_zoos.load(tmp_path, epochs="all", label="train_acc")
    assert len(every) == 18
    where = {}
    for s, idx in every.splits.items():
        for i in idx.tolist():
            where.setdefault(every.metadata["trial"][i], set()).add(s)
    assert all(len(v) == 1 for v in where.values()) and len(where) == 6
    assert all(len(v) > 0 for v in every.splits.values())  # 6 trials at 70/15/15: no split left empty
    assert model_zoos.load(tmp_path, epochs=[0, 1]).metadata["epoch"].count(1) == 6
    # the ZooDataset path (fixed-size flatten: traced on the zoo's 28x28 input, not a 224x224 guess)
    from wsl.data.dataset import ZooDataset

    ds = ZooDataset(recs, split="all")
    assert torch.equal(ds[0].edge_attr[:, 0], recs.graph(0).edge_attr[:, 0])


def test_model_zoos_mixed_architectures_and_errors(tmp_path):
    from wsl.data.formats import model_zoos

    fixtures.write_model_zoo(tmp_path / "a", "CNN3", trials=2, nlin="relu", dropout=0.1, channels_in=3, pad=False)
    recs = model_zoos.load(tmp_path / "a")
    assert recs.metadata["epoch"] == [2, 2]
    fixtures.assert_round_trip(recs, 1)
    fixtures.write_model_zoo(tmp_path / "b", "MLP", trials=1)
    fixtures.assert_round_trip(model_zoos.load(tmp_path / "b"), 0)
    t = next((tmp_path / "b").iterdir())
    (t / "params.json").write_text('{"model::type": "Resnet18"}')
    with pytest.raises(ZooFormatError, match="params.json: model::type 'Resnet18' is not supported"):
        model_zoos.load(tmp_path / "b")
    (t / "params.json").write_text("{not json")
    with pytest.raises(ZooFormatError, match="params.json: not valid JSON"):
        model_zoos.load(tmp_path / "b")
    with pytest.raises(ZooFormatError, match="no trial folders"):
        model_zoos.load(tmp_path)


# ---------------------------------------------------------------- CNN Wild Park
def _wild_park_reference(sd: dict, cfg: dict, x: torch.Tensor) -> torch.Tensor:
    """neural-graphs' forward, verbatim in spirit: in-place residual add on a clone."""
    import torch.nn.functional as F

    fns = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}
    saved = {}
    for i in range(cfg["n_layers"]):
        x = F.conv2d(x, sd[f"layers.{i}.weight"], sd[f"layers.{i}.bias"], padding=cfg["padding"][i])
        r = cfg["residual"][i]
        if r > -1:
            ch = min(cfg["channels"][r + 1], cfg["channels"][i + 1])
            x = x.clone()
            x[:, :ch] += saved[r][:, :ch]
        x = fns[cfg["activation"][i]](x)
        if i in cfg["residual"]:
            saved[i] = x
    return F.linear(x.mean(dim=(2, 3)), sd["fc.weight"], sd["fc.bias"])


def test_cnn_wild_park(tmp_path):
    from wsl.data.formats import cnn_wild_park

    info = fixtures.write_cnn_wild_park(tmp_path, trials=4, ckpts=2)
    recs = cnn_wild_park.load(tmp_path)
    assert len(recs) == 8 and len(recs.archs) == 2
    assert recs.metadata["step"] == [1, 2] * 4
    assert torch.allclose(recs.labels, torch.tensor([0.3 + 0.01 * t + 0.001 * k for t in range(4) for k in range(2)]))
    assert recs.metadata["activation"][2] == "tanh,relu,sigmoid"
    x = torch.randn(2, 3, 9, 9)
    for i in range(len(recs)):
        t, k = divmod(i, 2)
        sd = recs.state_dict(i)
        assert torch.equal(sd["layers.1.weight"], info["states"][(t, k)]["layers.1.weight"])
        fixtures.assert_round_trip(recs, i)
        cfg = json.loads(json.dumps(fixtures.WILD_PARK_SPECS[t % 2]))
        with torch.no_grad():
            assert torch.allclose(recs.model(i)(x), _wild_park_reference(sd, cfg, x), atol=1e-5)
    where = {}
    for s, idx in recs.splits.items():
        for i in idx.tolist():
            where.setdefault(recs.metadata["trial"][i], set()).add(s)
    assert all(len(v) == 1 for v in where.values())
    # an official splits file: paths relative to the file, scores from it
    files = [recs.metadata["path"][i] for i in range(8)]
    (tmp_path / "cnn_park_splits.json").write_text(json.dumps({
        "train": {"path": files[:4], "score": [0.5] * 4, "step": [1] * 4},
        "val": {"path": files[4:6], "score": [0.6] * 2, "step": [1] * 2},
        "test": {"path": files[6:], "score": [0.7] * 2, "step": [1] * 2}}))
    from torch_geometric.loader import DataLoader

    batch = next(iter(DataLoader(recs.split("train"), batch_size=8)))  # mixed architectures in one batch
    assert batch.num_graphs == len(recs.splits["train"]) and batch.y.shape == (batch.num_graphs,)
    off = cnn_wild_park.load(tmp_path, "cnn_park_splits.json")
    assert off.splits["val"].tolist() == [4, 5] and off.labels.tolist()[5:7] == pytest.approx([0.6, 0.7])


def test_zoo_dataset_of_records_keeps_official_splits_and_mixed_architectures(tmp_path):
    from wsl.data.dataset import ZooDataset
    from wsl.data.formats import cnn_wild_park

    info = fixtures.write_cnn_wild_park(tmp_path, trials=7, ckpts=1,
                                        splits={"train": [0, 1, 2], "val": [3, 4], "test": [5, 6]})
    recs = cnn_wild_park.load(tmp_path, "cnn_park_splits.json")
    assert recs.num_architectures == 2
    test = ZooDataset(recs, "test")  # the splits file's test trials, not a seeded re-split
    assert test.mixed and len(test) == 2
    for i, trial in enumerate((5, 6)):
        back = test.graph(i).to_state_dict()
        for k, v in info["states"][(trial, 0)].items():
            assert torch.equal(back[k], v), (trial, k)
    val = test.select("val")
    assert len(val) == 2 and val.edge_attr is test.edge_attr and len(test) == 2  # a view: nothing re-converted
    assert ZooDataset(recs, "train", splits={"train": [6], "test": [0]}).splits["val"].numel() == 0
    with pytest.raises(IndexError, match="names model 99"):
        ZooDataset(recs, "train", splits={"train": torch.tensor([99])})
    with pytest.raises(ValueError, match="unknown split names"):
        ZooDataset(recs, "train", splits={"training": [0]})
    with pytest.raises(IndexError, match="architecture index 7"):
        recs.architecture(7)


def test_cnn_wild_park_never_runs_pickled_code(tmp_path):
    from wsl.data.formats import cnn_wild_park

    fixtures.write_cnn_wild_park(tmp_path, trials=1, ckpts=1)
    f = next(tmp_path.rglob("checkpoint.pt"))
    obj = torch.load(f, weights_only=False)
    marker = tmp_path / "pwned"
    obj["optimizer"] = fixtures.Evil(f"touch {marker}")
    torch.save(obj, f)
    recs = cnn_wild_park.load(tmp_path)
    recs.state_dict(0)
    assert not marker.exists()
    torch.load(f, weights_only=False)  # the fixture is really dangerous: a plain unpickling runs it
    assert marker.exists()
    obj["config"] = {"n_layers": 2}
    torch.save(obj, f)
    with pytest.raises(ZooFormatError, match="checkpoint.pt: no usable 'config'"):
        cnn_wild_park.load(tmp_path)
    f.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(CheckpointError, match="checkpoint.pt"):
        cnn_wild_park.load(tmp_path)


@pytest.mark.parametrize("zipfile", [True, False])
def test_inert_pickle_rebuilds_tensors_and_configs_but_runs_nothing(tmp_path, zipfile):
    OmegaConf = pytest.importorskip("omegaconf").OmegaConf

    from tests.data.wild_park_config import CNNConfig
    from wsl.data.formats.inert_pickle import Record, load_inert, plain

    spec = fixtures.WILD_PARK_SPECS[1]
    cfg = CNNConfig(n_classes=10, **spec)
    marker = tmp_path / "pwned"
    obj = {"w": torch.arange(6.0).reshape(2, 3), "cfg": cfg, "oc": OmegaConf.structured(cfg),
           "evil": fixtures.Evil(f"touch {marker}"), "b": b"\x00\xff", "n": 3}
    f = tmp_path / "ckpt.pt"
    torch.save(obj, f, _use_new_zipfile_serialization=zipfile)
    out = load_inert(f)
    assert torch.equal(out["w"], obj["w"]) and out["b"] == obj["b"] and out["n"] == 3
    assert plain(out["cfg"]) == {"n_classes": 10, **spec}
    assert plain(out["oc"]) == {"n_classes": 10, **spec}
    assert isinstance(out["evil"], Record) and out["evil"].qualname.endswith("system")
    assert not marker.exists()



def _one_of_each(tmp_path):
    from wsl.data.formats import cnn_wild_park, dws_inr, model_zoos, nfn_siren

    fixtures.write_small_cnn_zoo(tmp_path / "s")
    fixtures.write_dws_mnist(tmp_path / "d")
    fixtures.write_nfn_sirens(tmp_path / "n", n=2, augs=0)
    fixtures.write_model_zoo(tmp_path / "m", trials=1, epochs=(1,))
    fixtures.write_cnn_wild_park(tmp_path / "w", trials=2, ckpts=1)
    return [(small_cnn_zoo.load(tmp_path / "s", split="none"), 1, torch.randn(2, 1, 16, 16)),
            (dws_inr.load(tmp_path / "d"), 0, torch.rand(5, 2)),
            (nfn_siren.load(tmp_path / "n"), 0, torch.rand(5, 2)),
            (model_zoos.load(tmp_path / "m"), 0, torch.randn(2, 1, 28, 28)),
            (cnn_wild_park.load(tmp_path / "w"), 1, torch.randn(2, 3, 8, 8))]


def test_loaded_models_respect_their_symmetries(tmp_path):
    from wsl.testing.checks import (
        inconsistent_graph,
        max_output_diff,
        symmetry_output_diff,
    )

    for recs, i, x in _one_of_each(tmp_path):
        model, g = recs.model(i), recs.graph(i)
        gen = torch.Generator().manual_seed(0)
        assert symmetry_output_diff(model, g, g.spec.sample_symmetry(gen), x) < 1e-4, recs.name
        wrong = from_graph(inconsistent_graph(g, gen), model)
        assert max_output_diff(model, wrong, x) > 1e-4, recs.name


def test_records_pickle_for_spawned_workers(tmp_path):
    import pickle

    for recs, i, _ in _one_of_each(tmp_path):
        sub = recs.subset([i])
        again = pickle.loads(pickle.dumps(sub))
        assert len(pickle.dumps(sub)) < 200_000  # paths and layouts, not the weight matrices
        for k, v in sub.state_dict(0).items():
            assert torch.equal(again.state_dict(0)[k], v), recs.name
