"""``ZooDataset``: a zoo of trained networks as a PyTorch dataset of ParamGraphs (+ labels).

* **Sources**: anything with ``architecture()`` (an ``nn.Module`` to trace) and ``state_dicts()`` (an
  iterator of ``(state_dict, meta)``) — a generated :class:`~wsl.data.generate.ZooDir`, or a published-zoo
  loader.
* **Conversion once**: the architecture is traced once; every checkpoint becomes a graph by copying its
  weights. Converted weights are cached as one safetensors file per zoo (``edge_attr`` / ``x`` stacked),
  so later runs skip reading and converting checkpoints.
* **Fixed splits** by a seeded shuffle of *groups* (e.g. the image an INR was fitted to, so its views never
  straddle train and test), identical on every machine.
* **Normalization**: :meth:`weight_stats` fits :class:`~wsl.nn.stats.WeightStats` on the training split.
* **Transforms**: ``transform(graph)`` (e.g. an augmentation) is applied to each item on access.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..graph.convert import to_graph, trace
from ..graph.paramgraph import ParamGraph

SPLITS = ("train", "val", "test")


def split_indices(groups: Tensor, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> dict[str, Tensor]:
    """Seeded split of item indices into train / val / test by *group* (items of a group stay together)."""
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    uniq = torch.unique(groups)
    order = uniq[torch.randperm(len(uniq), generator=torch.Generator().manual_seed(seed))]
    n_train = round(fractions[0] * len(uniq))
    n_val = round(fractions[1] * len(uniq))
    parts = {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    return {k: torch.nonzero(torch.isin(groups, v)).flatten() for k, v in parts.items()}


class ZooDataset(Dataset):
    """ParamGraphs of one split of a single-architecture zoo; ``dataset[i]`` is a graph with ``.y``.

    Args:
        source: a zoo source (``architecture()`` + ``state_dicts()``), e.g. ``generate_digits_inr(cfg)``.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        label: the meta field used as ``graph.y`` (e.g. ``"label"`` for classes, ``"accuracy"``).
        group: the meta field that keeps items together across splits (default: none, items split freely).
        fractions, seed: the split.
        cache: directory for the converted-weights cache (default: next to the zoo if it is a directory).
        transform: applied to every graph on access (augmentations, ``WeightStats``).
    """

    def __init__(self, source: Any, split: str = "train", *, label: str = "label", group: str | None = None,
                 fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0, cache: str | Path | None = None,
                 transform: Callable[[ParamGraph], ParamGraph] | None = None) -> None:
        if split not in (*SPLITS, "all"):
            raise ValueError(f"split must be one of {(*SPLITS, 'all')}, got {split!r}")
        self.source, self.split, self.transform = source, split, transform
        self.model: nn.Module = source.architecture()
        self.spec = trace(self.model)
        edge, x, meta = self._load(cache)
        if label not in meta:
            raise KeyError(f"zoo has no meta field {label!r} to use as label; fields: {sorted(meta)}")
        self.edge_attr, self.x, self.meta = edge, x, meta
        self.labels = meta[label]
        groups = meta[group] if group is not None else torch.arange(len(edge))
        self.splits = split_indices(groups, fractions, seed)
        self.indices = torch.arange(len(edge)) if split == "all" else self.splits[split]

    # ------------------------------------------------------------- cache
    def _cache_file(self, cache: str | Path | None) -> Path | None:
        base = Path(cache) if cache is not None else getattr(self.source, "path", None)
        if base is None:
            return None
        key = hashlib.sha1(repr((self.spec.arch, self.spec.num_nodes, self.spec.num_edges,
                                 getattr(self.source, "manifest", {}).get("config"))).encode()).hexdigest()[:10]
        return Path(base) / f"graphs-{key}.safetensors"

    def _load(self, cache: str | Path | None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        file = self._cache_file(cache)
        complete = getattr(self.source, "complete", True)
        if file is not None and file.is_file():
            raw = load_file(str(file))
            return raw.pop("edge_attr"), raw.pop("x"), {k[5:]: v for k, v in raw.items()}
        edges, xs, metas = [], [], []
        for sd, meta in self.source.state_dicts():
            g = to_graph(sd, arch=self.model, spec=self.spec)
            edges.append(g.edge_attr[:, 0])
            xs.append(g.x)
            metas.append(meta)
        if not edges:
            raise ValueError(f"zoo {getattr(self.source, 'path', self.source)} holds no models")
        edge, x = torch.stack(edges), torch.stack(xs)
        meta = {k: torch.stack([torch.as_tensor(m[k]) for m in metas]) for k in metas[0]}
        if file is not None and complete:
            tmp = file.with_name(file.name + ".tmp")
            save_file({"edge_attr": edge, "x": x, **{f"meta.{k}": v for k, v in meta.items()}}, str(tmp))
            os.replace(tmp, file)
        return edge, x, meta

    # ------------------------------------------------------------- dataset
    def __len__(self) -> int:
        return len(self.indices)

    def graph(self, i: int) -> ParamGraph:
        """Item ``i`` of this split without the transform."""
        j = int(self.indices[i])
        g = self._template().clone_structure()
        g.edge_attr = self.edge_attr[j][:, None]
        g.x = self.x[j]
        g.y = self.labels[j].reshape(1)
        return g

    def _template(self) -> ParamGraph:
        if not hasattr(self, "_tmpl"):
            self._tmpl = to_graph(self.model, spec=self.spec)
        return self._tmpl

    def __getitem__(self, i: int) -> ParamGraph:
        g = self.graph(i)
        return self.transform(g) if self.transform is not None else g

    def weight_stats(self):
        """Per-tensor normalization statistics fitted on the *training* split (for ``transform``)."""
        from ..nn.stats import WeightStats

        train = self.splits["train"]
        saved = self.indices
        try:
            self.indices = train
            return WeightStats.fit(self.graph(i) for i in range(len(train)))
        finally:
            self.indices = saved

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1

    def __repr__(self) -> str:
        return f"ZooDataset(split={self.split!r}, size={len(self)}, arch={self.spec.arch!r})"
