"""Train / val / test datasets of a *published* weight-space zoo, split as its authors split it.

:func:`published` is what the ``data=`` configs of the published zoos call (``configs/data/dws_inr.yaml``,
``nfn_siren``, ``small_cnn_zoo``, ``model_zoos``, ``cnn_wild_park``):

1. read the zoo with its loader (:func:`wsl.data.formats.load`; ``loader_options`` go to it unchanged);
2. convert every checkpoint to a parameter graph once (progress bar), caching the converted weights under
   ``<cache_root>/published/<format>-<zoo folder>-<key>/`` (``$WSL_CACHE`` or ``~/.cache/wsl``; never inside
   the zoo, which may be read-only). The key covers the format, the zoo's resolved path, the loader options,
   the labels and the size / modification time of every file the weights come from, so changed options or
   files never reuse a stale cache;
3. split by the zoo's **official splits** as the loader reports them (``ZooRecords.splits``): the splits JSON of
   the DWSNets INRs, NFN's image-index split points, NFN's Small CNN Zoo split, CNN Wild Park's splits file.
   Formats without published splits get the loader's *seeded* split, with the loader's ``fractions`` /
   ``seed`` options (Model Zoos: by trial, seed 42 as the zoo's own code; CNN Wild Park without a splits file:
   by trial; Small CNN Zoo ``split="grouped"``: by run);
4. standardize weights per layer with :class:`~wsl.nn.stats.WeightStats` fitted on the **training split only**
   and applied to every split (``normalize=True``).

Zoos of several architectures (CNN Wild Park, Model Zoos of several activations, the Small CNN Zoo's ReLU and
tanh networks) become mixed-architecture datasets; the graph metanetworks read them directly. The NFN / StatNN
baselines need one architecture (they refuse others with an error); select one with the loader where it offers
a selection, or filter the records yourself (``ZooRecords.where``) and use :class:`~wsl.data.dataset.ZooDataset`.

>>> data = published("dws_inr", "/data/dws", splits="mnist_splits.json")   # doctest: +SKIP
>>> data["train"][0]                                                        # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from . import formats
from .dataset import SPLITS, ZooDataset
from .formats.base import ZooFormatError, ZooRecords

_ROW = re.compile(r"\[row \d+\]$")


def cache_dir(format: str, root: str | Path, records: ZooRecords, options: dict[str, Any]) -> Path:
    """Where the converted weights of this zoo (format, folder, loader options, file versions) are cached."""
    from .generate.common import cache_root

    files = sorted({_ROW.sub("", s) for s in records.sources})
    stamps = []
    for f in files:
        try:
            st = os.stat(f)
            stamps.append((f, st.st_size, st.st_mtime_ns))
        except OSError:
            stamps.append((f, -1, -1))
    labels = hashlib.sha1(records.labels.double().numpy().tobytes()).hexdigest()
    blob = json.dumps({"format": format, "root": str(Path(root).resolve()), "options": options, "files": stamps,
                       "labels": labels}, sort_keys=True, default=str)
    key = hashlib.sha1(blob.encode()).hexdigest()[:12]
    return cache_root() / "published" / f"{format}-{Path(root).resolve().name}-{key}"


def published(format: str, root: str | Path, *, normalize: bool = True, cache: str | Path | None = None,
              progress: bool = True, **loader_options: Any) -> dict[str, ZooDataset]:
    """``{"train", "val", "test"}`` :class:`ZooDataset` s of a published zoo (see the module docstring).

    Args:
        format: one of :data:`wsl.data.formats.FORMATS` (``dws_inr``, ``nfn_siren``, ``small_cnn_zoo``,
            ``model_zoos``, ``cnn_wild_park``).
        root: the zoo's folder (as downloaded; read only).
        normalize: standardize weights per layer with statistics of the training split.
        cache: directory of the converted-weights cache (default: under ``$WSL_CACHE`` / ``~/.cache/wsl``,
            keyed by zoo, options and file versions).
        progress: progress bar while converting checkpoints.
        loader_options: passed to the format's ``load`` (e.g. ``splits=`` for ``dws_inr``, ``augmentations=``
            for ``nfn_siren``, ``label=`` / ``order_csv=`` for ``small_cnn_zoo``).

    ``graph.y`` is the loader's label: the class for the INR zoos, the accuracy column for the others (a
    regression target: train those with a regression task, ``task=generalization``).
    """
    if format not in formats.FORMATS:
        raise ValueError(f"unknown published zoo format {format!r}; known: {sorted(formats.FORMATS)}")
    if root is None or str(root).strip() in ("", "???"):
        raise ValueError(f"published zoo {format!r}: no root given; pass the zoo's folder (data.root=PATH)")
    if not Path(root).exists():
        raise ZooFormatError(f"{root}: the {format} zoo folder does not exist (data.root must point to the "
                             f"downloaded zoo)")
    records = formats.load(format, root, **loader_options)
    if records.splits is None:
        raise ValueError(f"{records.name}: the loader made no train / val / test split with options "
                         f"{loader_options}; choose a split option of the {format} loader (e.g. split='nfn')")
    where = Path(cache) if cache is not None else cache_dir(format, root, records, loader_options)
    train = ZooDataset(records, "train", label="label", cache=where, progress=progress)
    data = {s: train if s == "train" else train.select(s) for s in SPLITS}
    empty = [s for s, ds in data.items() if len(ds) == 0]
    if empty:
        sizes = {s: len(ds) for s, ds in data.items()}
        raise ValueError(f"{records.name}: split(s) {empty} are empty (sizes {sizes}); the zoo is too small for "
                         f"its splits, or the loader options select too few models")
    if normalize:
        stats = train.weight_stats()
        for ds in data.values():
            ds.transform = stats
    return data
