"""Small networks and digit classifiers for the pruning tests (trained in seconds)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResCNN(nn.Module):
    """conv-BN-ReLU stem, one residual block (two conv-BN), a strided conv-BN, global pool, linear head."""

    def __init__(self, width: int = 16, wide: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.c1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(width)
        self.c2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(width)
        self.down = nn.Sequential(nn.Conv2d(width, wide, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(wide),
                                  nn.ReLU())
        self.head = nn.Linear(wide, classes)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.b2(self.c2(F.relu(self.b1(self.c1(x))))))
        return self.head(self.down(x).mean(dim=(2, 3)))


def res_cnn_params(width: int, wide: int, classes: int = 10) -> int:
    """Parameters of :class:`ResCNN` with these widths (conv kernels, BN scale + shift, head)."""
    convs = 3 * width * 9 + 2 * width * width * 9 + width * wide * 9
    norms = 2 * (3 * width + wide)
    return convs + norms + wide * classes + classes


class GroupedCNN(nn.Module):
    """A grouped convolution, optionally a depthwise one, and a linear layer on the flattened feature map."""

    def __init__(self, depthwise: bool = True) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8) if depthwise else nn.Identity()
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.c1(x)))
        x = F.relu(self.dw(F.relu(self.c2(x))))
        return self.fc(F.avg_pool2d(x, 2).flatten(1))


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm scales, shifts and running statistics (so they matter in every check)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model.eval()


def digits():
    """``(x_train, y_train, x_test, y_test)`` of the digits-CNN zoo."""
    from wsl.data.generate.digits_cnn import digits_split

    return digits_split()


def trained_digit_cnns(specs: list[dict], epochs: int = 3, seed: int = 0) -> list[nn.Module]:
    """Digit classifiers (:func:`wsl.data.generate.cnn_arch.digits_cnn`) trained for a few epochs each."""
    from wsl.data.generate.cnn_arch import digits_cnn

    x, y, _, _ = digits()
    out = []
    for i, kw in enumerate(specs):
        torch.manual_seed(seed + i)
        m = digits_cnn(**kw)
        opt = torch.optim.Adam(m.parameters(), 1e-2)
        g = torch.Generator().manual_seed(seed + i)
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=g).split(64):
                loss = F.cross_entropy(m(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        out.append(m.eval())
    return out
