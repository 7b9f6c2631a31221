"""predict_parameters / wsl predict with a published GHN file or a converted directory (#14)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file

from wsl.cli import main
from wsl.hyper import HypernetError, from_pretrained, predict_parameters
from wsl.hyper.published import PublishedGHN2, read_checkpoint, write_converted

HERE = Path(__file__).parents[1] / "fixtures" / "published_ghn"
_spec = importlib.util.spec_from_file_location("ghn2_models", HERE / "ghn2_models.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)
GOLDEN = json.loads((HERE / "ghn2_golden.json").read_text())


@pytest.fixture(scope="module")
def ghn2_file(tmp_path_factory) -> Path:
    entry = GOLDEN["configs"]["imagenet"]
    path = tmp_path_factory.mktemp("pub") / "ghn2_imagenet.pt"
    torch.save({"state_dict": fx.seeded_state_dict(entry["state_dict_shapes"], entry["seed"]),
                "config": entry["config"], "epoch": 0}, path)
    return path


def test_predict_parameters_from_a_ppuda_file(ghn2_file):
    model = torchvision.models.resnet18()
    with pytest.warns(UserWarning, match="running statistics of 20 normalization layers were reset"):
        out, report = predict_parameters(model, ghn2_file, example_inputs=torch.zeros(1, 3, 224, 224))
    assert report.complete and not report.not_predicted
    expected = PublishedGHN2.from_checkpoint(ghn2_file).predict(torchvision.models.resnet18())  # same as reference
    got = dict(out.named_parameters())
    for k, w in expected.items():
        assert torch.equal(got[k], w), k
    assert "tiled beyond max_shape (64, 64, 11, 11)" in report.predicted["layer4.0.conv1.weight"]
    assert all("reset" in v for k, v in report.buffers.items() if "running" in k)
    assert model.conv1.weight.data_ptr() != out.conv1.weight.data_ptr()  # a copy unless inplace=True


def test_unpredicted_parameters_are_reported(ghn2_file):
    model = torchvision.models.convnext_tiny()
    _, report = predict_parameters(model, ghn2_file, check=False)
    assert report.complete
    scale = [k for k in report.not_predicted if "layer_scale" in k]
    assert len(scale) == 18 and "kept its current value" in report.not_predicted[scale[0]]


def test_converted_directory_predicts_identically(ghn2_file, tmp_path):
    conv = write_converted(read_checkpoint(ghn2_file), tmp_path / "ghn2")
    model = fx.build("tiny")
    a, _ = predict_parameters(model, ghn2_file, check=False)
    b, _ = predict_parameters(model, conv, check=False)
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k


def test_cli_predict_with_published_file(ghn2_file, tmp_path, capsys):
    out = tmp_path / "pred.safetensors"
    assert main(["predict", "--arch", "torchvision:resnet18", "--hypernet", str(ghn2_file), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "predicted 62 tensors" in printed and "warning: running statistics" in printed
    assert load_file(str(out))["conv1.weight"].shape == (64, 3, 7, 7)


def test_reference_refusals_are_clear(ghn2_file):
    with pytest.raises(HypernetError, match="VisionTransformer"):
        predict_parameters(torchvision.models.vit_b_16(), ghn2_file)


def test_from_pretrained_loads_published_files_and_converted_directories(ghn2_file, tmp_path):
    conv = write_converted(read_checkpoint(ghn2_file), tmp_path / "ghn2")
    a, b = from_pretrained(ghn2_file), from_pretrained(conv)
    assert isinstance(a, PublishedGHN2) and isinstance(b, PublishedGHN2) and not a.training
    pa, pb = a.predict(fx.build("tiny")), b.predict(fx.build("tiny"))
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    with pytest.raises(HypernetError, match="not a packaged name.*convert-hypernet.*published GHN file"):
        from_pretrained(tmp_path / "missing.pt")
