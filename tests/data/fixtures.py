"""Writers of tiny zoos in the exact on-disk formats of the published weight-space zoos (for loader tests)."""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

from wsl.data.formats import ZooRecords
from wsl.graph.convert import from_graph


def assert_round_trip(recs: ZooRecords, i: int) -> None:
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
def small_cnn_layout(in_channels: int = 1, channels: int = 16, classes: int = 10, k: int = 3) -> list[tuple]:
    """``(varname, shape)`` in the column order of the published layout.csv (bias before kernel per layer)."""
    names = ["conv2d", "conv2d_1", "conv2d_2"]
    rows, cin = [], in_channels
    for n in names:
        rows += [(f"sequential/{n}/bias:0", (channels,)), (f"sequential/{n}/kernel:0", (k, k, cin, channels))]
        cin = channels
    rows += [("sequential/dense/bias:0", (classes,)), ("sequential/dense/kernel:0", (channels, classes))]
    return rows


def write_small_cnn_zoo(root: Path, *, runs: int = 6, steps: tuple[int, ...] = (0, 20, 86), in_channels: int = 1,
                        channels: int = 4, classes: int = 10, nan_rows: tuple[int, ...] = (),
                        nan_acc_rows: tuple[int, ...] = (), seed: int = 0) -> dict:
    """A Small CNN Zoo directory: weights.npy, layout.csv (pandas-style, with index column), metrics.csv.gz."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    layout = small_cnn_layout(in_channels, channels, classes)
    sizes = [int(np.prod(s)) for _, s in layout]
    n_params = sum(sizes)
    with (root / "layout.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "varname", "shape", "size", "start_idx", "end_idx"])
        start = 0
        for i, ((name, shape), size) in enumerate(zip(layout, sizes)):
            w.writerow([i, name, str(tuple(shape)), size, start, start + size])
            start += size
    n = runs * len(steps)
    weights = rng.normal(0, 0.3, size=(n, n_params)).astype(np.float32)
    for r in nan_rows:
        weights[r, 5] = np.nan
    np.save(root / "weights.npy", weights)
    acts = ["relu", "tanh"]
    cols = ["config.activation", "config.dropout", "config.learning_rate", "config.w_init", "modeldir", "step",
            "test_accuracy", "test_loss", "train_accuracy", "train_loss"]
    rows = []
    for i in range(n):
        run, step = divmod(i, len(steps))
        acc = "" if i in nan_acc_rows else f"{0.1 + 0.01 * i:.4f}"
        rows.append([acts[run % 2], 0.05 * run, 0.001 * (run + 1), "he_normal", f"/tmp/zoo/run{run}",
                     steps[step], acc, 2.0 - 0.01 * i, 0.2 + 0.01 * i, 1.5])
    with gzip.open(root / "metrics.csv.gz", "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow([""] + cols)
        for i, r in enumerate(rows):
            w.writerow([i] + r)
    return {"weights": weights, "layout": layout, "rows": rows, "steps": steps}


# ---------------------------------------------------------------- DWSNets INRs
def dws_inr_state(rng: torch.Generator, hidden: int = 8, layers: int = 3, label: int | None = None) -> dict:
    """State dict of DWSNets' ``INR`` (``seq.<i>.weight/bias``; Siren layers then a final ``nn.Linear``)."""
    dims = [2] + [hidden] * (layers - 1) + [1]
    sd = {}
    for i, (a, b) in enumerate(pairwise(dims)):
        sd[f"seq.{i}.weight"] = torch.randn(b, a, generator=rng) * 0.3
        sd[f"seq.{i}.bias"] = torch.randn(b, generator=rng) * 0.1
    if label is not None:
        sd["label"] = label
    return sd


def write_dws_mnist(root: Path, *, per_split: int = 3, hidden: int = 8, absolute: bool = True) -> dict:
    """``mnist-inrs/mnist_png_<split>_<label>_<image>/checkpoints/model_final.pth`` + ``mnist_splits.json``
    (labels as strings, paths absolute as written by DWSNets' generate_data_splits.py)."""
    rng = torch.Generator().manual_seed(0)
    split: dict = {s: {"path": [], "label": []} for s in ("train", "val", "test")}
    states = {}
    img = 0
    for s, part in (("train", "training"), ("val", "training"), ("test", "testing")):
        for j in range(per_split):
            label = (img * 3) % 10
            d = root / "mnist-inrs" / f"mnist_png_{part}_{label}_{img}" / "checkpoints"
            d.mkdir(parents=True)
            p = d / "model_final.pth"
            sd = dws_inr_state(rng, hidden)
            torch.save(sd, p)
            rel = p.relative_to(root).as_posix()
            split[s]["path"].append(("/home/author/dws/dataset/" + rel) if absolute else rel)
            split[s]["label"].append(str(label))
            states[rel] = sd
            img += 1
    (root / "mnist_splits.json").write_text(json.dumps(split))
    return {"split": split, "states": states}


