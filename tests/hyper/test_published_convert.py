"""``wsl convert-hypernet``: a published GHN file -> config.json + model.safetensors, read back exactly, never
half-written."""

from __future__ import annotations

import json
import os

import joblib
import pytest
import torch

from tests.hyper.test_published_files import (
    FIXTURE,
    Payload,
    as_tuple,
    random_state,
    same,
)
from wsl.cli import main
from wsl.hyper import HypernetError
from wsl.hyper.published import is_converted, read_checkpoint, write_converted


@pytest.mark.parametrize("fmt", ["joblib", "ppuda"])
def test_convert_round_trip_is_exact(tmp_path, fmt):
    name = "ghn2_imagenet" if fmt == "ppuda" else "ghn3_t_c10_pretrained"
    sd = random_state(name)
    sd = {k: v.half() if k.startswith("decoder_1d") else v for k, v in sd.items()}  # dtypes are kept
    src = tmp_path / "ghn.pt"
    if fmt == "ppuda":
        torch.save({"state_dict": sd, "config": FIXTURE[name]["config"], "epoch": 7}, src)
    else:
        joblib.dump(sd, src)
    before = read_checkpoint(src)
    out = write_converted(before, tmp_path / "conv")
    assert is_converted(out) and sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    after = read_checkpoint(out)
    same(after.state_dict, sd)
    assert after.config == before.config and after.is_ghn2 == before.is_ghn2
    assert after.config_source == before.config_source
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format"] == "wsl-hypernet" and cfg["kind"] == f"published-{before.family}"
    assert cfg["metadata"]["source"] == "ghn.pt" and len(cfg["metadata"]["source_sha256"]) == 64
    assert cfg["metadata"]["source_format"] == before.format
    if fmt == "ppuda":
        assert after.metadata["epoch"] == 7 and after.config["max_shape"] == tuple(FIXTURE[name]["config"]["max_shape"])
    else:
        assert after.config == as_tuple(FIXTURE[name]["inferred"])


def test_cli_convert_hypernet(tmp_path, capsys):
    joblib.dump(random_state("ghn3_t_c10_pretrained"), tmp_path / "ghn3tm8.pt")
    assert main(["convert-hypernet", str(tmp_path / "ghn3tm8.pt"), "-o", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "ghn3-joblib, GHN3" in printed and "config inferred: hid=32" in printed
    assert is_converted(tmp_path / "out")
    # a second run refuses to overwrite, then --overwrite replaces
    assert main(["convert-hypernet", str(tmp_path / "ghn3tm8.pt"), "-o", str(tmp_path / "out")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["convert-hypernet", str(tmp_path / "ghn3tm8.pt"), "-o", str(tmp_path / "out"), "--overwrite"]) == 0


def test_refused_file_writes_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    sd = random_state("ghn3_t_c10_pretrained")
    sd["x"] = Payload(marker)
    joblib.dump(sd, tmp_path / "evil.pt")
    assert main(["convert-hypernet", str(tmp_path / "evil.pt"), "-o", str(tmp_path / "out")]) == 2
    assert "refused" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not marker.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["evil.pt"]  # no temporary left behind


def test_read_converted_errors(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(HypernetError, match="not a converted hypernetwork"):
        read_checkpoint(tmp_path / "d")
    (tmp_path / "d" / "config.json").write_text(json.dumps({"format": "wsl-hypernet", "kind": "ghn2"}))
    (tmp_path / "d" / "model.safetensors").write_bytes(b"")
    with pytest.raises(HypernetError, match="not a converted published GHN"):
        read_checkpoint(tmp_path / "d")
