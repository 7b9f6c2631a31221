"""Adapting ImageNet classifiers to 1x8x8 digits (stem rewrite), and predicting their parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wsl.hyper.adapt import adapt_to_small_inputs, torchvision_for_inputs

torchvision = pytest.importorskip("torchvision")


@pytest.mark.parametrize("name", ["resnet18", "squeezenet1_1", "mobilenet_v3_small", "densenet121"])
def test_adapted_torchvision_runs_on_8x8(name: str) -> None:
    m = torchvision_for_inputs(name, in_channels=1, num_classes=10).eval()
    stem_path = next(p for p, mod in m.named_modules() if isinstance(mod, nn.Conv2d))
    stem = m.get_submodule(stem_path)
    assert stem.in_channels == 1 and stem.stride == (1, 1) and stem_path in m.adapted
    sizes = []
    hook = stem.register_forward_hook(lambda mod, i, o: sizes.append(tuple(o.shape[-2:])))
    with torch.no_grad():
        y = m(torch.randn(2, 1, 8, 8))
    hook.remove()
    assert y.shape == (2, 10) and sizes == [(8, 8)]


def test_stem_pool_removed_only_before_second_conv() -> None:
    m = torchvision.models.resnet18(num_classes=10)
    done = adapt_to_small_inputs(m, 1)
    assert isinstance(m.maxpool, nn.Identity) and "maxpool" in done
    # a pool after the second conv is kept
    net = nn.Sequential(nn.Conv2d(3, 4, 7, 2, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.MaxPool2d(2))
    done = adapt_to_small_inputs(net, 1)
    assert isinstance(net[3], nn.MaxPool2d) and list(done) == ["0"]
    assert net[0].kernel_size == (3, 3) and net[0].padding == (1, 1)


def test_no_conv_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="Sequential has no nn.Conv2d"):
        adapt_to_small_inputs(nn.Sequential(nn.Linear(4, 4)))


def test_predict_parameters_for_adapted_model() -> None:
    from wsl.hyper import predict_parameters

    m = torchvision_for_inputs("resnet18")
    m2, report = predict_parameters(m, hypernet="ghn2-digits", example_inputs=torch.zeros(1, 1, 8, 8))
    assert set(report.predicted) == {k for k, _ in m2.named_parameters()}
    with torch.no_grad():
        assert torch.isfinite(m2.eval()(torch.randn(3, 1, 8, 8))).all()
