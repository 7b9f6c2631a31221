"""``build_arch``: architecture strings with constructor keywords, user modules from the current directory."""

from __future__ import annotations

import sys

import pytest
from torch import nn

from wsl.arch import build_arch


def test_constructor_keywords_reach_the_constructor() -> None:
    assert build_arch("torchvision:resnet18(num_classes=10)").fc.out_features == 10
    assert build_arch("torchvision:resnet18").fc.out_features == 1000


def test_module_function_with_keywords_from_the_current_directory(tmp_path, monkeypatch) -> None:
    (tmp_path / "my_nets_for_wsl.py").write_text(
        "from torch import nn\n\ndef mlp(width=4, depth=1):\n"
        "    return nn.Sequential(nn.Linear(2, width), *[nn.Linear(width, width) for _ in range(depth)])\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    model = build_arch("module:my_nets_for_wsl:mlp(width=7, depth=2)")
    assert isinstance(model, nn.Sequential) and model[0].out_features == 7 and len(model) == 3


@pytest.mark.parametrize("bad", ["torchvision:resnet18(10)", "torchvision:resnet18(num_classes=int(3))",
                                 "torchvision:resnet18(num_classes=__import__('os').getpid())"])
def test_only_keyword_literals_are_accepted(bad: str) -> None:
    with pytest.raises(ValueError, match="keyword literals"):
        build_arch(bad)
