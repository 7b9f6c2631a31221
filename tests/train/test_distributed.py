"""A 2-process torchrun (gloo, CPU) run of ``fit`` trains the same model as a single-process run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from wsl.train import Classification, fit
from wsl.train.distributed import Dist, local_part

pytest.importorskip("sklearn")

SCRIPT = textwrap.dedent("""
    import sys, torch
    from wsl.data.zoos import digits_inr
    from wsl.nn import GMN
    from wsl.train import Classification, fit

    root, out, norm = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    data = digits_inr(limit=30, steps=20, root=root, progress=False)
    torch.manual_seed(0)
    model = GMN(out_dim=10, hidden_dim=8, num_layers=2, norm=norm, edge_norm="none" if norm == "layer" else norm)
    res = fit(model, Classification(), data, out_dir=out, epochs=2, batch_size=7, seed=5, scheduler="cosine",
              progress=False, plot=False)
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, out + f"/final-{torch.distributed.get_rank()}.pt")
""")


def test_local_parts_cover_the_batch_once():
    batch = list(range(11))
    parts = [local_part(batch, Dist(r, 3)) for r in range(3)]
    assert sorted(x for p in parts for x in p) == batch
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_torchrun_two_processes_match_single_process(tmp_path):
    from wsl.data.zoos import digits_inr
    from wsl.nn import GMN

    root = tmp_path / "zoo"
    data = digits_inr(limit=30, steps=20, root=root, progress=False)  # built once, reused by the workers
    torch.manual_seed(0)
    single = GMN(out_dim=10, hidden_dim=8, num_layers=2, norm="layer", edge_norm="none")  # no batch statistics
    # batch_size 7 over 24 training graphs: the last global batch (3) splits 2 / 1 — uneven on purpose
    ref = fit(single, Classification(), data, out_dir=tmp_path / "single", epochs=2, batch_size=7, seed=5,
              scheduler="cosine", progress=False, plot=False, distributed=False)

    script = tmp_path / "worker.py"
    script.write_text(SCRIPT)
    out = tmp_path / "ddp"
    out.mkdir()
    proc = _torchrun(script, root, out, "layer")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    finals = [torch.load(out / f"final-{r}.pt", weights_only=True) for r in range(2)]
    want = single.state_dict()
    for k, v in want.items():
        assert torch.equal(finals[0][k], finals[1][k]), f"ranks disagree on {k}"
        torch.testing.assert_close(finals[0][k], v, rtol=1e-4, atol=1e-5, msg=f"{k} differs from single-process")
    # the model did train (it moved away from its initialisation), so agreement is not trivial
    torch.manual_seed(0)
    init = GMN(out_dim=10, hidden_dim=8, num_layers=2, norm="layer", edge_norm="none").state_dict()
    assert any((init[k] - v).abs().max() > 1e-3 for k, v in want.items() if v.is_floating_point())
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["state"]["epoch"] == 2
    assert abs(saved["state"]["history"][-1]["train_loss"] - torch.load(
        tmp_path / "single" / "last.pt", weights_only=True)["state"]["history"][-1]["train_loss"]) < 1e-4
    assert (out / "final-1.pt").stat().st_size != 0 and ref["epochs_run"] == 2


def _torchrun(script, root, out, norm: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(root), str(out), norm], check=False, capture_output=True, text=True,
                          env=env, timeout=300)


def test_torchrun_with_batchnorm_keeps_ranks_identical(tmp_path):
    """BatchNorm (GMN's default) normalizes per rank; running statistics are averaged, so ranks stay equal."""
    from wsl.data.zoos import digits_inr

    root = tmp_path / "zoo"
    digits_inr(limit=30, steps=20, root=root, progress=False)
    script = tmp_path / "worker.py"
    script.write_text(SCRIPT)
    out = tmp_path / "ddp"
    out.mkdir()
    proc = _torchrun(script, root, out, "batch")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    finals = [torch.load(out / f"final-{r}.pt", weights_only=True) for r in range(2)]
    stats = [k for k in finals[0] if k.endswith("running_mean")]
    assert stats, "the default GMN should hold BatchNorm running statistics"
    for k in finals[0]:
        assert torch.equal(finals[0][k], finals[1][k]), f"ranks disagree on {k}"
    assert any(float(finals[0][k].abs().max()) > 0 for k in stats)  # statistics were collected
