"""CNN Wild Park (Kofinas et al. 2024, "Graph Neural Networks for Learning Equivariant Representations of Neural
Networks"): CIFAR-10 CNNs of *varied* architecture (2-5 conv layers, 4-32 channels, 3/5/7 kernels, per-layer
activations, skip connections), trained with ray tune::

    cifar10_zooV2/<trial dir>/checkpoint_<k>/checkpoint.pt
    cnn_park_splits.json (optional)   {"train": {"path": [...], "score": [...], "step": [...]}, "val": ..., "test": ...}

Each ``checkpoint.pt`` holds ``model`` (state dict: ``layers.<i>.weight|bias`` convs and ``fc.weight|bias``),
``optimizer``, ``config`` (the trial's architecture: ``n_layers``, ``n_classes``, ``channels`` (input channels
first), ``kernel_size``, ``stride``, ``padding``, ``residual``, ``activation``) and ray's trainable state
(``iteration``, ``last_result`` with ``test/acc``, ``test/loss``). ``config`` is a pickled object of the training
code (an OmegaConf ``DictConfig`` of a dataclass), so ``weights_only`` loading refuses these files; they are read
with :func:`~wsl.data.formats.inert_pickle.load_inert`, which never imports or calls what a file names.

The network (neural-graphs' ``cnn_sampler.CNN``): for each layer ``x = conv(x)``; if ``residual[i] >= 0`` the
stored activation of layer ``residual[i]`` is added to the first ``min(channels)`` channels; then the layer's
activation; finally global average pooling and ``fc``. Labels are ``last_result["test/acc"]`` (or the splits
file's ``score``). Without a splits file, trials are split by a seeded shuffle (all checkpoints of a trial together).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .base import (
    SPLITS,
    ZooFormatError,
    ZooRecords,
    activation,
    relpath,
    resolve_path,
    seeded_group_split,
)
from .inert_pickle import load_inert, plain

_FIELDS = ("n_layers", "channels", "kernel_size", "stride", "padding", "residual", "activation")


class WildParkCNN(nn.Module):
    """neural-graphs' CNN Wild Park network, with the residual sum written out of place (same function)."""

    def __init__(self, n_layers: int, channels: Sequence[int], kernel_size: Sequence[int], stride: Sequence[int],
                 padding: Sequence[int], residual: Sequence[int], activation: Sequence[str], n_classes: int = 10) -> None:
        super().__init__()
        if not (len(channels) - 1 == len(kernel_size) == len(stride) == len(padding) == len(residual)
                == len(activation) == n_layers):
            raise ZooFormatError(f"inconsistent CNN Wild Park config: {n_layers} layers but channels={channels}, "
                                 f"kernel_size={kernel_size}, residual={residual}, activation={activation}")
        self.residual = [int(r) for r in residual]
        self.layers = nn.ModuleList(nn.Conv2d(channels[i], channels[i + 1], kernel_size[i], stride=stride[i],
                                              padding=padding[i]) for i in range(n_layers))
        self.acts = nn.ModuleList(_act(a) for a in activation)
        self.fc = nn.Linear(channels[-1], n_classes)

    def forward(self, x: Tensor) -> Tensor:
        saved: dict[int, Tensor] = {}
        for i, (conv, act) in enumerate(zip(self.layers, self.acts)):
            x = conv(x)
            r = self.residual[i]
            if r > -1:
                ch = min(saved[r].shape[1], x.shape[1])
                head = x[:, :ch] + saved[r][:, :ch]
                x = head if ch == x.shape[1] else torch.cat([head, x[:, ch:]], dim=1)
            x = act(x)
            if i in self.residual:
                saved[i] = x
        return self.fc(x.mean(dim=(2, 3)))


def _act(name: str) -> nn.Module:
    return activation("identity" if name == "none" else name, "CNN Wild Park config: ")


def _config(obj: Any, path: Path) -> dict[str, Any]:
    cfg = plain(obj.get("config")) if isinstance(obj, dict) else None
    if not isinstance(cfg, dict) or any(k not in cfg for k in _FIELDS):
        raise ZooFormatError(f"{path}: no usable 'config' (needs {_FIELDS}); found "
                             f"{sorted(cfg) if isinstance(cfg, dict) else type(cfg).__name__}")
    out = {k: cfg[k] for k in _FIELDS}
    out["n_classes"] = int(cfg.get("n_classes", 10))
    return out


