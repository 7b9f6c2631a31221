"""``ZooDataset``: a zoo of trained networks as a PyTorch dataset of ParamGraphs (+ labels).

* **Sources**: anything with ``architecture()`` (an ``nn.Module`` to trace) and ``state_dicts()`` (an
  iterator of ``(state_dict, meta)``) — a generated :class:`~wsl.data.generate.ZooDir`, or a published-zoo
  loader.
* **Conversion once**: the architecture is traced once; every checkpoint becomes a graph by copying its
  weights. Converted weights are cached as one safetensors file per zoo (``edge_attr`` / ``x`` stacked),
  so later runs skip reading and converting checkpoints.
* **Mixed architectures**: a source with ``num_architectures > 1`` (e.g. the digits-CNN zoo) gives every
  model a meta field ``arch``; each architecture is built (``architecture(i)``) and traced once, on first
  use, and the converted weights are stored ragged (flat ``edge_attr`` / ``x`` plus ``edge_ptr`` / ``x_ptr``
  offsets). Batches of such a dataset mix architectures, which the metanetworks of :mod:`wsl.nn` accept.
* **Splits**: a source's *official* splits when it has them (``source.splits``, e.g. a published zoo's
  :class:`~wsl.data.formats.ZooRecords`) or ones passed as ``splits=``; otherwise a seeded shuffle of *groups*
  (e.g. the image an INR was fitted to, so its views never straddle train and test), identical on every
  machine. :meth:`ZooDataset.select` views another split of the same converted weights.
* **Normalization**: :meth:`weight_stats` fits :class:`~wsl.nn.stats.WeightStats` on the training split.
* **Transforms**: ``transform(graph)`` (e.g. an augmentation) is applied to each item on access.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..graph.convert import to_graph, trace
from ..graph.paramgraph import ParamGraph
from ..graph.spec import NetworkSpec
from ..nn.stats import WeightStats, add_moments, fingerprint
from .generate.common import private_tmp

SPLITS = ("train", "val", "test")


def split_indices(groups: Tensor, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> dict[str, Tensor]:
    """Seeded split of item indices into train / val / test by *group* (items of a group stay together).

    Each split gets ``round(fraction * groups)`` groups, except that with three or more groups a split of
    positive fraction never ends up empty.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    uniq = torch.unique(groups)
    order = uniq[torch.randperm(len(uniq), generator=torch.Generator().manual_seed(seed))]
    n = len(uniq)
    n_train = round(fractions[0] * n)
    n_val = round(fractions[1] * n)
    if n >= 3:  # tiny zoos: a split with a positive fraction still gets a group (taken from train)
        if fractions[1] > 0 and n_val == 0:
            n_val, n_train = 1, min(n_train, n - 1)
        if fractions[2] > 0 and n_train + n_val >= n:
            n_train = n - n_val - 1
    parts = {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    return {k: torch.nonzero(torch.isin(groups, v)).flatten() for k, v in parts.items()}


def _checked_splits(splits: Mapping[str, Tensor], n: int, name: str) -> dict[str, Tensor]:
    """Official split indices as ``{"train", "val", "test"}`` LongTensors (a missing split is empty), checked
    to index the ``n`` models of the zoo."""
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"zoo {name}: unknown split names {sorted(unknown)}; expected {SPLITS}")
    out = {}
    for s in SPLITS:
        idx = torch.as_tensor(splits.get(s, []), dtype=torch.long).reshape(-1)
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise IndexError(f"zoo {name}: split {s!r} names model {int(idx.max())}, but the zoo holds {n} models")
        out[s] = idx
    return out


