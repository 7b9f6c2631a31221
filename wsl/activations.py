"""The one table of activation modules by name (PyTorch and Keras spellings), shared by the metanetworks, the
zoo generators, the architecture sampler and the zoo-format readers. Each of those lists the names it offers
as its own choices (a tuple); the modules always come from here."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "leakyrelu": nn.LeakyReLU, "gelu": nn.GELU, "silu": nn.SiLU,
    "swish": nn.SiLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "selu": nn.SELU, "elu": nn.ELU, "celu": nn.CELU,
    "softplus": nn.Softplus, "linear": nn.Identity, "none": nn.Identity, "identity": nn.Identity,
}


def activation_class(name: str, choices: Sequence[str] | None = None) -> type[nn.Module]:
    """The module class named ``name`` (case-insensitive); a ``ValueError`` listing ``choices`` (default: every
    name in :data:`ACTIVATIONS`) when it is not one of them."""
    key = str(name).strip().lower()
    allowed = ACTIVATIONS if choices is None else choices
    if key not in allowed or key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(allowed)}")
    return ACTIVATIONS[key]
