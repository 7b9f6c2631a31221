"""Adapting ImageNet-style classifiers to small inputs (e.g. ``1×8×8`` digits), the CIFAR-style way.

ImageNet stems downsample by 4 before the first stage (a stride-2 conv, often a stride-2 max pool) and take
3 channels; on an ``8×8`` image that leaves one pixel for most of the network. :func:`adapt_to_small_inputs`
rewrites a model in place, generically (no per-family code):

* the **stem**, the first ``Conv2d`` in module order, becomes a stride-1 ``Conv2d`` from ``in_channels`` with
  the same output channels and bias setting, kernel ``min(k, 3)`` and "same" padding;
* a ``MaxPool2d`` that runs between the stem and the next convolution (ResNet's ``maxpool``, DenseNet's
  ``pool0``, ShuffleNet's ``maxpool``, SqueezeNet's first pool) is replaced by ``nn.Identity``.

The classifier head is left alone: build the model with ``num_classes`` instead (``torchvision_for_inputs``).
"""

from __future__ import annotations

from torch import nn

__all__ = ["adapt_to_small_inputs", "torchvision_for_inputs"]


def _set(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def adapt_to_small_inputs(model: nn.Module, in_channels: int = 1) -> dict[str, str]:
    """Rewrite ``model``'s stem for small ``in_channels``-channel images in place; returns ``{module path:
    what was done}`` so callers can log the change. Raises ``ValueError`` when the model has no ``Conv2d``."""
    mods = list(model.named_modules())
    convs = [i for i, (_, m) in enumerate(mods) if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d stem to adapt; adapt_to_small_inputs only "
                         "rewrites convolutional stems")
    done: dict[str, str] = {}
    path, stem = mods[convs[0]]
    k = min(stem.kernel_size[0], 3)
    new = nn.Conv2d(in_channels, stem.out_channels, k, stride=1, padding=k // 2, bias=stem.bias is not None)
    _set(model, path, new)
    done[path] = (f"Conv2d({stem.in_channels}, {stem.out_channels}, k={stem.kernel_size}, s={stem.stride}) -> "
                  f"Conv2d({in_channels}, {stem.out_channels}, k={k}, s=1, p={k // 2})")
    stop = convs[1] if len(convs) > 1 else len(mods)
    for p, m in mods[convs[0] + 1:stop]:
        if isinstance(m, nn.MaxPool2d):
            _set(model, p, nn.Identity())
            done[p] = "MaxPool2d -> Identity"
            break
    return done


def torchvision_for_inputs(name: str, in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None, num_classes=num_classes)`` with its stem adapted to
    small ``in_channels``-channel images (:func:`adapt_to_small_inputs`). The adaptation is recorded on the
    model as ``model.adapted``."""
    import torchvision

    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    model.adapted = adapt_to_small_inputs(model, in_channels)
    return model
