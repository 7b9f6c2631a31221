"""DWSNets INR zoos (Navon et al. 2023, "Equivariant Architectures for Learning in Deep Weight Spaces").

MNIST INRs (DWSNets' ``experiments/mnist``)::

    mnist-inrs/mnist_png_<training|testing>_<label>_<image id>/checkpoints/model_final.pth
    mnist_splits.json   {"train": {"path": [...], "label": ["3", ...]}, "val": {...}, "test": {...}}

FashionMNIST INRs: ``fmnist_inrs/<split>/model_<i>.pth`` whose state dict also holds an int ``label`` entry, with
either a splits JSON of the same ``{"path", "label"}`` shape (as neural-graphs writes it) or the release's
``fmnist_inrs/splits.json`` (``{"train": [paths], ...}``; labels then come from the files).

Each ``.pth`` is the state dict of DWSNets' ``INR`` (``nn/inr.py``): ``seq.<i>.weight`` / ``seq.<i>.bias`` of
``Siren`` layers (``sin(w0 * (W x + b))``, ``w0 = 30``) followed by a plain ``nn.Linear``; the network's output
is ``seq(x) + 0.5``. Widths and depth are read from the first file. Paths in the JSON are often absolute paths
of the authors' machines: they are resolved against the JSON's folder and ``root`` by their trailing components.
All files load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    SPLITS,
    FileLoader,
    ZooFormatError,
    ZooRecords,
    relpath,
    require_file,
    resolve_path,
    tensor_state,
    torch_load_safe,
)


class DWSSirenLayer(nn.Linear):
    """DWSNets' ``Siren`` layer: parameters ``weight`` [out, in] and ``bias`` [out]; ``sin(w0 * (x W^T + b))``.

    (An ``nn.Linear`` subclass, so tracing finds the input width from the first layer.)
    """

    def __init__(self, dim_in: int, dim_out: int, w0: float = 30.0) -> None:
        super().__init__(dim_in, dim_out)
        self.w0 = w0

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.w0 * F.linear(x, self.weight, self.bias))


class DWSINR(nn.Module):
    """DWSNets' ``INR`` without positional encoding: ``dims[0] -> ... -> dims[-1]``, output ``seq(x) + 0.5``."""

    def __init__(self, dims: Sequence[int] = (2, 32, 32, 1), w0: float = 30.0) -> None:
        super().__init__()
        hidden = [DWSSirenLayer(a, b, w0) for a, b in pairwise(dims[:-1])]
        self.seq = nn.Sequential(*hidden, nn.Linear(dims[-2], dims[-1]))

    def forward(self, x: Tensor) -> Tensor:
        return self.seq(x) + 0.5


def dims_of(state: dict[str, Tensor], source: str) -> list[int]:
    """Layer widths ``[in, hidden..., out]`` of a DWSNets INR state dict."""
    n = 0
    while f"seq.{n}.weight" in state:
        n += 1
    if n < 2:
        raise ZooFormatError(f"{source}: not a DWSNets INR state dict (expected seq.0.weight, seq.1.weight, ...; "
                             f"found keys {sorted(state)[:6]})")
    dims = [state["seq.0.weight"].shape[1]] + [state[f"seq.{i}.weight"].shape[0] for i in range(n)]
    return [int(d) for d in dims]


def _read_splits(path: Path) -> dict[str, dict[str, list[Any]]]:
    require_file(path, 'the splits JSON {"train": {"path": [...], "label": [...]}, "val": ..., "test": ...}')
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ZooFormatError(f"{path}: not valid JSON ({e})") from None
    out = {}
    for s in SPLITS:
        part = raw.get(s) if isinstance(raw, dict) else None
        if part is None:
            continue
        if isinstance(part, list):  # the FashionMNIST release: a list of paths per split
            part = {"path": part}
        if not isinstance(part, dict) or not isinstance(part.get("path"), list):
            raise ZooFormatError(f'{path}: split {s!r} must be {{"path": [...], "label": [...]}} or a list of paths')
        labels = part.get("label")
        if labels is not None and len(labels) != len(part["path"]):
            raise ZooFormatError(f"{path}: split {s!r} has {len(part['path'])} paths but {len(labels)} labels")
        out[s] = {"path": part["path"], "label": labels}
    if not out:
        raise ZooFormatError(f"{path}: none of the splits {SPLITS} found; top-level keys: {list(raw)[:6]}")
    return out


_IMAGE_ID = (re.compile(r"mnist_png_\w+?_(\d+)_(\d+)$"), re.compile(r"model_(\d+)$"))


def _image_id(path: Path) -> int:
    for part in (path.parent.parent.name, path.stem):
        for pat in _IMAGE_ID:
            m = pat.search(part)
            if m:
                return int(m.groups()[-1])
    return -1


def load(root: str | Path, splits: str | Path = "mnist_splits.json", *, w0: float = 30.0,
         read_labels: bool = False) -> ZooRecords:
    """Read a DWSNets INR zoo.

    Args:
        root: the dataset folder the split paths are relative to.
        splits: the splits JSON (relative to ``root`` or absolute).
        w0: the SIREN frequency (30 in DWSNets).
        read_labels: take labels from each file's ``label`` entry even when the JSON lists labels (otherwise
            files are only opened when the JSON has none).
    """
    root = Path(root)
    split_file = Path(splits) if Path(splits).is_absolute() else root / splits
    table = _read_splits(split_file)
    bases = [split_file.parent, root, split_file.parent.parent]
    paths: list[Path] = []
    labels: list[Any] = []
    which: list[str] = []
    for s, part in table.items():
        for j, p in enumerate(part["path"]):
            q = resolve_path(str(p), bases)
            if not q.is_file():
                raise ZooFormatError(f"{split_file}: {s} entry {j} names {p!r}, which is not a file under "
                                     f"{[str(b) for b in bases]}")
            paths.append(q)
            labels.append(None if part["label"] is None else part["label"][j])
            which.append(s)
    if not paths:
        raise ZooFormatError(f"{split_file}: lists no INRs")
    if read_labels or any(lab is None for lab in labels):
        labels = [_file_label(p) for p in paths]
    try:
        y = torch.tensor([int(lab) for lab in labels], dtype=torch.long)
    except (TypeError, ValueError) as e:
        raise ZooFormatError(f"{split_file}: labels must be integers (or digit strings): {e}") from None
    first = tensor_state(torch_load_safe(paths[0]), paths[0], drop=("label",))
    arch = DWSINR(dims_of(first, str(paths[0])), w0=w0)
    split_idx = {s: torch.tensor([i for i, w in enumerate(which) if w == s], dtype=torch.long) for s in table}
    meta = {"split": which, "path": [relpath(p, root) for p in paths], "image_id": [_image_id(p) for p in paths]}
    return ZooRecords(f"dws_inr:{split_file.name}", archs=[arch], arch_index=[0] * len(paths),
                      load=FileLoader(paths, drop=("label",)),
                      labels=y, metadata=meta, splits=split_idx, sources=[str(p) for p in paths])


def _file_label(path: Path) -> int:
    obj = torch_load_safe(path)
    lab = obj.get("label") if isinstance(obj, dict) else None
    if lab is None:
        raise ZooFormatError(f"{path}: the splits JSON gives no label for this INR and the file has no 'label' entry")
    value = float(lab.item() if isinstance(lab, Tensor) else lab)
    if not math.isfinite(value):
        raise ZooFormatError(f"{path}: label {lab!r} is not a class index")
    return int(value)
