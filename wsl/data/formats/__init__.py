"""Loaders for the published weight-space zoos, one module per format, all returning :class:`ZooRecords`.

=====================  ================================================================================
``small_cnn_zoo``      Small CNN Zoo (Unterthiner et al. 2020): weights.npy + layout.csv + metrics.csv.gz
``dws_inr``            DWSNets MNIST / FashionMNIST SIREN INRs: per-INR .pth + splits JSON
``nfn_siren``          NFN / NFT SIREN zoos: ``randinit_smaller[_aug<i>]_<label>s/net<idx>.pth``
``model_zoos``         Model Zoos (Schürholt et al. 2022): ray-tune trial dirs, params.json, result.json
``cnn_wild_park``      CNN Wild Park (Kofinas et al. 2024): ``checkpoint.pt`` with model + config
=====================  ================================================================================

>>> recs = wsl.data.formats.load("small_cnn_zoo", "data/cifar10")      # doctest: +SKIP
>>> recs.graph(0), recs.labels[0], recs.split("train")                   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import cnn_wild_park, dws_inr, model_zoos, nfn_siren, small_cnn_zoo
from .base import ZooFormatError, ZooRecords

FORMATS: dict[str, Callable[..., ZooRecords]] = {
    "small_cnn_zoo": small_cnn_zoo.load,
    "dws_inr": dws_inr.load,
    "nfn_siren": nfn_siren.load,
    "model_zoos": model_zoos.load,
    "cnn_wild_park": cnn_wild_park.load,
}


def load(format: str, root: str | Path, *args: Any, **kwargs: Any) -> ZooRecords:
    """``FORMATS[format](root, ...)``: one entry point for configs (``_target_: wsl.data.formats.load``)."""
    if format not in FORMATS:
        raise ValueError(f"unknown zoo format {format!r}; known: {sorted(FORMATS)}")
    return FORMATS[format](root, *args, **kwargs)


__all__ = ["FORMATS", "ZooFormatError", "ZooRecords", "load"]
