"""Write an INR zoo in the DWSNets MNIST-INR layout, so reference implementations read it unchanged.

The layout is the one :mod:`wsl.data.formats.dws_inr` reads (and DWSNets, neural-graphs and ScaleGMN
read)::

    <root>/<prefix>/mnist_png_<split>_<label>_<index>/checkpoints/model_final.pth
    <root>/<splits_name>     {"train": {"path": [...], "label": [...]}, "val": {...}, "test": {...}}

Each ``.pth`` is a plain state dict (``torch.save`` of tensors only) of DWSNets' ``INR``: ``seq.<j>.weight``
/ ``seq.<j>.bias`` in layer order. DWSNets' INR adds 0.5 to its output, so the last bias is written minus 0.5:
the written network computes exactly the function of the source SIREN. Paths in the JSON are relative to
``root``. Files are written to temporary names and renamed, the JSON last, so an interrupted export never
leaves a splits file naming missing INRs.

>>> zoo = generate_digits_inr(DigitsINRConfig(variants=12))                     # doctest: +SKIP
>>> write_dws(zoo, "/data/digits-dws", splits=split_indices(image_index))       # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from ..generate.common import Progress

OUTPUT_OFFSET = 0.5  # DWSNets' INR returns seq(x) + 0.5


def dws_state(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """A SIREN state dict with keys ``<i>.weight`` / ``<i>.bias`` (``nn.Sequential`` layout, linear layers at
    indices ``i``) as DWSNets' ``seq.<j>.*`` keys, the last bias shifted by -0.5 (same function)."""
    layers = sorted({int(k.split(".")[0]) for k in sd if k.split(".")[0].isdigit()})
    unknown = [k for k in sd if not (k.split(".")[0].isdigit() and k.split(".")[-1] in ("weight", "bias"))]
    if unknown or not layers:
        raise ValueError(f"expected a SIREN state dict with keys '<i>.weight' / '<i>.bias'; got {sorted(sd)[:6]}")
    out: dict[str, Tensor] = {}
    for j, i in enumerate(layers):
        w, b = sd.get(f"{i}.weight"), sd.get(f"{i}.bias")
        if w is None or b is None:
            raise ValueError(f"layer {i} lacks a weight or a bias; DWSNets INRs have both in every layer")
        out[f"seq.{j}.weight"] = w.detach().clone().contiguous()
        out[f"seq.{j}.bias"] = b.detach().clone().contiguous()
    last = f"seq.{len(layers) - 1}.bias"
    out[last] = out[last] - OUTPUT_OFFSET
    return out


def write_dws(source, root: str | Path, splits: dict[str, Tensor], *, label: str = "label",
              prefix: str = "mnist-inrs", splits_name: str = "mnist_splits.json", progress: bool = True) -> Path:
    """Write the models of ``source`` (anything with ``state_dicts()`` yielding ``(state_dict, meta)`` in model
    order, e.g. a generated :class:`~wsl.data.generate.common.ZooDir`) in the DWSNets layout under ``root``.

    ``splits`` maps ``train`` / ``val`` / ``test`` to model indices (e.g. ``ZooDataset(...).splits``, so the
    reference code trains on exactly wsl's splits); models in no split are not written. Returns the path of
    the splits JSON.
    """
    root = Path(root)
    which: dict[int, str] = {}
    for s, idx in splits.items():
        for i in torch.as_tensor(idx).tolist():
            if i in which:
                raise ValueError(f"model {i} is in both the {which[i]!r} and the {s!r} split")
            which[i] = s
    table: dict[str, dict[str, list]] = {s: {"path": [], "label": []} for s in splits}
    bar = Progress(len(which), f"DWS export -> {root}", progress)
    seen = 0
    for i, (sd, meta) in enumerate(_models(source)):
        seen = i + 1
        s = which.get(i)
        if s is None:
            continue
        y = int(meta[label])
        rel = Path(prefix) / f"mnist_png_{s}_{y}_{i}" / "checkpoints" / "model_final.pth"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(dws_state(sd), tmp)
        os.replace(tmp, path)
        table[s]["path"].append(str(rel))
        table[s]["label"].append(str(y))
        bar.update(1)
    bar.close()
    missing = len(which) - sum(len(t["path"]) for t in table.values())
    if missing:
        raise ValueError(f"the splits name {missing} model indices beyond the {seen} models of the source")
    out = root / splits_name
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(table))
    os.replace(tmp, out)
    return out


def _models(source) -> Iterable[tuple[dict[str, Tensor], dict[str, Tensor]]]:
    if not hasattr(source, "state_dicts"):
        raise TypeError(f"write_dws needs a zoo source with state_dicts() (e.g. a ZooDir), got {type(source).__name__}")
    return source.state_dicts()
