"""Bad input: unsupported modules, and every checkpoint problem surfaced through ``to_graph``."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import wsl


def small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


class Einsum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bi,ji->bj", x, self.w)


def test_unsupported_parameter_use_names_module_path_type_and_param() -> None:
    model = nn.Sequential(nn.Linear(3, 3), Einsum())
    with pytest.raises(wsl.ConversionError) as e:
        wsl.to_graph(model, example_inputs=torch.randn(2, 3))
    msg = str(e.value)
    assert "'1'" in msg and "Einsum" in msg and "1.w" in msg and "einsum" in msg
    assert "linear" in msg  # lists what is supported


def test_computed_weight_is_refused_with_a_fix() -> None:
    model = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(3, 3)))
    with pytest.raises(wsl.ConversionError, match="remove_parametrizations"):
        wsl.to_graph(model, example_inputs=torch.randn(2, 3))


def test_token_mixing_layout_is_refused() -> None:
    class Mixer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.channel = nn.Linear(4, 4)
            self.token = nn.Linear(5, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.channel(x)  # (B, T, C): neurons along C
            return self.token(x.transpose(1, 2))  # mixes along T while C still holds neurons

    with pytest.raises(wsl.ConversionError, match="token-mixing"):
        wsl.to_graph(Mixer(), example_inputs=torch.randn(2, 5, 4))


def test_state_dict_needs_arch() -> None:
    with pytest.raises(ValueError, match="arch="):
        wsl.to_graph(small().state_dict())


def test_missing_unexpected_and_wrong_shape_name_the_tensor(tmp_path) -> None:
    model = small()
    sd = model.state_dict()
    missing = {k: v for k, v in sd.items() if k != "2.bias"}
    with pytest.raises(wsl.CheckpointError, match=r"2\.bias"):
        wsl.to_graph(missing, arch=model)
    unexpected = dict(sd, extra=torch.zeros(1))
    with pytest.raises(wsl.CheckpointError, match="extra"):
        wsl.to_graph(unexpected, arch=model)
    wrong = dict(sd)
    wrong["0.weight"] = torch.zeros(5, 3)
    path = tmp_path / "wrong.safetensors"
    save_file(wrong, str(path))
    with pytest.raises(wsl.CheckpointError) as e:
        wsl.to_graph(path, arch=model)
    assert "0.weight" in str(e.value) and str(path) in str(e.value)


def test_nan_and_inf_weights_are_refused(tmp_path) -> None:
    model = small()
    for bad in (float("nan"), float("inf")):
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        sd["2.weight"][0, 0] = bad
        path = tmp_path / "bad.pt"
        torch.save(sd, path)
        with pytest.raises(wsl.CheckpointError) as e:
            wsl.to_graph(path, arch=model)
        assert "2.weight" in str(e.value) and str(path) in str(e.value)


def test_truncated_and_corrupt_files(tmp_path) -> None:
    model = small()
    for suffix in (".safetensors", ".pt"):
        path = tmp_path / f"m{suffix}"
        if suffix == ".pt":
            torch.save(model.state_dict(), path)
        else:
            save_file(model.state_dict(), str(path))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(wsl.CheckpointError, match="truncated|corrupt"):
            wsl.to_graph(path, arch=model)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x13not a checkpoint" * 10)
    with pytest.raises(wsl.CheckpointError, match="junk.bin"):
        wsl.to_graph(junk, arch=model)


class Payload:
    """A class whose pickle needs code execution to load."""

    def __init__(self) -> None:
        self.state = {"0.weight": torch.zeros(4, 3)}


def test_code_executing_pickle_is_refused_and_opt_in_works(tmp_path) -> None:
    model = small()
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": model.state_dict(), "extra": Payload()}, path, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(wsl.CheckpointError, match="allow_pickle"):
        wsl.to_graph(path, arch=model)
    graph = wsl.to_graph(path, arch=model, allow_pickle=True)
    assert torch.equal(graph.to_state_dict()["0.weight"], model.state_dict()["0.weight"])


def test_nested_and_prefixed_checkpoints_convert(tmp_path) -> None:
    model = small()
    sd = model.state_dict()
    for i, payload in enumerate(({"state_dict": sd}, {"model": sd, "epoch": 3},
                                 {f"module.{k}": v for k, v in sd.items()})):
        path = tmp_path / f"n{i}.pt"
        torch.save(payload, path)
        graph = wsl.to_graph(path, arch=model)
        assert all(torch.equal(graph.to_state_dict()[k], v) for k, v in sd.items())


def test_hf_directory_checkpoint(tmp_path) -> None:
    model = small()
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    graph = wsl.to_graph(tmp_path, arch=model)
    assert all(torch.equal(graph.to_state_dict()[k], v) for k, v in model.state_dict().items())


def test_graph_of_other_arch_cannot_be_written_back() -> None:
    graph = wsl.to_graph(small(), example_inputs=torch.randn(2, 3))
    other = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(wsl.ConversionError, match="does not fit"):
        wsl.from_graph(graph, other)


def test_conversion_writes_nothing_on_failure(tmp_path) -> None:
    from wsl.cli import main

    out = tmp_path / "g.pt"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert main(["convert", str(bad), "--arch", "module:tests.graph.test_errors:small", "-o", str(out)]) == 2
    assert not out.exists() and not (tmp_path / "g.pt.tmp").exists()
