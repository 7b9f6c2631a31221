"""``ZooRecords``: the one shape every published-zoo loader returns.

A loader (``wsl.data.formats.<zoo>.load(root, ...)``) reads a zoo's index files eagerly (labels, metrics,
splits, which architecture each model has) and its weights *lazily*: ``records.state_dict(i)`` opens one
checkpoint (or one row of a memory-mapped matrix) when asked. So a 270,000-model zoo opens in seconds and
only what is used is read.

>>> recs = small_cnn_zoo.load("cifar10")                 # doctest: +SKIP
>>> recs.labels[:3], recs.metadata["config.activation"][:3]
>>> g = recs.graph(0)                                     # ParamGraph, ``g.y`` = the label
>>> ds = ZooDataset(recs, "train")                         # the official train split, converted + cached
>>> loader = torch_geometric.loader.DataLoader(recs.split("train"), batch_size=32)  # or use it directly

Zoos whose models differ in architecture (activation functions, layer widths) keep one module per distinct
architecture (``archs``) and an index per model (``arch_index``). :class:`~wsl.data.dataset.ZooDataset` takes
them as a mixed zoo (``num_architectures`` > 1, meta ``arch``), or :meth:`ZooRecords.where` selects models, e.g.
all ReLU networks, to get a single-architecture source. :func:`wsl.data.published.published` builds the
train / val / test datasets of a zoo's official splits (what the ``data=`` configs call).
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...activations import ACTIVATIONS
from ...graph.convert import graph_from_state, trace
from ...graph.paramgraph import ParamGraph
from ...io import CheckpointError, check_state_dict

SPLITS = ("train", "val", "test")
StateLoader = Callable[[int], dict[str, Tensor]]


class ZooFormatError(ValueError):
    """A zoo directory or index file is missing, malformed, or inconsistent (the message names the file)."""


class ZooRecords:
    """The models of a published zoo: lazily loaded weights, labels, per-model metadata, splits, architectures.

    Args:
        name: the zoo (used in messages and the converted-weights cache key of ``ZooDataset``).
        archs: the distinct architectures, one ``nn.Module`` each (weights irrelevant).
        arch_index: ``[n]`` which of ``archs`` each model has.
        load: ``load(i) -> state_dict`` of model ``i`` (PyTorch layout, keys of its architecture).
        labels: ``[n]`` the default prediction target (class or accuracy).
        metadata: per-model columns (lists or tensors of length ``n``: hyperparameters, metrics, paths).
        splits: optional official ``{"train"|"val"|"test": LongTensor of model indices}``.
        sources: ``[n]`` where each model's weights live (file, or file + row), for error messages.
    """

    def __init__(self, name: str, *, archs: Sequence[nn.Module], arch_index: Sequence[int] | Tensor,
                 load: StateLoader, labels: Tensor, metadata: dict[str, Sequence[Any]],
                 splits: dict[str, Tensor] | None, sources: Sequence[str]) -> None:
        n = len(labels)
        self.name = name
        self.archs = list(archs)
        self.arch_index = torch.as_tensor(arch_index, dtype=torch.long).reshape(n)
        self._load = load
        self.labels = labels
        self.metadata = {k: list(v) if not isinstance(v, Tensor) else v for k, v in metadata.items()}
        for k, v in self.metadata.items():
            if len(v) != n:
                raise ValueError(f"{name}: metadata column {k!r} has {len(v)} entries for {n} models")
        self.splits = splits
        self.sources = list(sources)
        self._specs: dict[int, Any] = {}

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        splits = {k: len(v) for k, v in (self.splits or {}).items()}
        return f"ZooRecords({self.name!r}, models={len(self)}, archs={len(self.archs)}, splits={splits})"

    def state_dict(self, i: int) -> dict[str, Tensor]:
        """Weights of model ``i`` in PyTorch layout, checked against its architecture."""
        sd = self._load(i)
        check_state_dict(sd, self.archs[int(self.arch_index[i])], source=self.sources[i])
        return sd

    def architecture_of(self, i: int) -> nn.Module:
        """The (shared) module object of model ``i``'s architecture (its weights are not model ``i``'s)."""
        return self.archs[int(self.arch_index[i])]

    def model(self, i: int) -> nn.Module:
        """A fresh module of model ``i``'s architecture carrying its weights (eval mode)."""
        m = copy.deepcopy(self.architecture_of(i))
        m.load_state_dict(self.state_dict(i))
        return m.eval()

    def graph(self, i: int) -> ParamGraph:
        """Model ``i`` as a :class:`ParamGraph` with ``y`` = its label (architectures traced once each)."""
        a = int(self.arch_index[i])
        if a not in self._specs:
            self._specs[a] = trace(self.archs[a])
        g = graph_from_state(self._specs[a], self.state_dict(i))
        g.y = self.labels[i].reshape(1)
        return g

    def __getitem__(self, i: int) -> ParamGraph:
        """``graph(i)``: a ``ZooRecords`` is itself a map-style dataset of graphs (any mix of architectures;
        batch with ``torch_geometric.loader.DataLoader``)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"model index {i} out of range for {len(self)} models")
        return self.graph(i % len(self))

    def graphs(self, split: str | None = None) -> Iterator[ParamGraph]:
        """Graphs of all models, or of one official split."""
        idx = range(len(self)) if split is None else self._split_indices(split).tolist()
        for i in idx:
            yield self.graph(i)

    # ------------------------------------------------------------------ subsets
    def _split_indices(self, name: str) -> Tensor:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        if self.splits is None:
            raise ValueError(f"{self.name} has no official splits; use wsl.data.dataset.split_indices or "
                             "ZooDataset(records, split=...) to make seeded ones")
        return self.splits[name]

    def subset(self, indices: Sequence[int] | Tensor, name: str | None = None) -> ZooRecords:
        """The models at ``indices`` (in that order); splits are remapped to the kept models."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        pos = torch.full((len(self),), -1, dtype=torch.long)
        pos[idx] = torch.arange(len(idx))
        splits = None
        if self.splits is not None:
            splits = {k: pos[v][pos[v] >= 0] for k, v in self.splits.items()}
        meta = {k: v[idx] if isinstance(v, Tensor) else [v[j] for j in idx.tolist()] for k, v in self.metadata.items()}
        base = idx.tolist()
        return ZooRecords(name or self.name, archs=self.archs, arch_index=self.arch_index[idx],
                          load=SubsetLoader(self._load, base), labels=self.labels[idx], metadata=meta,
                          splits=splits, sources=[self.sources[j] for j in base])

    def split(self, name: str) -> ZooRecords:
        """The models of one official split (``train`` / ``val`` / ``test``)."""
        return self.subset(self._split_indices(name), name=f"{self.name}/{name}")

    def where(self, predicate: Callable[[dict[str, Any]], bool]) -> ZooRecords:
        """Models whose metadata row (a dict of column -> value) satisfies ``predicate``."""
        keep = [i for i in range(len(self)) if predicate(self.row(i))]
        return self.subset(keep)

    def row(self, i: int) -> dict[str, Any]:
        """Metadata of model ``i`` as plain Python values."""
        out = {}
        for k, v in self.metadata.items():
            x = v[i]
            out[k] = x.item() if isinstance(x, Tensor) and x.numel() == 1 else x
        return out

    # ------------------------------------------------- ZooDataset source protocol
    @property
    def manifest(self) -> dict[str, Any]:
        """Identity of this selection of models (keys ``ZooDataset``'s converted-weights cache)."""
        digest = hashlib.sha1("\n".join(self.sources).encode()).hexdigest()[:12]
        return {"config": {"zoo": self.name, "models": len(self), "sources": digest}}

    @property
    def num_architectures(self) -> int:
        """How many distinct architectures these models use (``ZooDataset`` stores more than one ragged)."""
        return len(set(self.arch_index.tolist()))

    def architecture(self, a: int | None = None) -> nn.Module:
        """Entry ``a`` of :attr:`archs` (a model's meta ``arch``); without ``a``, the single architecture of
        these models (an error if they have several: select one with :meth:`where`, or pass ``a``)."""
        if a is not None:
            if not 0 <= a < len(self.archs):
                raise IndexError(f"{self.name}: architecture index {a} out of range for {len(self.archs)} architectures")
            return self.archs[a]
        used = sorted(set(self.arch_index.tolist()))
        if len(used) != 1:
            raise ValueError(f"{self.name}: these {len(self)} models have {len(used)} different architectures; "
                             "select one first, e.g. records.where(lambda r: r['activation'] == 'relu')")
        return self.archs[used[0]]

    def state_dicts(self) -> Iterator[tuple[dict[str, Tensor], dict[str, Tensor]]]:
        """``(state_dict, meta)`` per model; meta holds ``label``, ``arch`` (index into :attr:`archs`) and the
        numeric metadata columns."""
        numeric = [k for k, v in self.metadata.items() if _is_numeric(v) and k != "arch"]
        for i in range(len(self)):
            meta = {"label": self.labels[i], "arch": self.arch_index[i]}
            meta.update({k: torch.as_tensor(self.metadata[k][i]) for k in numeric})
            yield self.state_dict(i), meta


