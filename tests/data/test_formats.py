"""Loaders of the published zoos, on tiny fixtures written in exactly those on-disk formats."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from tests.data import fixtures
from wsl.data.formats import ZooFormatError, small_cnn_zoo
from wsl.io import CheckpointError


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
        fixtures.assert_round_trip(recs, i)
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
        fixtures.assert_round_trip(recs, i)
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
    fixtures.assert_round_trip(recs, 3)


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
        fixtures.assert_round_trip(recs, i)
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



def test_format_registry(tmp_path):
    from wsl.data import formats

    fixtures.write_nfn_sirens(tmp_path, n=3, augs=0)
    assert len(formats.load("nfn_siren", tmp_path)) == 3
    with pytest.raises(ValueError, match="unknown zoo format"):
        formats.load("imagenet", tmp_path)
