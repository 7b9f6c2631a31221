"""`wsl train-ghn`: every hypernet option trains a few steps through Hydra and writes a loadable hypernetwork."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("hydra")
pytest.importorskip("sklearn")

from wsl.train.entry import CONFIG_DIR

OPTIONS = sorted(p.stem for p in (CONFIG_DIR / "hypernet").glob("*.yaml"))


@pytest.mark.parametrize("option", OPTIONS)
def test_train_ghn_option(option: str, tmp_path: Path) -> None:
    from wsl.hyper import from_pretrained, sample_architectures
    from wsl.hyper.sampler import IN_SHAPE

    out = tmp_path / option
    cmd = [sys.executable, "-m", "wsl.cli", "train-ghn", f"hypernet={option}", "steps=3", "meta_batch=2",
           "batch_size=16", "log_every=1", "eval_archs=2", f"hydra.run.dir={out}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 3 and len(result["history"]) == 3 and 0.0 <= result["test_arch_mean_acc"] <= 1.0
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step") and len(rows) >= 4  # header + one row per logged step (+ final eval)
    hn = from_pretrained(out / "hypernet")
    torch.manual_seed(0)
    model = sample_architectures(1, "test", torch.Generator().manual_seed(3))[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hn.predict_into(model, torch.zeros(1, *IN_SHAPE))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result["config"]["hypernet"]["_target_"].startswith("wsl.hyper.")
