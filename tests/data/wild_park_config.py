"""A stand-in for the training code's config class that CNN Wild Park checkpoints pickle (for the fixtures)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CNNConfig:
    """Same fields as neural-graphs' ``cnn_sampler.CNNConfig``."""

    n_layers: int
    n_classes: int
    channels: list[int]
    kernel_size: list[int]
    stride: list[int]
    padding: list[int]
    residual: list[int]
    activation: list[str]
