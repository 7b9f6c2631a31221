"""Seeded random distortions of digit images: an affine map (rotation, anisotropic scale, shear, shift) plus a
smooth elastic displacement field, resampled bilinearly.

The benchmark-convention digits-INR zoo (``DigitsINRConfig(variants=12, init="independent")``) fits one INR per
*distinct* image: each of scikit-learn's 1,797 digits appears as its original and ``variants - 1`` distorted
versions, so the zoo reaches the size of the published INR zoos (tens of thousands of INRs) while splits stay
by source digit (no distortion of a test digit is seen in training). A distortion depends only on its
generator, so a zoo is the same however it is sharded or resumed.

>>> g = torch.Generator().manual_seed(0)
>>> out = distort(images[:1], g)            # doctest: +SKIP   [1, 28, 28] in [0, 1]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Distortion:
    """Ranges of the random distortion (``strength`` scales all of them; 0 is the identity).

    Angles in degrees; ``scale`` and ``shear`` as fractions; ``shift`` and ``elastic`` (the std of the
    displacement at the control points) in units of the half image side (the image spans ``[-1, 1]``).
    """

    rotate: float = 12.0
    scale: float = 0.12
    shear: float = 0.15
    shift: float = 0.08
    elastic: float = 0.05
    control_points: int = 5  # elastic field: control_points x control_points, bicubic upsampling

    def __post_init__(self) -> None:
        for k in ("rotate", "scale", "shear", "shift", "elastic"):
            if getattr(self, k) < 0:
                raise ValueError(f"Distortion.{k} must be >= 0, got {getattr(self, k)}")
        if self.control_points < 2:
            raise ValueError(f"Distortion.control_points must be >= 2, got {self.control_points}")


def _uniform(g: torch.Generator, n: int, bound: float) -> Tensor:
    return (torch.rand(n, generator=g) * 2 - 1) * bound


def sampling_grid(n: int, size: int, g: torch.Generator, d: Distortion = Distortion(), strength: float = 1.0) -> Tensor:
    """``[n, size, size, 2]`` sampling locations (``grid_sample`` convention, x then y) of ``n`` random distortions."""
    rot = _uniform(g, n, math.radians(d.rotate) * strength)
    sx = torch.exp(_uniform(g, n, d.scale * strength))
    sy = torch.exp(_uniform(g, n, d.scale * strength))
    sh = _uniform(g, n, d.shear * strength)
    tx, ty = _uniform(g, n, d.shift * strength), _uniform(g, n, d.shift * strength)
    cos, sin = torch.cos(rot), torch.sin(rot)
    # output pixel -> input location: rotation @ shear @ scale, then shift
    a = torch.stack([torch.stack([cos * sx, (cos * sh - sin) * sy, tx], -1),
                     torch.stack([sin * sx, (sin * sh + cos) * sy, ty], -1)], 1)  # [n, 2, 3]
    grid = F.affine_grid(a, [n, 1, size, size], align_corners=True)
    k = d.control_points
    field = torch.randn(n, 2, k, k, generator=g) * (d.elastic * strength)
    field = F.interpolate(field, size=(size, size), mode="bicubic", align_corners=True)
    return grid + field.permute(0, 2, 3, 1)


def distort(images: Tensor, g: torch.Generator, d: Distortion = Distortion(), strength: float = 1.0) -> Tensor:
    """Randomly distorted copies of ``images`` ``[n, size, size]`` (values in ``[0, 1]``, zero outside)."""
    n, size = images.shape[0], images.shape[-1]
    grid = sampling_grid(n, size, g, d, strength)
    out = F.grid_sample(images[:, None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[:, 0].clamp(0, 1)
