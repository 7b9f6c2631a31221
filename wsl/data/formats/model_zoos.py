"""Model Zoos (Schürholt et al. 2022, "Model Zoos: A Dataset of Diverse Populations of Neural Network Models").

Each zoo (MNIST, FashionMNIST, SVHN, USPS, CIFAR-10, STL-10; uniform / hyperparameter variants) is a ray-tune
experiment directory with one folder per trained model::

    <zoo>/<trial dir>/params.json                     the trial's config ("model::type", "model::nlin", ...)
    <zoo>/<trial dir>/result.json                     JSON lines, one per epoch: test_acc, train_acc, test_loss,
                                                      train_loss, training_iteration, ...
    <zoo>/<trial dir>/checkpoint_<epoch>/checkpoints  torch.save of the model's state dict (epoch zero-padded
                                                      to six digits in newer zoos)

The architectures are those of ``code/model_definitions/def_net.py`` (keys ``module_list.<i>.weight|bias``, with
pooling, activation and dropout layers taking list positions): ``CNN`` (28x28 inputs: conv 8@5x5 - pool - act -
conv 6@5x5 - pool - act - conv 4@2x2 - act - flatten - fc 20 - act - fc 10), ``CNN2`` (6, 9, 6 channels), ``CNN3``
(32x32 inputs: 16, 32, 15 channels, 3x3 kernels, dropout layers always present) and ``MLP``. They are rebuilt from
``params.json``. ResNet-18 zoos are not covered.

An epoch's metrics are the ``result.json`` line whose ``training_iteration`` equals the epoch (the trainable
evaluates the initial model as iteration 0). Splits: trials sorted by name, shuffled with ``random.Random(42)``
(the zoo's own loader shuffles with seed 42) and cut 70 / 15 / 15; all epochs of a trial share its split.
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
from torch import nn

from .base import (
    FileLoader,
    ZooFormatError,
    ZooRecords,
    activation,
    relpath,
    require_file,
    seeded_group_split,
    set_example_image,
)

#: (out channels, kernel) of the three conv layers, the flattened size, input size, and whether dropout layers
#: are always present, per CNN type of ``def_net.py``.
_CNNS: dict[str, tuple[list[tuple[int, int]], int, int, bool, bool]] = {
    "CNN": ([(8, 5), (6, 5), (4, 2)], 3 * 3 * 4, 28, False, False),
    "CNN2": ([(6, 5), (9, 5), (6, 2)], 3 * 3 * 6, 28, False, False),
    "CNN3": ([(16, 3), (32, 3), (15, 3)], 15 * 2 * 2, 32, True, True),
}


def build_model(config: dict[str, Any], where: str = "") -> nn.Module:
    """The ``nn.Module`` a Model Zoos config describes (same ``module_list`` positions as ``def_net.py``)."""
    kind = config.get("model::type")
    nlin = config.get("model::nlin", "leakyrelu")
    p = float(config.get("model::dropout", 0.0) or 0.0)
    layers: list[nn.Module] = []
    if kind in _CNNS:
        convs, flat, size, always_drop, pool_last = _CNNS[kind]
        cin = int(config.get("model::channels_in", 1))
        for j, (cout, k) in enumerate(convs):
            layers.append(nn.Conv2d(cin, cout, k))
            if j < 2 or pool_last:
                layers.append(nn.MaxPool2d(2, 2))
            layers.append(activation(nlin, where))
            if (p > 0 or always_drop) and (j < 2 or pool_last):
                layers.append(nn.Dropout(p))
            cin = cout
        layers += [nn.Flatten(), nn.Linear(flat, 20), activation(nlin, where)]
        if p > 0 or always_drop:
            layers.append(nn.Dropout(p))
        layers.append(nn.Linear(20, 10))
        model = _ModuleList(layers)
        return set_example_image(model, int(config.get("model::channels_in", 1)), size)
    if kind == "MLP":
        h = config.get("model::h_dim", [30, 15])
        dims = [int(config.get("model::i_dim", 14)), *(h if isinstance(h, list) else [h])]
        bias = bool(config.get("model::use_bias", True))
        for a, b in pairwise(dims):
            layers += [nn.Linear(a, b, bias=bias), activation(nlin, where)]
            if p > 0:
                layers.append(nn.Dropout(p))
        layers.append(nn.Linear(dims[-1], int(config.get("model::o_dim", 10)), bias=bias))
        return _ModuleList(layers)
    raise ZooFormatError(f"{where}model::type {kind!r} is not supported (CNN, CNN2, CNN3, MLP are)")


class _ModuleList(nn.Module):
    """``module_list`` applied in order (the container of ``def_net.py``'s models)."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.module_list = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.module_list:
            x = layer(x)
        return x


_ARCH_KEYS = ("model::type", "model::channels_in", "model::nlin", "model::dropout", "model::i_dim", "model::h_dim",
              "model::o_dim", "model::use_bias")
_CKPT = re.compile(r"^checkpoint_(\d+)$")


def _read_results(path: Path) -> dict[int, dict[str, Any]]:
    if not path.is_file():
        return {}
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise ZooFormatError(f"{path}, line {n}: not a JSON object ({e}); expected one result per line") from None
        if "training_iteration" in r:
            out[int(r["training_iteration"])] = r
    return out


def load(root: str | Path, *, epochs: int | Sequence[int] | str = "last", label: str = "test_acc",
         drop_nan: bool = True, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 42) -> ZooRecords:
    """Read a Model Zoos experiment directory.

    Args:
        root: the folder holding one sub-folder per trial (``params.json`` + ``checkpoint_*``).
        epochs: ``"last"`` (each trial's last checkpoint), ``"all"``, an epoch, or a list of epochs.
        label: the ``result.json`` metric used as label (``test_acc``, ``train_acc``, ``test_loss``, ...).
        drop_nan: drop checkpoints without a finite label (no matching result line, diverged runs).
        fractions, seed: the split of trials.
    """
    root = Path(root)
    if not root.is_dir():
        raise ZooFormatError(f"{root}: not a directory; expected a Model Zoos experiment folder of trial folders")
    trials = sorted(d for d in root.iterdir() if d.is_dir() and (d / "params.json").is_file())
    if not trials:
        raise ZooFormatError(f"{root}: no trial folders with a params.json")
    archs: list[nn.Module] = []
    arch_keys: list[str] = []
    entries: list[tuple[Path, int, int, dict[str, Any], dict[str, Any]]] = []  # file, epoch, arch, config, result
    for t in trials:
        pfile = require_file(t / "params.json", "the trial's config")
        try:
            cfg = json.loads(pfile.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ZooFormatError(f"{pfile}: not valid JSON ({e})") from None
        key = json.dumps({k: cfg.get(k) for k in _ARCH_KEYS}, sort_keys=True, default=str)
        if key not in arch_keys:
            archs.append(build_model(cfg, f"{pfile}: "))
            arch_keys.append(key)
        results = _read_results(t / "result.json")
        ckpts = sorted((int(m.group(1)), d) for d in t.iterdir() if (m := _CKPT.match(d.name)) and d.is_dir())
        ckpts = [(e, d) for e, d in ckpts if (d / "checkpoints").is_file()]
        if not ckpts:
            continue
        chosen = _choose(ckpts, epochs)
        for e, d in chosen:
            entries.append((d / "checkpoints", e, arch_keys.index(key), cfg, results.get(e, {})))
    if drop_nan:
        entries = [x for x in entries if _finite(x[4].get(label))]
    if not entries:
        raise ZooFormatError(f"{root}: no checkpoints left (epochs={epochs!r}, label={label!r}, drop_nan={drop_nan})")
    files = [x[0] for x in entries]
    labels = torch.tensor([float(x[4].get(label, math.nan)) for x in entries], dtype=torch.float32)
    meta: dict[str, list[Any]] = {"epoch": [x[1] for x in entries], "trial": [x[0].parent.parent.name for x in entries],
                                  "path": [relpath(f, root) for f in files]}
    for k in ("test_acc", "train_acc", "test_loss", "train_loss"):
        meta[k] = [float(x[4].get(k, math.nan)) for x in entries]
    for k in sorted({k for x in entries for k in x[3]}):
        vals = [x[3].get(k) for x in entries]
        if all(isinstance(v, (int, float, str, bool)) for v in vals):
            meta[f"config.{k}"] = vals
    splits = seeded_group_split(meta["trial"], fractions, seed)
    return ZooRecords(f"model_zoos:{root.name}", archs=archs, arch_index=[x[2] for x in entries],
                      load=FileLoader(files), labels=labels,
                      metadata=meta, splits=splits, sources=[str(f) for f in files])


def _choose(ckpts: list[tuple[int, Path]], epochs: int | Sequence[int] | str) -> list[tuple[int, Path]]:
    if epochs == "last":
        return ckpts[-1:]
    if epochs == "all":
        return ckpts
    if isinstance(epochs, str):
        raise TypeError(f"epochs must be 'last', 'all', an int or a list of ints, got {epochs!r}")
    want = {int(epochs)} if isinstance(epochs, int) else {int(e) for e in epochs}
    return [(e, d) for e, d in ckpts if e in want]


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