def write_dws_fmnist(root: Path, *, per_split: int = 2, hidden: int = 8) -> dict:
    """``fmnist_inrs/<split>/model_<i>.pth`` state dicts carrying an int ``label`` entry + ``fmnist_inrs/splits.json``
    (lists of paths per split, as in the original FashionMNIST INR release)."""
    rng = torch.Generator().manual_seed(1)
    split: dict = {}
    labels = {}
    i = 0
    for s in ("train", "val", "test"):
        split[s] = []
        d = root / "fmnist_inrs" / s
        d.mkdir(parents=True)
        for _ in range(per_split):
            torch.save(dws_inr_state(rng, hidden, label=i % 10), d / f"model_{i}.pth")
            split[s].append(f"/data/fmnist_inrs/{s}/model_{i}.pth")
            labels[f"{s}/model_{i}.pth"] = i % 10
            i += 1
    (root / "fmnist_inrs" / "splits.json").write_text(json.dumps(split))
    return {"labels": labels}


# ---------------------------------------------------------------- NFN SIRENs
def nfn_siren_state(rng: torch.Generator, hidden: int = 8, out: int = 1) -> dict:
    """State dict of NFN's ``Siren(2, hidden, hidden_layers=1, out, outermost_linear=True)``."""
    return {"net.0.linear.weight": torch.randn(hidden, 2, generator=rng), "net.0.linear.bias": torch.randn(hidden, generator=rng),
            "net.1.linear.weight": torch.randn(hidden, hidden, generator=rng) * 0.1,
            "net.1.linear.bias": torch.randn(hidden, generator=rng),
            "net.2.weight": torch.randn(out, hidden, generator=rng) * 0.1, "net.2.bias": torch.randn(out, generator=rng)}


def write_nfn_sirens(root: Path, *, n: int = 12, augs: int = 2, hidden: int = 8, out: int = 1) -> dict:
    """``randinit_smaller_<label>s/net<idx>.pth`` (label = idx % 10) and ``randinit_smaller_aug<i>_<label>s/``."""
    rng = torch.Generator().manual_seed(2)
    states = {}
    for view in range(augs + 1):
        for idx in range(n):
            label = (idx * 7) % 10
            prefix = "randinit_smaller" if view == 0 else f"randinit_smaller_aug{view - 1}"
            d = root / f"{prefix}_{label}s"
            d.mkdir(parents=True, exist_ok=True)
            sd = nfn_siren_state(rng, hidden, out)
            torch.save(sd, d / f"net{idx}.pth")
            states[(view, idx)] = sd
    return {"states": states}


# ---------------------------------------------------------------- Model Zoos (Schürholt et al.)
def write_model_zoo(root: Path, model_type: str = "CNN", *, trials: int = 4, epochs: tuple[int, ...] = (0, 1, 2),
                    nlin: str = "tanh", dropout: float = 0.0, channels_in: int = 1, pad: bool = True) -> dict:
    """ray-tune trial dirs: ``NN_tune_trainable_<id>/{params.json, result.json, checkpoint_<epoch>/checkpoints}``."""
    from wsl.data.formats.model_zoos import build_model

    states = {}
    for t in range(trials):
        d = root / f"NN_tune_trainable_{t:05d}_{t}_seed={t + 1}_2022-01-01_00-00-00"
        d.mkdir(parents=True)
        cfg = {"model::type": model_type, "model::channels_in": channels_in, "model::nlin": nlin,
               "model::dropout": dropout, "model::init_type": "uniform", "model::use_bias": False,
               "optim::optimizer": "adam", "optim::lr": 0.0003, "seed": t + 1, "training::epochs_train": 50}
        (d / "params.json").write_text(json.dumps(cfg))
        lines = []
        for e in epochs:
            torch.manual_seed(100 * t + e)
            model = build_model(cfg)
            c = d / (f"checkpoint_{e:06d}" if pad else f"checkpoint_{e}")
            c.mkdir()
            torch.save(model.state_dict(), c / "checkpoints")
            states[(t, e)] = model.state_dict()
            lines.append(json.dumps({"test_acc": 0.1 * t + 0.01 * e, "train_acc": 0.2 + 0.01 * e, "test_loss": 1.0,
                                     "train_loss": 1.1, "training_iteration": e, "trial_id": f"{t:05d}",
                                     "config": cfg}))
        (d / "result.json").write_text("\n".join(lines) + "\n")
    return {"states": states}


# ---------------------------------------------------------------- CNN Wild Park
WILD_PARK_SPECS = [
    {"n_layers": 2, "channels": [3, 4, 8], "kernel_size": [3, 5], "stride": [1, 1], "padding": [1, 2],
     "residual": [-1, -1], "activation": ["relu", "gelu"]},
    {"n_layers": 3, "channels": [3, 8, 4, 8], "kernel_size": [3, 3, 7], "stride": [1, 1, 1], "padding": [1, 1, 3],
     "residual": [-1, -1, 0], "activation": ["tanh", "relu", "sigmoid"]},
]


