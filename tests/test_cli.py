"""The ``wsl`` command line: convert, inspect (table and plot), demo, and its error handling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import wsl
from wsl.cli import main
from wsl.graph.serialize import load_graph


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


ARCH = "module:tests.test_cli:tiny"
ROOT = Path(__file__).resolve().parents[1]


def test_convert_then_inspect(tmp_path, capsys) -> None:
    ckpt = tmp_path / "m.safetensors"
    save_file(tiny().state_dict(), str(ckpt))
    out = tmp_path / "g.pt"
    assert main(["convert", str(ckpt), "--arch", ARCH, "--input-shape", "1,3,8,8", "-o", str(out)]) == 0
    graph = load_graph(out)
    ref = tiny().state_dict()
    assert all(torch.equal(graph.to_state_dict()[k], v) for k, v in ref.items())
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    n_params = sum(v.numel() for v in ref.values())
    assert f"parameters            {n_params:,}" in text
    assert f"nodes                 {graph.num_nodes:,}" in text
    assert "S_4" in text  # the hidden channels form one free permutation class
    assert "positive scale" in text  # conv -> ReLU -> (avg pool) -> linear


def test_inspect_checkpoint_with_arch_and_plot(tmp_path, capsys) -> None:
    ckpt = tmp_path / "m.pt"
    torch.save(tiny().state_dict(), ckpt)
    png = tmp_path / "g.png"
    assert main(["inspect", str(ckpt), "--arch", ARCH, "--input-shape", "1,3,8,8", "--plot", str(png)]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_inspect_checkpoint_without_arch_says_what_to_do(tmp_path, capsys) -> None:
    ckpt = tmp_path / "m.pt"
    torch.save(tiny().state_dict(), ckpt)
    try:
        main(["inspect", str(ckpt)])
    except SystemExit as e:
        assert "--arch" in str(e)
    else:  # pragma: no cover
        raise AssertionError("expected an error asking for --arch")


def test_plot_draws_a_summary_of_big_graphs(tmp_path, monkeypatch) -> None:
    """Above MAX_NODES / MAX_EDGES one marker per neuron set and one line per connected pair of sets."""
    import matplotlib.axes

    from wsl.graph import plot

    big = nn.Sequential(nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 3))
    graph = wsl.to_graph(big, example_inputs=torch.randn(2, 200))
    assert graph.edge_index.shape[1] > plot.MAX_EDGES
    drawn = []
    real = matplotlib.axes.Axes.scatter
    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", lambda ax, x, y, **kw: drawn.append(len(x)) or real(ax, x, y, **kw))
    plot.plot_graph(graph, tmp_path / "x.png")
    assert (tmp_path / "x.png").stat().st_size > 1000
    assert sum(drawn) == len(graph.spec.sets) == 4  # input, two hidden layers, output: not 603 neurons
    small = wsl.to_graph(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), example_inputs=torch.randn(2, 3))
    drawn.clear()
    plot.plot_graph(small, tmp_path / "y.png")
    assert sum(drawn) == small.num_nodes  # small networks: every neuron


def test_convert_errors_exit_2(tmp_path, capsys) -> None:
    ckpt = tmp_path / "m.safetensors"
    sd = tiny().state_dict()
    sd["4.weight"] = torch.zeros(3, 4)
    save_file(sd, str(ckpt))
    assert main(["convert", str(ckpt), "--arch", ARCH, "-o", str(tmp_path / "g.pt")]) == 2
    assert "4.weight" in capsys.readouterr().err
    assert main(["convert", str(ckpt), "--arch", "torchvision:no_such_model", "-o", str(tmp_path / "g.pt")]) == 2


def test_demo_runs(tmp_path, capsys) -> None:
    out = tmp_path / "demo.safetensors"
    png = tmp_path / "demo.png"
    assert main(["demo", "--arch", "torchvision:resnet18", "--size", "32", "-o", str(out), "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert "round trip bit-exact: True" in text
    assert out.exists() and png.exists()
    assert f"({out.stat().st_size / 1e6:.1f} MB" in text  # the file's size is announced


def test_inspect_of_a_text_file_or_directory_explains_instead_of_crashing(tmp_path) -> None:
    import pytest

    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(SystemExit, match=r"notes.txt cannot be read as a graph file .*pass --arch"):
        main(["inspect", str(text)])
    with pytest.raises(SystemExit, match=r"is a directory, not a graph file.*pass --arch"):
        main(["inspect", str(tmp_path)])
    with pytest.raises(SystemExit, match="no such file or directory"):
        main(["inspect", str(tmp_path / "missing.pt")])


def test_inspect_marks_truncated_group_names() -> None:
    from wsl.cli import format_table

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Linear(4, 8)
            self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(12))
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            x = self.stem(x)
            for b in self.blocks:
                x = x + b(x)
            return self.head(x)

    text = format_table(wsl.to_graph(Residual(), example_inputs=torch.randn(2, 4)))
    line = next(ln for ln in text.splitlines() if "blocks.11" in ln or "... (" in ln)
    assert "... (" in line and "sets)" in line and len(line) < 140


def test_parameter_count_excludes_normalization_statistics() -> None:
    from wsl.cli import format_table

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
    graph = wsl.to_graph(model, example_inputs=torch.randn(2, 3, 8, 8))
    learnable = sum(p.numel() for p in model.parameters())
    assert graph.spec.num_parameters == learnable and graph.spec.num_statistics == 8  # running mean + var
    assert f"parameters            {learnable:,} (+ 8 normalization statistics)" in format_table(graph)


def test_one_finiteness_policy_for_state_dicts_files_and_the_cli(tmp_path, capsys) -> None:
    import pytest

    sd = tiny().state_dict()
    sd["0.weight"] = sd["0.weight"].clone()
    sd["0.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(wsl.CheckpointError, match=r"'0.weight' \(1 NaN.*check_finite=False.*--allow-non-finite"):
        wsl.to_graph(sd, arch=tiny(), example_inputs=torch.zeros(1, 3, 8, 8))
    g = wsl.to_graph(sd, arch=tiny(), example_inputs=torch.zeros(1, 3, 8, 8), check_finite=False)
    assert torch.isnan(g.to_state_dict()["0.weight"]).sum() == 1
    ckpt, out = tmp_path / "nan.safetensors", tmp_path / "g.pt"
    save_file(sd, str(ckpt))
    capsys.readouterr()
    assert main(["convert", str(ckpt), "--arch", ARCH, "--input-shape", "1,3,8,8", "-o", str(out)]) == 2
    assert "--allow-non-finite" in capsys.readouterr().err and not out.exists()
    assert main(["convert", str(ckpt), "--arch", ARCH, "--input-shape", "1,3,8,8", "-o", str(out),
                 "--allow-non-finite"]) == 0


def test_help_and_import_stay_light():
    """`import wsl` and `wsl --help` import neither torch nor torch-geometric (help in well under a second);
    the public names still resolve, `wsl.merge` stays the function even after `wsl.merging` is imported."""
    code = ("import sys, wsl, wsl.cli, wsl.hyper; wsl.cli.build_parser(); "
            "heavy = [m for m in ('torch', 'torch_geometric', 'hydra') if m in sys.modules]; "
            "assert not heavy, heavy; "
            "import wsl.merging; assert callable(wsl.merge) and wsl.merge is wsl.merging.merge; "
            "assert wsl.to_graph.__module__ == 'wsl.graph.convert'; "
            "assert wsl.hyper.GHN2.__name__ == 'GHN2' and 'verify_symmetries' in dir(wsl); "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        wsl.no_such_name  # noqa: B018
