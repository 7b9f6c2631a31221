"""Guessed example inputs: standard shapes tried in turn, checked before tracing, and a clear error naming the
shapes tried when none fits (library and CLI)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import wsl
from wsl.cli import main
from wsl.graph.inputs import candidate_inputs, default_inputs


def lenet() -> nn.Module:
    """LeNet-5 on 32x32 images: its Flatten -> Linear(400) does not run on the first guess (224x224)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 10))


class SeqModel(nn.Module):
    """Reads [batch, seq, features] (a mean over the sequence), so a [batch, features] guess does not run."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(5, 7), nn.Linear(7, 2)

    def forward(self, x):
        return self.out(torch.relu(self.inp(x)).mean(dim=1))


def unguessable() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 5 * 5, 2))  # 7x7 images: no guess


@pytest.mark.parametrize("build, shape", [(lenet, (1, 1, 32, 32)), (SeqModel, (1, 4, 5))])
def test_later_guesses_are_used_when_the_first_does_not_run(build, shape):
    model = build()
    assert tuple(candidate_inputs(model)[0][0].shape) != shape  # the first guess would fail
    (x,) = default_inputs(model)
    assert tuple(x.shape) == shape
    graph = wsl.to_graph(model)
    for k, v in model.state_dict().items():
        assert torch.equal(graph.to_state_dict()[k], v)
    assert model.training  # modes are left as they were


def test_no_guess_fits_names_the_shapes_and_the_options():
    with pytest.raises(wsl.ConversionError) as info:
        wsl.to_graph(unguessable())
    msg = str(info.value)
    assert "Sequential" in msg and "(1, 3, 224, 224)" in msg and "(1, 3, 32, 32)" in msg
    assert "shapes cannot be multiplied" in msg  # the model's own error, for the first guess
    assert "example_inputs=" in msg and "--input-shape" in msg

    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.p

    with pytest.raises(wsl.ConversionError, match="no Linear, convolution, embedding or attention layer"):
        wsl.to_graph(Scale())


def test_cli_reports_an_unguessable_input_in_one_line(tmp_path, capsys):
    ckpt = tmp_path / "m.safetensors"
    save_file(unguessable().state_dict(), str(ckpt))
    out = tmp_path / "g.pt"
    code = main(["convert", str(ckpt), "--arch", "module:tests.graph.test_inputs:unguessable", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.startswith("wsl: error: cannot guess an example input") and "--input-shape" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["convert", str(ckpt), "--arch", "module:tests.graph.test_inputs:unguessable",
                 "--input-shape", "1,3,7,7", "-o", str(out)]) == 0
    assert out.exists()


def test_cli_turns_a_model_error_into_exit_2(tmp_path, capsys, monkeypatch):
    """An --input-shape the model cannot run: one line naming the model's error, exit 2, nothing written;
    WSL_DEBUG=1 shows the traceback."""
    ckpt = tmp_path / "m.safetensors"
    save_file(unguessable().state_dict(), str(ckpt))
    out = tmp_path / "g.pt"
    argv = ["convert", str(ckpt), "--arch", "module:tests.graph.test_inputs:unguessable", "--input-shape",
            "1,3,9,9", "-o", str(out)]
    assert main(argv) == 2 and not out.exists()
    err = capsys.readouterr().err.strip()
    assert err.startswith("wsl: error: RuntimeError: ") and "WSL_DEBUG=1" in err and len(err.splitlines()) == 1
    monkeypatch.setenv("WSL_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(argv)
