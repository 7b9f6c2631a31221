"""Every option of every Hydra config group composes and instantiates; `wsl train` runs, also as a multirun.

Options are discovered from ``configs/<group>/*.yaml``, so a new config file is tested automatically.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("hydra")
pytest.importorskip("sklearn")

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch_geometric.data import Batch

from tests.data import fixtures
from wsl.nn import GMN
from wsl.train import Classification, fit
from wsl.train.entry import CONFIG_DIR, add_augmentation, build_model
from wsl.train.tasks import Task

REPO = CONFIG_DIR.parent
GROUPS = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir())
# small, fast settings for each data option (a data config without an entry here fails the test below): a list of
# overrides, or for published zoos (which need data.root) a function writing a tiny zoo under a folder and
# returning the overrides that point the config at it
DATA_SMOKE = {
    "digits_inr": ["data.limit=24", "data.steps=10"],
    "digits_inr_bench": ["data.limit=6", "data.variants=3", "data.steps=5"],
    "digits_cnn": ["data.runs=6", "data.epochs=2"],
    **{f: (lambda root, f=f: fixtures.published_fixture(f, root).overrides)
       for f in ("dws_inr", "nfn_siren", "small_cnn_zoo", "model_zoos", "cnn_wild_park")},
}


def data_overrides(option: str, tmp_path: Path) -> list[str]:
    """DATA_SMOKE's overrides of a data option (writing its fixture zoo under ``tmp_path`` where it needs one)."""
    smoke = DATA_SMOKE[option]
    return smoke(tmp_path / "zoo") if callable(smoke) else list(smoke)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def composed(tmp_path: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose("train", overrides=[*overrides, f"hydra.runtime.output_dir={tmp_path}"],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # resolves ${hydra:...} as in a real run
    return cfg


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from wsl.data.zoos import digits_inr

    return digits_inr(limit=24, steps=10, root=tmp_path_factory.mktemp("zoo"), progress=False)


def test_groups_present():
    assert {"data", "model", "task", "augment", "trainer", "logger", "experiment"} <= set(GROUPS)


@pytest.mark.parametrize("option", options("model"))
def test_model_option_builds_and_runs(option, tiny_data, tmp_path):
    cfg = composed(tmp_path, [f"model={option}"])
    task = instantiate(cfg.task)
    model = build_model(instantiate(cfg.model), tiny_data, task)
    out = model(Batch.from_data_list([tiny_data["train"][i] for i in range(3)]))
    assert out.shape == (3, tiny_data["train"].num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("option", options("task"))
def test_task_option(option, tmp_path):
    task = instantiate(composed(tmp_path, [f"task={option}"]).task)
    assert isinstance(task, Task) and task.mode in ("min", "max")


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_option_matches_fit(option, tmp_path):
    cfg = composed(tmp_path, [f"trainer={option}"])
    unknown = set(cfg.trainer) - set(inspect.signature(fit).parameters)
    assert not unknown, f"trainer/{option}.yaml has keys fit() does not take: {unknown}"


@pytest.mark.parametrize("option", options("logger"))
def test_logger_option(option, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = instantiate(composed(tmp_path, [f"logger={option}"]).logger)
    logger.log({"val_accuracy": 0.5}, step=1)
    logger.finish()
    if option == "csv":
        assert "val_accuracy" in (tmp_path / "metrics.csv").read_text()


@pytest.mark.parametrize("option", options("augment"))
def test_augment_option(option, tiny_data, tmp_path):
    aug = instantiate(composed(tmp_path, [f"augment={option}"]).augment)
    data = dict(tiny_data)
    train = data["train"]
    saved = train.transform
    try:
        collate = add_augmentation(data, aug)
        g = train[0]
        assert g.edge_attr.shape == train.graph(0).edge_attr.shape and torch.isfinite(g.edge_attr).all()
        if collate is not None:  # pairwise (mixup): mixes inside a training batch, soft labels
            batch = collate([train[i] for i in range(4)])
            assert batch.y.shape == (4, train.num_classes)
            torch.testing.assert_close(batch.y.sum(1), torch.ones(4))
            loss, _, _ = Classification().loss(GMN(out_dim=train.num_classes, hidden_dim=8, num_layers=1), batch)
            assert torch.isfinite(loss)
    finally:
        train.transform = saved


@pytest.mark.parametrize("option", options("data"))
def test_data_option(option, tmp_path, monkeypatch):
    assert option in DATA_SMOKE, f"add small settings for configs/data/{option}.yaml to DATA_SMOKE"
    monkeypatch.setenv("WSL_CACHE", str(tmp_path / "cache"))
    cfg = composed(tmp_path, [f"data={option}", *data_overrides(option, tmp_path), "data.progress=false"])
    data = instantiate(cfg.data)
    assert set(data) == {"train", "val", "test"} and all(len(v) > 0 for v in data.values())
    assert data["train"][0].edge_attr.shape[1] == 1


@pytest.mark.parametrize("option", options("experiment"))
def test_experiment_option_composes(option, tiny_data, tmp_path, monkeypatch):
    """Every recipe composes; a recipe on a published zoo (mandatory data.root) is pointed at a tiny fixture zoo
    of its format, its data instantiated with the recipe's loader options, and its model built and run there."""
    cfg = composed(tmp_path, [f"+experiment={option}"])
    data = tiny_data
    if "root" in cfg.data and OmegaConf.is_missing(cfg.data, "root"):
        monkeypatch.setenv("WSL_CACHE", str(tmp_path / "cache"))
        extra = fixtures.published_fixture(cfg.data.format, tmp_path / "zoo").overrides
        cfg = composed(tmp_path, [f"+experiment={option}", *extra, "data.progress=false"])
        data = instantiate(cfg.data)
        add_augmentation(data, instantiate(cfg.augment))  # a recipe's augmentation runs on its own data
    task = instantiate(cfg.task)
    model = build_model(instantiate(cfg.model), data, task)
    out = model(Batch.from_data_list([data["train"][i] for i in range(2)]))
    assert out.shape[0] == 2 and torch.isfinite(out).all()


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WSL_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *args], check=False, capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=600)


SMALL = ["+experiment=digits_inr_quick", "data.limit=30", "data.steps=10", "trainer.epochs=1",
         "trainer.progress=false", "data.progress=false"]


def test_single_run_writes_results(tmp_path):
    proc = _run([*SMALL, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert 0.0 <= result["test"]["accuracy"] <= 1.0
    assert (tmp_path / "run" / "metrics.csv").is_file() and (tmp_path / "run" / "curves.png").is_file()
    assert "test: loss=" in proc.stdout


def test_multirun_sweep(tmp_path):
    proc = _run(["-m", *SMALL, "model=gmn,statnn", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted((tmp_path / "sweep").glob("*/result.json"))
    assert len(results) == 2
    models = {json.loads(p.read_text())["config"]["model"]["_target_"] for p in results}
    assert models == {"wsl.nn.GMN", "wsl.nn.StatNN"}