def write_cnn_wild_park(root: Path, *, trials: int = 4, ckpts: int = 2,
                        splits: dict[str, list[int]] | None = None) -> dict:
    """``cifar10_zooV2/<trial>/checkpoint_<k>/checkpoint.pt`` holding model, optimizer, a *pickled config object*
    (a dataclass of the training code, as the published files hold an OmegaConf object) and ray's state.

    ``splits``: trial numbers per split; writes neural graphs' ``cnn_park_splits.json`` (``path`` / ``score`` /
    ``step`` lists, paths relative to ``root``) listing every checkpoint of those trials."""
    from tests.data.wild_park_config import CNNConfig
    from wsl.data.formats.cnn_wild_park import WildParkCNN

    specs = WILD_PARK_SPECS
    states = {}
    for t in range(trials):
        s = specs[t % len(specs)]
        cfg = CNNConfig(n_classes=10, **s)
        for k in range(ckpts):
            torch.manual_seed(10 * t + k)
            model = WildParkCNN(**{**s, "n_classes": 10})
            d = root / "cifar10_zooV2" / f"NN_tune_trainable_{t:05d}" / f"checkpoint_{k:06d}"
            d.mkdir(parents=True)
            torch.save({"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "config": cfg,
                        "iteration": k + 1, "last_result": {"test/acc": 0.3 + 0.01 * t + 0.001 * k,
                                                             "test/loss": 1.5}}, d / "checkpoint.pt")
            states[(t, k)] = model.state_dict()
    if splits is not None:
        table = {}
        for name, ts in splits.items():
            rel = [f"cifar10_zooV2/NN_tune_trainable_{t:05d}/checkpoint_{k:06d}/checkpoint.pt" for t in ts
                   for k in range(ckpts)]
            table[name] = {"path": rel, "score": [0.3 + 0.01 * t + 0.001 * k for t in ts for k in range(ckpts)],
                           "step": [k + 1 for _ in ts for k in range(ckpts)]}
        (root / "cnn_park_splits.json").write_text(json.dumps(table))
    return {"states": states}


def write_nfn_order(path: Path, n_rows: int, seed: int = 0) -> list[int]:
    """NFN's ``*_split.csv``: a permutation of the zoo's weights.npy rows, one index per line."""
    order = np.random.default_rng(seed).permutation(n_rows).tolist()
    path.write_text("\n".join(str(i) for i in order) + "\n")
    return order


# ---------------------------------------------------------------- published zoos as data= configs
@dataclass
class PublishedFixture:
    """A tiny zoo written for a ``data=<format>`` config: the Hydra overrides that point the config at it, and
    the sizes of its train / val / test splits *as the fixture defines them* (official lists, or for Model Zoos
    the zoo convention's seeded split by trial, counted by hand below)."""

    root: Path
    overrides: list[str]
    sizes: dict[str, int]


def published_fixture(format: str, root: Path) -> PublishedFixture:
    """Write a tiny zoo of ``format`` under ``root`` (see :class:`PublishedFixture`)."""
    root.mkdir(parents=True, exist_ok=True)
    over = [f"data.root={root}"]
    if format == "dws_inr":  # mnist_splits.json lists 3 INRs per split (a seeded 80/10/10 split would be 7/1/1)
        write_dws_mnist(root, per_split=3)
        write_dws_fmnist(root, per_split=2)  # fmnist_inrs/splits.json, for the FashionMNIST recipes
        return PublishedFixture(root, over, {"train": 3, "val": 3, "test": 3})
    if format == "nfn_siren":  # images 0-6 train (+ one augmented view each), 7-9 val, 10-11 test
        write_nfn_sirens(root, n=12, augs=1)
        return PublishedFixture(root, [*over, "data.split_points=[7,10]", "data.augmentations=1"],
                                {"train": 14, "val": 3, "test": 2})
    if format == "small_cnn_zoo":  # 20 runs, final step kept; NFN split: 10 test, 8 / 2 train / val
        write_small_cnn_zoo(root, runs=20)
        write_nfn_order(root / "cifar10_split.csv", 20 * 3)
        return PublishedFixture(root, [*over, f"data.order_csv={root / 'cifar10_split.csv'}"],
                                {"train": 8, "val": 2, "test": 10})
    if format == "model_zoos":  # 14 trials, last epoch each; 70/15/15 by trial: floor(9.8)=9, floor(2.1)=2, 3
        write_model_zoo(root, trials=14, epochs=(0, 1, 2))
        return PublishedFixture(root, over, {"train": 9, "val": 2, "test": 3})
    if format == "cnn_wild_park":  # cnn_park_splits.json: trials 0-2 train, 3-4 val, 5-6 test
        write_cnn_wild_park(root, trials=7, ckpts=1, splits={"train": [0, 1, 2], "val": [3, 4], "test": [5, 6]})
        return PublishedFixture(root, [*over, "data.splits=cnn_park_splits.json"], {"train": 3, "val": 2, "test": 2})
    raise ValueError(f"no fixture for published zoo format {format!r}")


class Evil:
    """An object whose unpickling would run code (``os.system``): loaders must refuse, never execute it."""

    def __init__(self, command: str = "true") -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        import os

        return (os.system, (self.command,))
