"""predict_parameters does not return a doubtful prediction silently: report.warnings + one UserWarning."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from torch import nn

from wsl.hyper import calibrate_norm_stats, predict_parameters
from wsl.hyper.checks import output_warnings
from wsl.hyper.sampler import demo_cnn


def test_resnet18_from_digits_ghn_is_flagged_with_what_to_do():
    # the case users hit: the packaged 8x8-digits GHN on an ImageNet ResNet; eval-mode outputs explode because
    # BatchNorm statistics were reset, and batch statistics would fix them
    with pytest.warns(UserWarning, match="exploding outputs"):
        model, report = predict_parameters(torchvision.models.resnet18(), "ghn2-digits",
                                           example_inputs=torch.zeros(1, 3, 32, 32))
    text = "\n".join(report.warnings)
    assert "input shape [1, 3, 32, 32] differs from the hypernetwork's training inputs [1, 1, 8, 8]" in text
    assert "with more channels than the decoder's tile (64 out x 64 in) were tiled (e.g. layer2.0.conv1.weight " \
           "(128, 64, 3, 3))" in text
    assert "running statistics of 20 normalization layers were reset" in text
    explode = next(w for w in report.warnings if "exploding outputs" in w)
    assert "with batch statistics" in explode and "calibrate_norm_stats" in explode
    assert "warnings" in report.to_dict() and "warning: " in str(report)
    # the probe left the (reset) running statistics as they were
    assert all(float(m.running_mean.abs().max()) == 0 and float((m.running_var - 1).abs().max()) == 0
               and int(m.num_batches_tracked) == 0 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    # the advice works: after recomputing the statistics the eval-mode outputs are moderate
    gen = torch.Generator().manual_seed(0)
    calibrate_norm_stats(model, [torch.randn(8, 3, 32, 32, generator=gen) for _ in range(4)])
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32, generator=gen)).abs().max() < 1e3
    assert output_warnings(model, (torch.zeros(1, 3, 32, 32),), {}) == []


def test_in_scope_prediction_has_no_warning():
    # a small digits CNN without normalization layers, at the input size the packaged GHN was trained on
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, report = predict_parameters(model, "ghn2-digits", example_inputs=torch.zeros(1, 1, 8, 8))
    assert report.warnings == []
    with pytest.warns(UserWarning, match="running statistics of 2 normalization layers were reset"):
        predict_parameters(demo_cnn(), "ghn2-digits", example_inputs=torch.zeros(1, 1, 8, 8))


class Fragile(nn.Module):
    """Finite weights, but a forward that turns any ordinary weights into nan (sqrt of negative values)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return torch.sqrt(self.fc(x.flatten(1)) - 1e3)


def test_non_finite_outputs_are_flagged():
    with pytest.warns(UserWarning, match="non-finite outputs"):
        _, report = predict_parameters(Fragile(), "ghn2-digits", example_inputs=torch.zeros(1, 1, 8, 8))
    w = next(w for w in report.warnings if "non-finite" in w)
    assert "not a usable initialization" in w  # no normalization layer: no statistics advice


def test_check_false_is_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, report = predict_parameters(Fragile(), "ghn2-digits", example_inputs=torch.zeros(1, 1, 8, 8),
                                       check=False)
    assert report.warnings == []