class _LayoutWeightStats(WeightStats):
    """:class:`WeightStats` whose per-architecture tensors are cached by fingerprint *and* graph size.

    ``fingerprint`` names only the parameter tensors, so two architectures with equal tensors but different
    wiring (a residual block or not) share it; their statistics agree (pooled by key), but the cached
    ``edge_norm`` / ``node_norm`` must match each graph's own number of edges and nodes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._by_layout: dict[tuple[str, int, int], tuple[Tensor, Tensor]] = {}

    def _tensors(self, spec: NetworkSpec) -> tuple[Tensor, Tensor]:
        key = (fingerprint(spec), spec.num_nodes, spec.num_edges)
        if key not in self._by_layout:
            self._cache.pop(key[0], None)
            self._by_layout[key] = super()._tensors(spec)
        return self._by_layout[key]


class ZooDataset(Dataset):
    """ParamGraphs of one split of a zoo; ``dataset[i]`` is a graph with ``.y``.

    Args:
        source: a zoo source (``architecture()`` + ``state_dicts()``), e.g. ``generate_digits_inr(cfg)``.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        label: the meta field used as ``graph.y`` (e.g. ``"label"`` for classes, ``"accuracy"``).
        group: the meta field that keeps items together across splits (default: none, items split freely).
        fractions, seed: the seeded split (used only without official splits).
        cache: directory for the converted-weights cache (default: next to the zoo if it is a directory).
        transform: applied to every graph on access (augmentations, ``WeightStats``).
        splits: official ``{"train"|"val"|"test": indices}`` into the source's model order; default: the
            source's own ``splits`` attribute when it has one (published zoos), else the seeded split.
        progress: show a progress bar while converting checkpoints (tqdm, when installed).
    """

    def __init__(self, source: Any, split: str = "train", *, label: str = "label", group: str | None = None,
                 fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0, cache: str | Path | None = None,
                 transform: Callable[[ParamGraph], ParamGraph] | None = None,
                 splits: Mapping[str, Tensor] | None = None, progress: bool = False) -> None:
        if split not in (*SPLITS, "all"):
            raise ValueError(f"split must be one of {(*SPLITS, 'all')}, got {split!r}")
        self.source, self.split, self.transform, self.progress = source, split, transform, progress
        self.mixed = getattr(source, "num_architectures", 1) > 1
        self._models: dict[int, nn.Module] = {}
        self._specs: dict[int, NetworkSpec] = {}
        self._templates: dict[int, ParamGraph] = {}
        self.edge_ptr: Tensor | None = None
        self.x_ptr: Tensor | None = None
        # single architecture: ``model`` / ``spec``; mixed: None, see :meth:`architecture` / :meth:`spec_of`
        self.model: nn.Module | None = None if self.mixed else source.architecture()
        self.spec: NetworkSpec | None = None if self.mixed else trace(self.model)
        edge, x, meta = self._load(cache)
        if label not in meta:
            raise KeyError(f"zoo has no meta field {label!r} to use as label; fields: {sorted(meta)}")
        self.edge_attr, self.x, self.meta = edge, x, meta
        self.labels = meta[label]
        official = splits if splits is not None else getattr(source, "splits", None)
        if isinstance(official, Mapping):
            self.splits = _checked_splits(official, self._num_items(), self._name())
        else:
            if group is not None and group not in meta:
                raise KeyError(f"zoo has no meta field {group!r} to group splits by; fields: {sorted(meta)}")
            groups = meta[group] if group is not None else torch.arange(self._num_items())
            self.splits = split_indices(groups, fractions, seed)
        self.indices = torch.arange(self._num_items()) if split == "all" else self.splits[split]

    def select(self, split: str) -> ZooDataset:
        """The same zoo (converted weights and transform shared, not copied) viewing another split."""
        if split not in (*SPLITS, "all"):
            raise ValueError(f"split must be one of {(*SPLITS, 'all')}, got {split!r}")
        out = copy.copy(self)
        out.split = split
        out.indices = torch.arange(self._num_items()) if split == "all" else self.splits[split]
        return out

    def _name(self) -> str:
        return str(getattr(self.source, "name", None) or getattr(self.source, "path", None) or self.source)

    # ------------------------------------------------------------- architectures
    def architecture(self, a: int = 0) -> nn.Module:
        """The module of architecture ``a`` (a model's ``meta["arch"]`` in a mixed zoo), built once."""
        if not self.mixed:
            return self.model
        if a not in self._models:
            self._models[a] = self.source.architecture(a)
        return self._models[a]

    def spec_of(self, a: int = 0) -> NetworkSpec:
        """The traced spec of architecture ``a``, traced once."""
        if not self.mixed:
            return self.spec
        if a not in self._specs:
            self._specs[a] = trace(self.architecture(a))
        return self._specs[a]

    # ------------------------------------------------------------- cache
    def _cache_file(self, cache: str | Path | None) -> Path | None:
        base = Path(cache) if cache is not None else getattr(self.source, "path", None)
        if base is None:
            return None
        what = ("mixed", self.source.num_architectures) if self.mixed else \
            (self.spec.arch, self.spec.num_nodes, self.spec.num_edges)
        key = hashlib.sha1(repr((*what, getattr(self.source, "manifest", {}).get("config"))).encode()).hexdigest()[:10]
        return Path(base) / f"graphs-{key}.safetensors"

    def _load(self, cache: str | Path | None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        from .generate.common import Progress

        file = self._cache_file(cache)
        complete = getattr(self.source, "complete", True)
        if file is not None and file.is_file():
            raw = load_file(str(file))
            self.edge_ptr, self.x_ptr = raw.pop("edge_ptr", None), raw.pop("x_ptr", None)
            return raw.pop("edge_attr"), raw.pop("x"), {k[5:]: v for k, v in raw.items()}
        edges, xs, metas = [], [], []
        total = len(self.source) if hasattr(self.source, "__len__") else None
        bar = Progress(total, f"converting {self._name()}", enabled=self.progress)
        try:
            for sd, meta in self.source.state_dicts():
                if self.mixed and "arch" not in meta:
                    raise KeyError(f"zoo {self._name()} holds several architectures "
                                   f"but its models lack the meta field 'arch' naming theirs")
                a = int(meta["arch"]) if self.mixed else 0
                g = to_graph(sd, arch=self.architecture(a), spec=self.spec_of(a))
                edges.append(g.edge_attr[:, 0])
                xs.append(g.x)
                metas.append(meta)
                bar.update(1)
        finally:
            bar.close()
        if not edges:
            raise ValueError(f"zoo {getattr(self.source, 'path', self.source)} holds no models")
        ptrs: dict[str, Tensor] = {}
        if self.mixed:  # ragged: flat values + offsets
            self.edge_ptr = torch.tensor([0] + [len(e) for e in edges]).cumsum(0)
            self.x_ptr = torch.tensor([0] + [len(v) for v in xs]).cumsum(0)
            edge, x = torch.cat(edges), torch.cat(xs)
            ptrs = {"edge_ptr": self.edge_ptr, "x_ptr": self.x_ptr}
        else:
            edge, x = torch.stack(edges), torch.stack(xs)
        meta = {k: torch.stack([torch.as_tensor(m[k]) for m in metas]) for k in metas[0]}
        if file is not None and complete:
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = private_tmp(file)
            save_file({"edge_attr": edge, "x": x, **ptrs, **{f"meta.{k}": v for k, v in meta.items()}}, str(tmp))
            os.replace(tmp, file)
        return edge, x, meta

    # ------------------------------------------------------------- dataset
    def __len__(self) -> int:
        return len(self.indices)

    def _num_items(self) -> int:
        return len(self.edge_ptr) - 1 if self.edge_ptr is not None else len(self.edge_attr)

    def graph(self, i: int) -> ParamGraph:
        """Item ``i`` of this split without the transform."""
        j = int(self.indices[i])
        if self.mixed:
            g = self._template(int(self.meta["arch"][j])).clone_structure()
            g.edge_attr = self.edge_attr[self.edge_ptr[j] : self.edge_ptr[j + 1], None]
            g.x = self.x[self.x_ptr[j] : self.x_ptr[j + 1]]
        else:
            g = self._template().clone_structure()
            g.edge_attr = self.edge_attr[j][:, None]
            g.x = self.x[j]
        g.y = self.labels[j].reshape(1)
        return g

    def _template(self, a: int = 0) -> ParamGraph:
        if a not in self._templates:
            self._templates[a] = to_graph(self.architecture(a), spec=self.spec_of(a))
        return self._templates[a]

    def __getitem__(self, i: int) -> ParamGraph:
        g = self.graph(i)
        return self.transform(g) if self.transform is not None else g

    def weight_stats(self):
        """Per-tensor normalization statistics fitted on the *training* split (for ``transform``).

        A mixed-architecture zoo holds architectures in validation / test that training never saw, so there
        statistics are pooled by state-dict key (``"features.1.conv.weight"``) over all training models and
        given to every architecture of the zoo; keys training never saw are left unnormalized.
        """

        train = self.splits["train"]
        saved = self.indices
        try:
            self.indices = train
            if not self.mixed:
                return WeightStats.fit(self.graph(i) for i in range(len(train)))
            acc: dict[str, list[float]] = {}
            for i in range(len(train)):
                add_moments(acc, self.graph(i))
        finally:
            self.indices = saved
        if not acc:
            raise ValueError("weight_stats needs at least one training model")
        pooled = {k: (s / n, max(ss / n - (s / n) ** 2, 0.0) ** 0.5) for k, (s, ss, n) in acc.items()}
        stats = {}
        for a in torch.unique(self.meta["arch"]).tolist():
            spec = self.spec_of(int(a))
            stats[fingerprint(spec)] = {k: pooled[k] for k, t in spec.tensors.items()
                                        if k in pooled and t.kind in ("edges", "nodes")}
        return _LayoutWeightStats(stats)

    @property
    def num_classes(self) -> int:
        """``max label + 1``; an (Attribute)Error when the labels are real numbers (e.g. test accuracies)."""
        if self.labels.is_floating_point() and not torch.equal(self.labels, self.labels.round()):
            raise AttributeError(f"zoo {self._name()}: labels are real numbers (e.g. test accuracies), not class "
                                 "indices; train a regression task on it (wsl train task=generalization)")
        return int(self.labels.max()) + 1

    def __repr__(self) -> str:
        arch = f"{self.source.num_architectures} architectures" if self.mixed else self.spec.arch
        return f"ZooDataset(split={self.split!r}, size={len(self)}, arch={arch!r})"
