"""Loaders of the published zoos, on tiny fixtures written in exactly those on-disk formats."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from tests.data import fixtures
from wsl.data.formats import ZooFormatError, small_cnn_zoo
from wsl.graph.convert import from_graph
from wsl.io import CheckpointError


def _assert_round_trip(recs, i: int) -> None:
    """graph(i) -> state dict is bit-identical to the loaded weights, and the module carrying them works."""
    sd = recs.state_dict(i)
    g = recs.graph(i)
    back = g.to_state_dict()
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    assert float(g.y) == float(recs.labels[i])
    model = from_graph(g, recs.architecture_of(i))
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k])


# ---------------------------------------------------------------- Small CNN Zoo
def _reference_forward(flat: np.ndarray, layout: list[tuple], x_nhwc: np.ndarray, act) -> np.ndarray:
    """The TF network computed directly from the flat TF-layout vector: NHWC VALID stride-2 convs, GAP, dense."""
    params, start = {}, 0
    for name, shape in layout:
        size = int(np.prod(shape))
        params[name] = flat[start:start + size].reshape(shape).astype(np.float64)
        start += size
    h = x_nhwc.astype(np.float64)
    for layer in ("conv2d", "conv2d_1", "conv2d_2"):
        k, b = params[f"sequential/{layer}/kernel:0"], params[f"sequential/{layer}/bias:0"]
        kh, kw, _, cout = k.shape
        oh, ow = (h.shape[1] - kh) // 2 + 1, (h.shape[2] - kw) // 2 + 1
        out = np.zeros((h.shape[0], oh, ow, cout))
        for i in range(oh):
            for j in range(ow):
                patch = h[:, 2 * i:2 * i + kh, 2 * j:2 * j + kw, :]  # [n, kh, kw, cin]
                out[:, i, j, :] = np.einsum("nhwc,hwco->no", patch, k) + b
        h = act(out)
    g = h.mean(axis=(1, 2))
    return g @ params["sequential/dense/kernel:0"] + params["sequential/dense/bias:0"]


@pytest.mark.parametrize("in_channels", [1, 3])
def test_small_cnn_zoo_tf_layout_computes_the_tf_function(tmp_path, in_channels):
    info = fixtures.write_small_cnn_zoo(tmp_path, in_channels=in_channels)
    recs = small_cnn_zoo.load(tmp_path, split="none")
    x = np.random.default_rng(1).normal(size=(2, 17, 19, in_channels)).astype(np.float32)
    acts = {"relu": lambda v: np.maximum(v, 0), "tanh": np.tanh}
    for i in range(len(recs)):
        row = recs.metadata["row"][i]
        ref = _reference_forward(info["weights"][row], info["layout"], x, acts[recs.metadata["config.activation"][i]])
        with torch.no_grad():
            out = recs.model(i)(torch.from_numpy(x).permute(0, 3, 1, 2)).double().numpy()
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    # a wrong transposition (HWIO read as OIHW-reshaped) must not pass the same check
    sd = recs.state_dict(0)
    bad = recs.model(0)
    with torch.no_grad():
        bad.convs[1].weight.copy_(sd["convs.1.weight"].transpose(2, 3))
        out = bad(torch.from_numpy(x).permute(0, 3, 1, 2)).double().numpy()
    ref = _reference_forward(info["weights"][recs.metadata["row"][0]], info["layout"], x,
                             acts[recs.metadata["config.activation"][0]])
    assert not np.allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_small_cnn_zoo_filters_labels_splits_and_round_trip(tmp_path):
    info = fixtures.write_small_cnn_zoo(tmp_path, runs=10, nan_rows=(5,), nan_acc_rows=(8,))
    recs = small_cnn_zoo.load(tmp_path)
    steps = info["steps"]
    final_rows = [i for i in range(30) if i % 3 == 2 and i not in (5, 8)]  # step 86, finite weights and label
    assert recs.metadata["row"] == final_rows
    assert set(recs.metadata["step"]) == {86}
    assert torch.allclose(recs.labels, torch.tensor([0.1 + 0.01 * r for r in final_rows]))
    assert recs.metadata["config.activation"][:2] == ["relu", "tanh"]
    assert len(recs.archs) == 2 and recs.arch_index.tolist()[:2] == [0, 1]
    # NFN split: second half test, first half 80/20 train/val; a partition
    sp = recs.splits
    n = len(recs)
    assert sp["test"].tolist() == list(range(n // 2, n))
    assert sorted(sp["train"].tolist() + sp["val"].tolist()) == list(range(n // 2))
    assert len(sp["train"]) == int(0.8 * (n // 2))
    for i in range(len(recs)):
        _assert_round_trip(recs, i)
    # every step, no filtering
    all_recs = small_cnn_zoo.load(tmp_path, step=None, drop_nan=False, split="grouped")
    assert len(all_recs) == 30 and steps == (0, 20, 86)
    # grouped split keeps checkpoints of one run together
    sp = all_recs.splits
    where = {}
    for s, idx in sp.items():
        for i in idx.tolist():
            where.setdefault(all_recs.metadata["modeldir"][i], set()).add(s)
    assert all(len(v) == 1 for v in where.values())


def test_small_cnn_zoo_plugs_into_zoo_dataset(tmp_path):
    from wsl.data.dataset import ZooDataset

    fixtures.write_small_cnn_zoo(tmp_path, runs=8)
    recs = small_cnn_zoo.load(tmp_path)
    relu = recs.where(lambda r: r["config.activation"] == "relu")
    ds = ZooDataset(relu, split="all")
    assert len(ds) == len(relu) == 4
    g = ds[1]
    assert torch.equal(g.edge_attr[:, 0], relu.graph(1).edge_attr[:, 0])
    assert float(g.y) == pytest.approx(float(relu.labels[1]))
    with pytest.raises(ValueError, match="different architectures"):
        recs.architecture()


def test_small_cnn_zoo_errors_name_the_file(tmp_path):
    fixtures.write_small_cnn_zoo(tmp_path)
    (tmp_path / "metrics.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ZooFormatError, match="metrics.csv.gz"):
        small_cnn_zoo.load(tmp_path)
    fixtures.write_small_cnn_zoo(tmp_path)
    with gzip.open(tmp_path / "metrics.csv.gz", "wt") as f:
        f.write(",step,test_accuracy\n0,86,0.5\n")
    with pytest.raises(ZooFormatError, match="rows but weights.npy"):
        small_cnn_zoo.load(tmp_path)
    fixtures.write_small_cnn_zoo(tmp_path)
    np.save(tmp_path / "weights.npy", np.zeros((18, 7), dtype=np.float32))
    with pytest.raises(ZooFormatError, match="weights.npy"):
        small_cnn_zoo.load(tmp_path)
    fixtures.write_small_cnn_zoo(tmp_path)
    (tmp_path / "layout.csv").unlink()
    with pytest.raises(ZooFormatError, match="layout.csv: missing"):
        small_cnn_zoo.load(tmp_path)
    fixtures.write_small_cnn_zoo(tmp_path)
    text = (tmp_path / "layout.csv").read_text().replace("dense/kernel", "batch_normalization/gamma")
    (tmp_path / "layout.csv").write_text(text)
    with pytest.raises(ZooFormatError, match="batch_normalization"):
        small_cnn_zoo.load(tmp_path)


def test_small_cnn_zoo_nfn_order_file(tmp_path):
    fixtures.write_small_cnn_zoo(tmp_path, runs=4)
    order = list(reversed(range(12)))
    (tmp_path / "split.csv").write_text("\n".join(map(str, order)) + "\n")
    recs = small_cnn_zoo.load(tmp_path, order_csv=tmp_path / "split.csv")
    assert recs.metadata["row"] == [11, 8, 5, 2]
    (tmp_path / "bad.csv").write_text("0\n0\n1\n")
    with pytest.raises(ZooFormatError, match="bad.csv"):
        small_cnn_zoo.load(tmp_path, order_csv=tmp_path / "bad.csv")


# ---------------------------------------------------------------- DWSNets INRs
def test_dws_mnist_inrs(tmp_path):
    from wsl.data.formats import dws_inr

    info = fixtures.write_dws_mnist(tmp_path)  # absolute author paths in the JSON: resolved under root
    recs = dws_inr.load(tmp_path, "mnist_splits.json")
    assert len(recs) == 9
    assert {k: len(v) for k, v in recs.splits.items()} == {"train": 3, "val": 3, "test": 3}
    assert recs.labels.tolist() == [int(x) for s in ("train", "val", "test") for x in info["split"][s]["label"]]
    assert recs.metadata["image_id"] == list(range(9))
    for i in range(len(recs)):
        assert torch.equal(recs.state_dict(i)["seq.1.weight"], info["states"][recs.metadata["path"][i]]["seq.1.weight"])
        _assert_round_trip(recs, i)
    # the module computes DWSNets' INR: seq(x) + 0.5 with sin(30 (W x + b)) hidden layers
    sd, x = recs.state_dict(0), torch.rand(5, 2)
    h = torch.sin(30 * (x @ sd["seq.0.weight"].T + sd["seq.0.bias"]))
    h = torch.sin(30 * (h @ sd["seq.1.weight"].T + sd["seq.1.bias"]))
    ref = h @ sd["seq.2.weight"].T + sd["seq.2.bias"] + 0.5
    assert torch.allclose(recs.model(0)(x), ref, atol=1e-6)
    assert recs.split("test").labels.tolist() == recs.labels[6:].tolist()


def test_dws_fmnist_labels_from_files(tmp_path):
    from wsl.data.formats import dws_inr

    info = fixtures.write_dws_fmnist(tmp_path)
    recs = dws_inr.load(tmp_path, "fmnist_inrs/splits.json")
    assert len(recs) == 6
    assert recs.labels.tolist() == [info["labels"][p.split("fmnist_inrs/")[1]] for p in recs.metadata["path"]]
    assert "label" not in recs.state_dict(0)
    _assert_round_trip(recs, 3)


def test_dws_errors(tmp_path):
    from wsl.data.formats import dws_inr

    fixtures.write_dws_mnist(tmp_path, absolute=False)
    with pytest.raises(ZooFormatError, match="nope.json: missing"):
        dws_inr.load(tmp_path, "nope.json")
    (tmp_path / "broken.json").write_text('{"train": {"path": ["a.pth"], "label": [1, 2]}}')
    with pytest.raises(ZooFormatError, match="1 paths but 2 labels"):
        dws_inr.load(tmp_path, "broken.json")
    (tmp_path / "missing.json").write_text('{"train": {"path": ["mnist-inrs/gone.pth"], "label": [1]}}')
    with pytest.raises(ZooFormatError, match="gone.pth"):
        dws_inr.load(tmp_path, "missing.json")
    recs = dws_inr.load(tmp_path, "mnist_splits.json")
    victim = tmp_path / recs.metadata["path"][2]
    victim.write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match="model_final.pth"):
        recs.state_dict(2)
    # a checkpoint that needs code execution is refused, not run
    marker = tmp_path / "pwned"
    torch.save({"seq.0.weight": torch.zeros(8, 2), "obj": fixtures.Evil(f"touch {marker}")}, victim)
    with pytest.raises(CheckpointError, match="weights-only"):
        recs.state_dict(2)
    assert not marker.exists()


# ---------------------------------------------------------------- NFN SIRENs
def test_nfn_sirens_layout_labels_augmentations_splits(tmp_path):
    from wsl.data.formats import nfn_siren

    info = fixtures.write_nfn_sirens(tmp_path, n=12, augs=2, out=3)
    recs = nfn_siren.load(tmp_path, split_points=(8, 10))
    assert len(recs) == 12
    assert recs.metadata["image_index"].tolist() == list(range(12))
    assert recs.labels.tolist() == [(i * 7) % 10 for i in range(12)]
    assert {k: v.tolist() for k, v in recs.splits.items()} == {"train": list(range(8)), "val": [8, 9], "test": [10, 11]}
    for i in (0, 11):
        assert torch.equal(recs.state_dict(i)["net.2.weight"], info["states"][(0, i)]["net.2.weight"])
        _assert_round_trip(recs, i)
    assert recs.model(0)(torch.rand(4, 2)).shape == (4, 3)
    aug = nfn_siren.load(tmp_path, augmentations=2, split_points=(8, 10))
    assert len(aug) == 12 + 2 * 8  # augmented views of training images only
    train = aug.split("train")
    assert len(train) == 24 and sorted(set(train.metadata["view"].tolist())) == [0, 1, 2]
    j = next(i for i in range(len(aug)) if int(aug.metadata["view"][i]) == 2 and int(aug.metadata["image_index"][i]) == 5)
    assert torch.equal(aug.state_dict(j)["net.0.linear.bias"], info["states"][(2, 5)]["net.0.linear.bias"])
    assert int(aug.labels[j]) == (5 * 7) % 10
    with pytest.raises(ZooFormatError, match="randinit_smaller_aug2"):
        nfn_siren.load(tmp_path, augmentations=3)


def test_nfn_siren_errors(tmp_path):
    from wsl.data.formats import nfn_siren

    with pytest.raises(ZooFormatError, match="not a directory"):
        nfn_siren.load(tmp_path / "absent")
    fixtures.write_nfn_sirens(tmp_path, n=3, augs=0)
    torch.save({"net.0.weight": torch.zeros(2, 2)}, tmp_path / "randinit_smaller_0s" / "net0.pth")
    with pytest.raises(ZooFormatError, match="not an NFN SIREN"):
        nfn_siren.load(tmp_path)


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
        _assert_round_trip(recs, i)
    every = model_zoos.load(tmp_path, epochs="all", label="train_acc")
    assert len(every) == 18
    where = {}
    for s, idx in every.splits.items():
        for i in idx.tolist():
            where.setdefault(every.metadata["trial"][i], set()).add(s)
    assert all(len(v) == 1 for v in where.values()) and len(where) == 6
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
    _assert_round_trip(recs, 1)
    fixtures.write_model_zoo(tmp_path / "b", "MLP", trials=1)
    _assert_round_trip(model_zoos.load(tmp_path / "b"), 0)
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
        _assert_round_trip(recs, i)
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
    off = cnn_wild_park.load(tmp_path, "cnn_park_splits.json")
    assert off.splits["val"].tolist() == [4, 5] and off.labels.tolist()[5:7] == pytest.approx([0.6, 0.7])


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
    from omegaconf import OmegaConf

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


def test_format_registry(tmp_path):
    from wsl.data import formats

    fixtures.write_nfn_sirens(tmp_path, n=3, augs=0)
    assert len(formats.load("nfn_siren", tmp_path)) == 3
    with pytest.raises(ValueError, match="unknown zoo format"):
        formats.load("imagenet", tmp_path)
