"""The ``wsl predict`` subcommand function (wsl.hyper.cli)."""

from __future__ import annotations

import argparse
import json

import pytest
from safetensors.torch import load_file

from wsl.hyper.cli import add_predict_parser


def _run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="wsl")
    add_predict_parser(p.add_subparsers(dest="command", required=True))
    a = p.parse_args(argv)
    return a.func(a)


def test_predict_writes_state_dict_and_report(tmp_path, capsys) -> None:
    out, rep = tmp_path / "p.safetensors", tmp_path / "r.json"
    assert _run(["predict", "--arch", "module:wsl.hyper.sampler:demo_cnn", "-o", str(out), "--report", str(rep)]) == 0
    sd = load_file(str(out))
    report = json.loads(rep.read_text())
    assert set(report["predicted"]) | set(report["buffers"]) == set(sd)
    printed = capsys.readouterr().out
    assert "predicted" in printed
    # demo_cnn has BatchNorm: the reset statistics are a warning, printed and in the report
    assert "  warning: running statistics of 2 normalization layers were reset" in printed
    assert any("calibrate_norm_stats" in w for w in report["warnings"])


def test_list_and_missing_arch(capsys) -> None:
    assert _run(["predict", "--list"]) == 0
    assert "ghn2-digits" in capsys.readouterr().out
    with pytest.raises(ValueError, match="needs --arch"):
        _run(["predict"])


def test_output_checked_before_the_work_and_no_silent_discard(tmp_path, capsys) -> None:
    arch = "module:wsl.hyper.sampler:demo_cnn"
    with pytest.raises(SystemExit, match=r"name the file \*\.safetensors"):
        _run(["predict", "--arch", arch, "-o", str(tmp_path / "p.pt")])
    with pytest.raises(SystemExit, match="does not exist"):
        _run(["predict", "--arch", arch, "-o", str(tmp_path / "no" / "p.safetensors")])
    assert capsys.readouterr().out == ""  # refused before predicting anything
    assert _run(["predict", "--arch", arch]) == 0
    assert "nothing written: pass -o FILE.safetensors" in capsys.readouterr().out
