"""Every torchvision classification model: bit-exact round trip, symmetry invariance, sensitivity."""

from __future__ import annotations

import pytest
import torch

torchvision = pytest.importorskip("torchvision")

from .zoo_check import check_zoo_model

MODELS = torchvision.models.list_models(module=torchvision.models)
FIXED_SIZE = {"vit_": 224, "maxvit": 224, "swin": 224, "inception_v3": 299}
# models whose test takes long on 2 CPU cores (size / input resolution); run by .ci/run via -m "slow or not slow"
SLOW_PREFIX = ("vit_", "maxvit", "swin_b", "swin_s", "swin_v2_b", "swin_v2_s", "vgg", "regnet_y_32gf", "regnet_y_16gf",
               "regnet_x_32gf", "regnet_x_16gf", "convnext_large", "convnext_base", "efficientnet_b6",
               "efficientnet_b7", "efficientnet_v2_l", "efficientnet_v2_m", "resnext101", "wide_resnet101",
               "resnet152", "inception_v3", "densenet161", "densenet201", "alexnet")
HUGE = ("regnet_y_128gf", "vit_h_14")  # > 600M parameters: need more memory than a 24 GiB machine leaves


def test_all_models_listed() -> None:
    assert len(MODELS) == 80


def _size(name: str) -> int:
    return next((v for k, v in FIXED_SIZE.items() if name.startswith(k)), 64)


def _params(name: str) -> list:
    out = []
    for n in MODELS:
        marks = []
        if n.startswith(SLOW_PREFIX) or n in HUGE:
            marks.append(pytest.mark.slow)
        out.append(pytest.param(n, marks=marks, id=n))
    return out


@pytest.mark.parametrize("name", _params("x"))
def test_torchvision_model(name: str) -> None:
    if name in HUGE:
        pytest.skip(f"{name}: over 600M parameters; the float64 check needs more than 24 GiB of memory")
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    s = _size(name)
    # BatchNorm statistics from 8 images (4 at full resolution): fewer leave some gains huge and make deep
    # networks numerically chaotic (efficientnet_v2_l then amplifies 1e-12 weight noise to 1e-5 relative)
    check_zoo_model(model, torch.randn(1, 3, s, s), calibrate=torch.randn(8 if s <= 64 else 4, 3, s, s))