def _state(obj: Any, path: Path) -> dict[str, Tensor]:
    sd = obj.get("model") if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ZooFormatError(f"{path}: no 'model' state dict of tensors in the checkpoint")
    return dict(sd)


class _WildParkLoader:
    """``load(i)``: the ``model`` state dict of checkpoint ``files[i]`` (inert unpickling; picklable)."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __call__(self, i: int) -> dict[str, Tensor]:
        return _state(load_inert(self.files[i]), self.files[i])


def _read_splits(path: Path, bases: list[Path]) -> tuple[list[Path], list[float | None], list[str]]:
    if not path.is_file():
        raise ZooFormatError(f"{path}: missing; expected {{'train': {{'path': [...], 'score': [...]}}, ...}}")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ZooFormatError(f"{path}: not valid JSON ({e})") from None
    files, scores, which = [], [], []
    for s in SPLITS:
        part = raw.get(s)
        if part is None:
            continue
        if not isinstance(part, dict) or not isinstance(part.get("path"), list):
            raise ZooFormatError(f"{path}: split {s!r} must be {{'path': [...], 'score': [...]}}")
        sc = part.get("score") or [None] * len(part["path"])
        if len(sc) != len(part["path"]):
            raise ZooFormatError(f"{path}: split {s!r} has {len(part['path'])} paths but {len(sc)} scores")
        files += [resolve_path(p, bases) for p in part["path"]]
        scores += list(sc)
        which += [s] * len(part["path"])
    return files, scores, which


def load(root: str | Path, splits: str | Path | None = None, *, fractions: Sequence[float] = (0.8, 0.1, 0.1),
         seed: int = 42) -> ZooRecords:
    """Read a CNN Wild Park directory (every ``checkpoint.pt`` below ``root``, or those a splits file lists).

    Each checkpoint is opened once here (for its config and accuracy) and again when its weights are asked for.
    """
    root = Path(root)
    if splits is not None:
        sfile = Path(splits) if Path(splits).is_absolute() else root / splits
        files, scores, which = _read_splits(sfile, [sfile.parent, root])
    else:
        files = sorted(root.rglob("checkpoint.pt"))
        scores, which = [None] * len(files), []
    if not files:
        raise ZooFormatError(f"{root}: no checkpoint.pt files found (expected <trial>/checkpoint_<k>/checkpoint.pt)")
    archs: list[nn.Module] = []
    keys: list[str] = []
    arch_index, labels, steps, act_names = [], [], [], []
    for f, sc in zip(files, scores):
        obj = load_inert(f)
        cfg = _config(obj, f)
        key = json.dumps(cfg, sort_keys=True)
        if key not in keys:
            try:
                archs.append(WildParkCNN(**cfg))
            except (TypeError, ValueError) as e:
                raise ZooFormatError(f"{f}: cannot build the network from its config {cfg}: {e}") from None
            keys.append(key)
        arch_index.append(keys.index(key))
        res = plain(obj.get("last_result")) or {}
        labels.append(float(sc) if sc is not None else float(res.get("test/acc", float("nan"))))
        it = plain(obj.get("iteration"))
        steps.append(int(it) if isinstance(it, (int, float)) else -1)
        act_names.append(",".join(cfg["activation"]))
    trial = [f.parent.parent.name for f in files]
    if which:
        split_idx = {s: torch.tensor([i for i, w in enumerate(which) if w == s], dtype=torch.long) for s in SPLITS}
    else:
        split_idx = seeded_group_split(trial, fractions, seed)
    meta = {"step": steps, "trial": trial, "activation": act_names, "path": [relpath(f, root) for f in files],
            "n_layers": [int(json.loads(keys[a])["n_layers"]) for a in arch_index]}
    return ZooRecords(f"cnn_wild_park:{root.name}", archs=archs, arch_index=arch_index,
                      load=_WildParkLoader(files),
                      labels=torch.tensor(labels, dtype=torch.float32), metadata=meta, splits=split_idx,
                      sources=[str(f) for f in files])
