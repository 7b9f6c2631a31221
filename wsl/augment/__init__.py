"""Weight-space augmentations: pure ``graph -> graph`` transforms, pairwise mixup, a registry.

>>> import torch, wsl.augment as A
>>> aug = A.Compose([A.RandomPermutation(), A.RandomApply(A.GaussianNoise(0.01), p=0.5)])
>>> g2 = aug(graph, generator=torch.Generator().manual_seed(0))       # doctest: +SKIP
>>> dataset.transform = A.Compose([aug, dataset.transform])          # augment raw weights, then normalize

Function-preserving (exact symmetries): :class:`RandomPermutation`, :class:`RandomScaling`,
:class:`RandomSignFlip`, :class:`SirenBiasShift`, :class:`RandomSymmetry`. Perturbing:
:class:`GaussianNoise`, :class:`WeightDropout`, :class:`NeuronDropout`, :class:`MagnitudePruning`,
:class:`Quantization`. INR geometry (first-layer substitution): :class:`INRTranslate`, :class:`INRRotate`,
:class:`INRScale`. Pairwise (weights and labels): :class:`MixUp`, :class:`PermutedMixUp`,
:class:`AlignedMixUp` with :class:`PairwiseCollate` for DataLoaders.
"""

from .base import (
    Compose,
    GraphTransform,
    OneOf,
    ParamIndex,
    RandomApply,
    available,
    create,
    param_index,
    register,
)
from .inr import INRRotate, INRScale, INRTranslate, affine_inputs
from .mixup import (
    AlignedMixUp,
    MixUp,
    PairwiseCollate,
    PairwiseTransform,
    PermutedMixUp,
    soft_label,
)
from .noise import (
    GaussianNoise,
    MagnitudePruning,
    NeuronDropout,
    Quantization,
    WeightDropout,
)
from .symmetry import (
    RandomPermutation,
    RandomScaling,
    RandomSignFlip,
    RandomSymmetry,
    SirenBiasShift,
)


def is_pairwise(transform: object) -> bool:
    """True for transforms that take two graphs (use them through :class:`PairwiseCollate`)."""
    return bool(getattr(transform, "pairwise", False))


__all__ = [
    "AlignedMixUp",
    "Compose",
    "GaussianNoise",
    "GraphTransform",
    "INRRotate",
    "INRScale",
    "INRTranslate",
    "MagnitudePruning",
    "MixUp",
    "NeuronDropout",
    "OneOf",
    "PairwiseCollate",
    "PairwiseTransform",
    "ParamIndex",
    "PermutedMixUp",
    "Quantization",
    "RandomApply",
    "RandomPermutation",
    "RandomScaling",
    "RandomSignFlip",
    "RandomSymmetry",
    "SirenBiasShift",
    "WeightDropout",
    "affine_inputs",
    "available",
    "create",
    "is_pairwise",
    "param_index",
    "register",
    "soft_label",
]