def _is_numeric(column: Sequence[Any]) -> bool:
    if isinstance(column, Tensor):
        return True
    return all(isinstance(x, (int, float, bool)) and not isinstance(x, str) for x in column)


# ---------------------------------------------------------------------- picklable weight loaders
class SubsetLoader:
    """``load(i) = inner(base[i])`` (picklable, so records work in spawned DataLoader workers)."""

    def __init__(self, inner: StateLoader, base: list[int]) -> None:
        self.inner, self.base = inner, base

    def __call__(self, i: int) -> dict[str, Tensor]:
        return self.inner(self.base[i])


class FileLoader:
    """``load(i)``: the tensors of the weights-only torch file ``paths[i]`` (entries in ``drop`` removed)."""

    def __init__(self, paths: Sequence[Path], drop: Sequence[str] = ()) -> None:
        self.paths, self.drop = list(paths), tuple(drop)

    def __call__(self, i: int) -> dict[str, Tensor]:
        return tensor_state(torch_load_safe(self.paths[i]), self.paths[i], drop=self.drop)


# ---------------------------------------------------------------------- helpers for loaders
def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else a :class:`ZooFormatError` saying what the file should hold."""
    if not path.is_file():
        raise ZooFormatError(f"{path}: missing; expected {what}")
    return path


def torch_load_safe(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (weights-only refusals and corrupt files alike)
        raise CheckpointError(f"{path}: cannot be read as a weights-only torch checkpoint "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def tensor_state(obj: Any, path: Path, *, drop: Sequence[str] = ()) -> dict[str, Tensor]:
    """The tensors of a loaded state dict (keys in ``drop`` removed), or an error naming the file."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict (a dict of tensors), found {type(obj).__name__}")
    out = {k: v for k, v in obj.items() if k not in drop}
    bad = [k for k, v in out.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries {bad[:5]} are not tensors; expected a plain state dict")
    return out


def resolve_path(p: str, bases: Sequence[Path]) -> Path:
    """A path listed in a zoo index: as given if it exists, else relative to each of ``bases``, else its
    trailing components under ``bases`` (index files often hold absolute paths from the authors' machines)."""
    cand = Path(p)
    if cand.is_absolute() and cand.exists():
        return cand
    parts = cand.parts[1:] if cand.is_absolute() else cand.parts
    for base in bases:
        for k in range(len(parts)):
            q = base.joinpath(*parts[k:])
            if q.exists():
                return q
    return bases[0].joinpath(*parts) if bases else cand


class _ImageInput:
    """The HF-style ``config`` that ``wsl.graph.inputs.default_inputs`` reads to guess an image input."""

    model_type = "wsl-zoo"

    def __init__(self, num_channels: int, image_size: int) -> None:
        self.num_channels, self.image_size = num_channels, image_size


def set_example_image(module: nn.Module, channels: int, size: int) -> nn.Module:
    """Make ``wsl.trace(module)`` (without ``example_inputs``) use a ``[1, channels, size, size]`` image.

    Needed for CNNs that flatten a fixed-size feature map (the default guess is 224 x 224).
    """
    module.main_input_name = "pixel_values"
    module.config = _ImageInput(channels, size)
    return module


def activation(name: str, where: str = "") -> nn.Module:
    """The activation module named ``name`` (Keras / PyTorch spellings)."""
    key = str(name).strip().lower()
    if key not in ACTIVATIONS:
        raise ZooFormatError(f"{where}unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[key]()


def seeded_group_split(groups: Sequence[Any], fractions: Sequence[float], seed: int) -> dict[str, Tensor]:
    """Split models into train / val / test by *group* (sorted groups shuffled by ``random.Random(seed)``)."""
    import random

    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    uniq = sorted(set(groups), key=str)
    random.Random(seed).shuffle(uniq)
    n = len(uniq)
    n_train, n_val = math.floor(fractions[0] * n), math.floor(fractions[1] * n)
    if n >= 3:  # small zoos: a split with a positive fraction still gets one group (taken from train)
        if fractions[1] > 0 and n_val == 0:
            n_val, n_train = 1, min(n_train, n - 1)
        if fractions[2] > 0 and n_train + n_val >= n:
            n_train = n - n_val - 1
    part = {g: 0 for g in uniq[:n_train]} | {g: 1 for g in uniq[n_train:n_train + n_val]}
    which = torch.tensor([part.get(g, 2) for g in groups], dtype=torch.long)
    return {s: torch.nonzero(which == k).flatten() for k, s in enumerate(SPLITS)}


def relpath(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it (for compact, machine-independent source names)."""
    try:
        return os.path.relpath(path, root) if Path(path).is_relative_to(root) else str(path)
    except ValueError:
        return str(path)
