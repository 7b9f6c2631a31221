"""Published zoos trained by config (``data=dws_inr`` ...): official splits, train-only normalization, cache.

Every zoo is a tiny fixture written in its exact on-disk format (``tests/data/fixtures.py``); the expected split
sizes are the fixture's own (its splits file / split points, counted by hand), never the loader's output.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("hydra")

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf.errors import MissingMandatoryValue

from tests.data import fixtures
from wsl.data.formats import ZooFormatError
from wsl.data.published import published
from wsl.train.entry import CONFIG_DIR

REPO = CONFIG_DIR.parent
FORMATS = ["dws_inr", "nfn_siren", "small_cnn_zoo", "model_zoos", "cnn_wild_park"]
# the zoo's label: classes for the INR zoos, test accuracy (a regression target) for the others
TASK = {"dws_inr": "classification", "nfn_siren": "classification", "small_cnn_zoo": "generalization",
        "model_zoos": "generalization", "cnn_wild_park": "generalization"}
SIZES = re.compile(r"train/val/test = (\d+)/(\d+)/(\d+)")


def _train(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WSL_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *args], check=False,
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)


@pytest.mark.parametrize("fmt", FORMATS)
def test_train_published_zoo_end_to_end(fmt, tmp_path):
    fx = fixtures.published_fixture(fmt, tmp_path / "zoo")
    run = tmp_path / "run"
    proc = _train([f"data={fmt}", *fx.overrides, f"task={TASK[fmt]}", "model=gmn", "model.hidden_dim=8",
                   "model.num_layers=1", "trainer.epochs=1", "trainer.batch_size=4", "trainer.progress=false",
                   "trainer.plot=false", f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sizes = SIZES.search(proc.stdout)
    assert sizes is not None, proc.stdout[-2000:]
    assert dict(zip(("train", "val", "test"), map(int, sizes.groups()))) == fx.sizes
    result = json.loads((run / "result.json").read_text())
    assert result["config"]["data"]["format"] == fmt and result["test"]
    assert list((tmp_path / "cache" / "published").glob(f"{fmt}-zoo-*/graphs-*.safetensors")), \
        "converted weights must be cached under $WSL_CACHE/published"
    assert "converting" in proc.stderr  # the conversion progress bar


def test_official_splits_are_the_listed_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WSL_CACHE", str(tmp_path / "cache"))
    info = fixtures.write_dws_mnist(tmp_path / "zoo", per_split=3)
    data = published("dws_inr", tmp_path / "zoo", normalize=False, progress=False)
    for split in ("train", "val", "test"):
        rels = [p.split("/dataset/", 1)[-1] for p in info["split"][split]["path"]]
        want = sorted(float(info["states"][r]["seq.0.weight"][0, 0]) for r in rels)
        got = sorted(float(data[split][i].to_state_dict()["seq.0.weight"][0, 0]) for i in range(len(data[split])))
        assert got == want, split
        assert sorted(int(data[split][i].y) for i in range(3)) == sorted(map(int, info["split"][split]["label"]))


def _moments(states: list[dict], key: str) -> tuple[float, float]:
    v = torch.cat([sd[key].flatten().double() for sd in states])
    return float(v.mean()), float(v.std(unbiased=False))


def test_normalization_statistics_come_from_the_training_split_only(tmp_path, monkeypatch):
    monkeypatch.setenv("WSL_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "zoo"
    info = fixtures.write_dws_mnist(root, per_split=3)
    rel = {s: [p.split("/dataset/", 1)[-1] for p in info["split"][s]["path"]] for s in ("train", "val", "test")}

    def stats() -> dict:
        train = published("dws_inr", root, progress=False)["train"]
        (per_arch,) = train.transform.stats.values()
        return per_arch

    first = stats()
    want = _moments([info["states"][r] for r in rel["train"]], "seq.0.weight")
    everything = _moments(list(info["states"].values()), "seq.0.weight")
    assert first["seq.0.weight"] == pytest.approx(want, rel=1e-6)
    assert first["seq.0.weight"] != pytest.approx(everything, rel=1e-3)  # the check can tell the two apart

    test_file = root / rel["test"][0]  # a test INR with very different weights: statistics stay the same
    sd = torch.load(test_file, weights_only=True)
    torch.save({k: v * 100 for k, v in sd.items()}, test_file)
    data = published("dws_inr", root, progress=False)
    assert max(float(data["test"].graph(i).edge_attr.abs().max()) for i in range(3)) > 50  # the change is seen
    assert stats() == first

    train_file = root / rel["train"][0]  # ... while a changed training INR changes them
    sd = torch.load(train_file, weights_only=True)
    torch.save({k: v * 100 for k, v in sd.items()}, train_file)
    assert stats()["seq.0.weight"] != pytest.approx(first["seq.0.weight"], rel=1e-3)


def test_zoo_folder_is_only_read_and_the_cache_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("WSL_CACHE", str(tmp_path / "cache"))
    fx = fixtures.published_fixture("small_cnn_zoo", tmp_path / "zoo")
    before = sorted(p.relative_to(fx.root) for p in fx.root.rglob("*"))
    opts = {"order_csv": str(fx.root / "cifar10_split.csv")}
    a = published("small_cnn_zoo", fx.root, progress=False, **opts)
    cached = list((tmp_path / "cache" / "published").rglob("graphs-*.safetensors"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    b = published("small_cnn_zoo", fx.root, progress=False, **opts)
    assert cached[0].stat().st_mtime_ns == stamp  # reused, not rewritten
    assert torch.equal(a["test"].graph(3).edge_attr, b["test"].graph(3).edge_attr)
    assert sorted(p.relative_to(fx.root) for p in fx.root.rglob("*")) == before
    # another label column is another cache entry (cached meta holds the labels)
    published("small_cnn_zoo", fx.root, progress=False, label="train_accuracy", **opts)
    assert len(list((tmp_path / "cache" / "published").rglob("graphs-*.safetensors"))) == 2


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose("train", overrides=overrides)


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_root_fails_clearly(fmt):
    cfg = _compose([f"data={fmt}"])
    with pytest.raises(MissingMandatoryValue, match="data.root"):
        instantiate(cfg.data)


def test_wrong_root_names_the_folder(tmp_path):
    with pytest.raises(ZooFormatError, match="nowhere.*data.root"):
        published("dws_inr", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown published zoo format 'dws'"):
        published("dws", tmp_path)


def test_accuracy_labels_refuse_classification(tmp_path, monkeypatch):
    monkeypatch.setenv("WSL_CACHE", str(tmp_path / "cache"))
    fx = fixtures.published_fixture("model_zoos", tmp_path / "zoo")
    data = published("model_zoos", fx.root, progress=False)
    with pytest.raises(AttributeError, match="task=generalization"):
        _ = data["train"].num_classes


def test_mixed_architecture_zoo(tmp_path, monkeypatch):
    """CNN Wild Park mixes architectures: the graph metanetworks batch it, the NFN baseline refuses clearly."""
    from torch_geometric.data import Batch

    from wsl.nn import GMN, NFN

    monkeypatch.setenv("WSL_CACHE", str(tmp_path / "cache"))
    fx = fixtures.published_fixture("cnn_wild_park", tmp_path / "zoo")
    train = published("cnn_wild_park", fx.root, splits="cnn_park_splits.json", progress=False)["train"]
    assert train.mixed
    archs = {train.graph(i).spec.num_edges for i in range(len(train))}
    assert len(archs) == 2  # trials alternate between the fixture's two architectures
    batch = Batch.from_data_list([train[i] for i in range(len(train))])
    assert GMN(out_dim=1, hidden_dim=8, num_layers=1)(batch).shape == (len(train), 1)
    with pytest.raises(ValueError, match="architecture"):
        NFN(train[0], out_dim=1)(batch)


RECIPES = [("ngg_mnist_inr", "dws_inr", ("model", "scalers", ["identity", "amplification"])),
           ("nfn_hnp_cifar10_gs", "small_cnn_zoo", ("model", "head_dim", 1000))]


@pytest.mark.parametrize("recipe,fmt,setting", RECIPES)
def test_paper_recipe_runs(recipe, fmt, setting, tmp_path):
    """``wsl train +experiment=<recipe> data.root=PATH`` (shrunk to one small epoch) on a fixture of its zoo."""
    fx = fixtures.published_fixture(fmt, tmp_path / "zoo")
    run = tmp_path / "run"
    proc = _train([f"+experiment={recipe}", *fx.overrides, "model.hidden_dim=8", "model.num_layers=2",
                   "trainer.epochs=1", "trainer.batch_size=4", "trainer.progress=false", "trainer.plot=false",
                   "data.progress=false", f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sizes = SIZES.search(proc.stdout)
    assert sizes is not None and dict(zip(("train", "val", "test"), map(int, sizes.groups()))) == fx.sizes
    group, key, value = setting  # a setting of the recipe (not overridden above) reached the run
    assert json.loads((run / "result.json").read_text())["config"][group][key] == value
