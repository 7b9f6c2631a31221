"""The training loop: a run stopped after some epochs and resumed ends exactly like an uninterrupted one."""

from __future__ import annotations

import pytest
import torch

from wsl.data.generate import DigitsINRConfig
from wsl.data.zoos import digits_inr
from wsl.nn import GMN
from wsl.train import Classification, CSVLogger, fit

pytest.importorskip("sklearn")


def test_resume_matches_uninterrupted(tmp_path):
    cfg = DigitsINRConfig(limit=30, steps=20)
    data = digits_inr(limit=cfg.limit, steps=cfg.steps, root=tmp_path / "zoo", progress=False)
    kw = {"batch_size": 8, "scheduler": None, "seed": 3, "progress": False, "plot": False}

    def model():
        torch.manual_seed(0)
        return GMN(out_dim=10, hidden_dim=8, num_layers=1, dropout=0.1)

    full = fit(model(), Classification(), data, out_dir=tmp_path / "a", epochs=3, **kw)
    fit(model(), Classification(), data, out_dir=tmp_path / "b", epochs=2, **kw)  # "killed" after epoch 2
    resumed = fit(model(), Classification(), data, out_dir=tmp_path / "b", epochs=3,
                  logger=CSVLogger(tmp_path / "b"), **kw)
    assert resumed["epochs_run"] == full["epochs_run"] == 3
    assert resumed["test"] == full["test"]
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((tmp_path / "b").glob("*.tmp"))
