"""Small image classifiers of varied architecture, rebuildable from a JSON-able config (the digits-CNN zoo).

``digits_cnn(depth=2, width=8, kernel=3, activation="relu", residual=False, norm="none")`` builds::

    x [B, 1, 8, 8] -> conv(1 -> width, k) [-> BatchNorm] -> act
                   -> (depth - 1) x { conv(width -> width, k) [-> BatchNorm] -> act  (+ x if residual) }
                   -> global average pool -> Linear(width -> 10)

Convolutions use "same" padding, so the feature maps stay ``8 x 8``. Dropout is a training-time
hyperparameter, not part of the architecture: the trainer applies it between :meth:`DigitsCNN.embed` and the
head, so checkpoints of runs that differ only in dropout share one architecture and one trace.
"""

from __future__ import annotations

from torch import Tensor, nn

from ...activations import ACTIVATIONS as _MODULES

ACTIVATIONS = ("relu", "gelu", "tanh", "silu")  # the activations a digits CNN offers
NORMS = ("none", "batchnorm")


class ConvBlock(nn.Module):
    """``act(norm(conv(x)))``, plus ``x`` when ``residual`` (needs equal in / out channels)."""

    def __init__(self, cin: int, cout: int, kernel: int, activation: str, norm: str, residual: bool) -> None:
        super().__init__()
        if residual and cin != cout:
            raise ValueError(f"a residual block needs equal in / out channels, got {cin} -> {cout}")
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=norm == "none")
        self.norm = nn.BatchNorm2d(cout) if norm == "batchnorm" else nn.Identity()
        self.act = _MODULES[activation]()
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.norm(self.conv(x)))
        return x + y if self.residual else y


class DigitsCNN(nn.Module):
    """Conv stack + global average pool + linear head (see module docstring)."""

    def __init__(self, depth: int = 2, width: int = 8, kernel: int = 3, activation: str = "relu",
                 residual: bool = False, norm: str = "none", in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        if not 1 <= depth:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if kernel % 2 != 1:
            raise ValueError(f"kernel must be odd ('same' padding), got {kernel}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        blocks = [ConvBlock(in_channels, width, kernel, activation, norm, residual=False)]
        blocks += [ConvBlock(width, width, kernel, activation, norm, residual) for _ in range(depth - 1)]
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(width, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Globally pooled features ``[B, width]`` (the head's input)."""
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))


def digits_cnn(depth: int = 2, width: int = 8, kernel: int = 3, activation: str = "relu", residual: bool = False,
               norm: str = "none") -> DigitsCNN:
    """The ``wsl.*`` constructor a digits-CNN zoo manifest names (keyword arguments = stored architecture)."""
    return DigitsCNN(depth=depth, width=width, kernel=kernel, activation=activation, residual=residual, norm=norm)
