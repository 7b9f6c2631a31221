"""`wsl prune` (safe, reloadable output; refusals before any work) and `wsl train task=pruning` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

pytest.importorskip("torch_pruning")

from tests.prune.nets import randomize_norms
from wsl.cli import main
from wsl.data.generate.cnn_arch import digits_cnn
from wsl.prune import MetaPruner, layer_widths, load_pruned, prune

ARCH = "module:wsl.data.generate.cnn_arch:digits_cnn(depth=3, width=12, residual=True, norm='batchnorm')"
X = torch.zeros(1, 1, 8, 8)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture()
def ckpt(tmp_path):
    torch.manual_seed(0)
    model = randomize_norms(digits_cnn(depth=3, width=12, residual=True, norm="batchnorm"))
    path = tmp_path / "cnn.safetensors"
    save_file(model.state_dict(), str(path))
    return model, path


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_cli_writes_a_reloadable_pruned_checkpoint(ckpt, tmp_path, capsys, suffix):
    model, path = ckpt
    out = tmp_path / f"small{suffix}"
    assert main(["prune", str(path), "--arch", ARCH, "--input-shape", "1,1,8,8", "--speedup", "2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "speed-up" in printed and "load_pruned" in printed
    side = json.loads((tmp_path / "small.json").read_text())
    assert side["arch"] == ARCH and side["input_shape"] == [1, 1, 8, 8] and side["report"]["speedup"] >= 2.0
    back = load_pruned(out)  # architecture from the sidecar, no pickled module
    want, _ = prune(model, X, 2.0)
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(back(x), want(x))
    assert layer_widths(back) == layer_widths(want) != layer_widths(model)


def test_cli_metanet_rewrites_first(ckpt, tmp_path):
    _, path = ckpt
    meta = MetaPruner.build("GMN", hidden_dim=8, num_layers=1).save(tmp_path / "meta.safetensors")  # zero rewrite
    args = ["prune", str(path), "--arch", ARCH, "--input-shape", "1,1,8,8", "--speedup", "3"]
    assert main([*args, "-o", str(tmp_path / "a.pt")]) == 0
    assert main([*args, "--metanet", str(meta), "-o", str(tmp_path / "b.pt")]) == 0
    a, b = load_pruned(tmp_path / "a.pt"), load_pruned(tmp_path / "b.pt")
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(a(x), b(x))
    assert json.loads((tmp_path / "b.json").read_text())["metanet"] == str(meta)


def test_cli_refuses_bad_arguments_before_doing_work(tmp_path):
    missing = str(tmp_path / "no_such_checkpoint.pt")  # loading it would fail: a refusal must come first
    base = ["prune", missing, "--arch", ARCH]
    for bad, msg in [(["-o", str(tmp_path / "out.json")], "must end in .safetensors, .pt or .pth"),
                     (["-o", str(tmp_path / "nowhere" / "out.pt")], "does not exist"),
                     (["-o", str(tmp_path / "o.pt"), "--speedup", "0.5"], "must be >= 1"),
                     (["-o", str(tmp_path / "o.pt"), "--metanet", str(tmp_path / "m.safetensors")], "no such file")]:
        with pytest.raises(SystemExit, match=msg):
            main([*base, *bad])
    assert sorted(os.listdir(tmp_path)) == []


def test_train_task_pruning_end_to_end(tmp_path, ckpt):
    pytest.importorskip("hydra")
    pytest.importorskip("sklearn")
    run = tmp_path / "run"
    env = {**os.environ, "WSL_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}
    args = ["data=digits_cnn", "data.runs=6", "data.epochs=2", "task=pruning", "trainer.epochs=2",
            "trainer.batch_size=4", "model.hidden_dim=8", "model.num_layers=1", "task.data_batch=32",
            "task.finetune_steps=2", "task.eval_networks=2", "task.eval_speedups=[2.0,3.0]", "trainer.progress=false",
            "data.progress=false", f"hydra.run.dir={run}"]
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train.py"), *args], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    test = json.loads((run / "result.json").read_text())["test"]
    for sp in ("2", "3"):
        assert 0 <= test[f"prune{sp}x_plain"] <= 1 and 0 <= test[f"prune{sp}x_learned"] <= 1
        assert 0 <= test[f"prune{sp}x_win_fraction"] <= 1
    assert test["prune_networks"] >= 1 and "pruned_task_loss" in test and "baseline_pruned_task_loss" in test
    assert "prune2x_win_fraction" in (run / "metrics.csv").read_text()
    pruner = MetaPruner.load(run / "meta_pruner.safetensors")  # what `wsl prune --metanet` reads
    assert pruner.config["target"] == "GMN" and pruner.config["kwargs"]["hidden_dim"] == 8
    _, path = ckpt
    assert main(["prune", str(path), "--arch", ARCH, "--input-shape", "1,1,8,8", "--metanet",
                 str(run / "meta_pruner.safetensors"), "-o", str(tmp_path / "p.safetensors")]) == 0
    assert load_pruned(tmp_path / "p.safetensors")(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_pruning_task_resumes_exactly(tmp_path):
    pytest.importorskip("sklearn")
    from wsl.data.zoos import digits_cnn as digits_zoo
    from wsl.nn import GMN
    from wsl.train import Pruning, fit

    data = digits_zoo(runs=6, epochs=2, root=tmp_path / "zoo", progress=False)
    kw = {"batch_size": 4, "scheduler": None, "seed": 1, "progress": False, "plot": False}

    def task():
        return Pruning(data_batch=32, eval_networks=1, finetune_steps=1, metanet={"_target_": "wsl.nn.GMN",
                                                                                  "hidden_dim": 8, "num_layers": 1})

    def model():
        torch.manual_seed(0)
        return GMN(out_dim=1, hidden_dim=8, num_layers=1)

    full = fit(model(), task(), data, out_dir=tmp_path / "a", epochs=2, **kw)
    fit(model(), task(), data, out_dir=tmp_path / "b", epochs=1, **kw)  # "killed" after one epoch
    resumed = fit(model(), task(), data, out_dir=tmp_path / "b", epochs=2, **kw)
    assert resumed["test"] == full["test"] and "prune2x_learned" in full["test"]
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert MetaPruner.load(tmp_path / "a" / "meta_pruner.safetensors").config["kwargs"] == {"hidden_dim": 8,
                                                                                           "num_layers": 1}
