"""NFN / NFT SIREN zoos (Zhou et al. 2023, "Permutation Equivariant Neural Functionals" and "Neural Functional
Transformers"): SIRENs fitted to MNIST, FashionMNIST and CIFAR-10 images (``siren_<mnist|fashion|cifar>_wts``)::

    randinit_smaller_<label>s/net<idx>.pth          one folder per class digit; idx is the image index
    randinit_smaller_aug<i>_<label>s/net<idx>.pth   augmented views: the same image fitted from another init

Labels come from the folder name (``_(\\d)s``), as in NFN's ``SirenDataset``. Each file is the state dict of NFN's
``Siren(in_features=2, hidden_features=32, hidden_layers=1, out_features=1 or 3, outermost_linear=True,
first_omega_0=30, hidden_omega_0=30)``: ``net.<i>.linear.weight|bias`` for the sine layers
(``sin(omega * linear(x))``) and ``net.<last>.weight|bias`` for the final linear layer. The original module also
returns its input coordinates; :class:`NFNSiren` returns only the image values.

Splits follow NFN (``split_points=(45000, 50000)``): images with idx below 45,000 train, up to 50,000 val, the
rest test. Augmented views (``augmentations=k`` loads ``aug0 .. aug{k-1}``) join the training split only, so no
image is seen in two splits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import torch
from torch import Tensor, nn

from .base import (
    FileLoader,
    ZooFormatError,
    ZooRecords,
    relpath,
    tensor_state,
    torch_load_safe,
)


class SineLayer(nn.Module):
    """NFN's ``SineLayer``: ``sin(omega_0 * linear(x))`` (parameters under ``linear.``)."""

    def __init__(self, in_features: int, out_features: int, omega_0: float = 30.0) -> None:
        super().__init__()
        self.omega_0 = omega_0
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.omega_0 * self.linear(x))


class NFNSiren(nn.Module):
    """NFN's ``Siren`` with ``outermost_linear=True``: sine layers ``dims[0] -> ... -> dims[-2]``, then a linear."""

    def __init__(self, dims: Sequence[int] = (2, 32, 32, 1), first_omega_0: float = 30.0,
                 hidden_omega_0: float = 30.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [SineLayer(a, b, first_omega_0 if i == 0 else hidden_omega_0)
                                   for i, (a, b) in enumerate(pairwise(dims[:-1]))]
        layers.append(nn.Linear(dims[-2], dims[-1]))
        self.net = nn.Sequential(*layers)

    def forward(self, coords: Tensor) -> Tensor:
        return self.net(coords)


def dims_of(state: dict[str, Tensor], source: str) -> list[int]:
    """Layer widths ``[in, hidden..., out]`` of an NFN SIREN state dict."""
    n = 0
    while f"net.{n}.linear.weight" in state:
        n += 1
    if n == 0 or f"net.{n}.weight" not in state:
        raise ZooFormatError(f"{source}: not an NFN SIREN state dict (expected net.<i>.linear.weight ... and a final "
                             f"net.<n>.weight; found {sorted(state)[:6]})")
    return [int(state["net.0.linear.weight"].shape[1])] + [int(state[f"net.{i}.linear.weight"].shape[0])
                                                           for i in range(n)] + [int(state[f"net.{n}.weight"].shape[0])]


def load(root: str | Path, *, prefix: str = "randinit_smaller", augmentations: int = 0,
         split_points: tuple[int, int] = (45000, 50000), omega_0: float = 30.0) -> ZooRecords:
    """Read an NFN SIREN zoo directory (e.g. ``siren_mnist_wts``); see the module docstring for the layout.

    Args:
        root: the folder holding the ``<prefix>_<label>s`` folders.
        prefix: the folder prefix (``randinit_smaller`` in the release; NFN's ``randinit_test`` also exists).
        augmentations: how many augmented views (``<prefix>_aug<i>_*``) to add to the training split.
        split_points: image-index boundaries of val and test.
        omega_0: the sine frequency (30).
    """
    root = Path(root)
    if not root.is_dir():
        raise ZooFormatError(f"{root}: not a directory; expected the folder holding {prefix}_<label>s/net<idx>.pth")
    views = [prefix] + [f"{prefix}_aug{i}" for i in range(augmentations)]
    entries: list[tuple[int, int, int, Path]] = []  # (view, image idx, label, path)
    for v, p in enumerate(views):
        pat = re.compile(rf"^{re.escape(p)}_(\d)s$")
        dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and pat.match(d.name)]
        if not dirs:
            raise ZooFormatError(f"{root}: no folders {p}_<digit>s (view {v}); found {sorted(x.name for x in root.iterdir())[:8]}")
        seen: dict[int, Path] = {}
        for d in dirs:
            label = int(pat.match(d.name).group(1))
            for f in sorted(d.glob("net*.pth")):
                m = re.fullmatch(r"net(\d+)\.pth", f.name)
                if m is None:
                    continue
                idx = int(m.group(1))
                if idx in seen:
                    raise ZooFormatError(f"{f}: image index {idx} appears twice in view {p} (also {seen[idx]})")
                seen[idx] = f
                entries.append((v, idx, label, f))
        if v == 0 and not seen:
            raise ZooFormatError(f"{root}: the {p}_<digit>s folders hold no net<idx>.pth files")
    base = sorted((e for e in entries if e[0] == 0), key=lambda e: e[1])
    augs = sorted((e for e in entries if e[0] > 0), key=lambda e: (e[0], e[1]))
    val_point, test_point = split_points
    augs = [e for e in augs if e[1] < val_point]  # augmented views only of training images
    entries = base + augs
    paths = [e[3] for e in entries]
    first = tensor_state(torch_load_safe(paths[0]), paths[0])
    arch = NFNSiren(dims_of(first, str(paths[0])), omega_0, omega_0)
    idx = torch.tensor([e[1] for e in entries])
    view = torch.tensor([e[0] for e in entries])
    splits = {"train": torch.nonzero(idx < val_point).flatten(),
              "val": torch.nonzero((idx >= val_point) & (idx < test_point) & (view == 0)).flatten(),
              "test": torch.nonzero((idx >= test_point) & (view == 0)).flatten()}
    meta = {"image_index": idx, "view": view, "path": [relpath(p, root) for p in paths]}
    return ZooRecords(f"nfn_siren:{root.name}", archs=[arch], arch_index=[0] * len(paths),
                      load=FileLoader(paths),
                      labels=torch.tensor([e[2] for e in entries], dtype=torch.long), metadata=meta, splits=splits,
                      sources=[str(p) for p in paths])
