"""Small CNN Zoo (Unterthiner et al. 2020, "Predicting Neural Network Accuracy from Weights").

One directory per image dataset (``cifar10``, ``mnist``, ``fashion_mnist``, ``svhn_cropped``)::

    weights.npy       [rows, 4970] float32: every checkpoint's parameters, flattened in TensorFlow layout
    layout.csv        one row per variable: varname (``sequential/conv2d_1/kernel:0``), shape (``(3, 3, 16, 16)``),
                      start_idx, end_idx (its column range in weights.npy); other columns are ignored
    metrics.csv.gz    one row per weights.npy row: ``config.*`` hyperparameters (activation, dropout, w_init,
                      learning_rate, ...), ``modeldir``, ``step`` (epoch of the checkpoint: 0, 1, 2, 3, 20, 40,
                      60, 80, 86), ``test_accuracy``, ``test_loss``, ``train_accuracy``, ``train_loss``

The network (``dnn_predict_accuracy/train_network.py``, ``build_cnn``): 3 x [Conv2D(16, 3x3, stride 2, VALID
padding) + activation] -> global average pooling -> Dense(10), on grayscale images. TensorFlow stores conv kernels
as ``[H, W, in, out]`` and dense kernels as ``[in, out]``; PyTorch wants ``[out, in, H, W]`` and ``[out, in]``.
:func:`tf_to_torch` does that transposition; the tests check it numerically against a direct NHWC forward pass.

Conventions of the literature (NFN, neural graphs, ScaleGMN): keep the final checkpoints (``step == 86``, here
``step="final"``: the largest step in the file), drop models with non-finite weights or accuracy, and split as NFN
did: an optional fixed order (their ``*_split.csv``), then the second half is test and the first half is shuffled
with ``random.Random(0)`` into 80 % train / 20 % val (``split="nfn"``).
"""

from __future__ import annotations

import ast
import csv
import gzip
import math
import re
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .base import (
    ZooFormatError,
    ZooRecords,
    activation,
    require_file,
    seeded_group_split,
    set_example_image,
)

_VAR = re.compile(r"^(?:.*/)?(conv2d|dense)(?:_(\d+))?/(kernel|bias):0$")


class SmallCNN(nn.Module):
    """The zoo's CNN in PyTorch layout: ``[conv(k, stride) -> act] * L -> global average pool -> linear``.

    State-dict keys: ``convs.<i>.weight|bias`` and ``fc.weight|bias``.
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (16, 16, 16), num_classes: int = 10,
                 kernel_size: int = 3, stride: int = 2, act: str = "relu") -> None:
        super().__init__()
        dims = [in_channels, *channels]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, kernel_size, stride=stride) for a, b in pairwise(dims))
        self.act = activation(act)
        self.fc = nn.Linear(dims[-1], num_classes)
        self.activation_name = act
        set_example_image(self, in_channels, 32)  # traced on a small image (global pooling: any size works)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = self.act(conv(x))
        return self.fc(x.mean(dim=(2, 3)))


# ---------------------------------------------------------------------- layout
class Layout:
    """Parsed ``layout.csv``: ``(varname, shape, start, end)`` per variable, in column order."""

    def __init__(self, rows: list[tuple[str, tuple[int, ...], int, int]], source: Path) -> None:
        self.rows, self.source = sorted(rows, key=lambda r: r[2]), source
        self.convs: list[tuple[str, str]] = []  # (kernel var, bias var) in network order
        found: dict[tuple[str, int], dict[str, str]] = {}
        for name, shape, start, end in self.rows:
            m = _VAR.match(name)
            if m is None:
                raise ZooFormatError(f"{source}: variable {name!r} is not a conv2d/dense kernel or bias; "
                                     "only the plain 'cnn' architecture of the Small CNN Zoo is supported")
            if end - start != math.prod(shape):
                raise ZooFormatError(f"{source}: {name} spans columns {start}:{end} but has shape {shape}")
            found.setdefault((m.group(1), int(m.group(2) or 0)), {})[m.group(3)] = name
        for key, parts in found.items():
            if set(parts) != {"kernel", "bias"}:
                raise ZooFormatError(f"{source}: layer {key[0]}_{key[1]} lacks its kernel or bias")
        self.convs = [(found[k]["kernel"], found[k]["bias"]) for k in sorted(k for k in found if k[0] == "conv2d")]
        dense = sorted(k for k in found if k[0] == "dense")
        if not self.convs or len(dense) != 1:
            raise ZooFormatError(f"{source}: expected conv2d layers and exactly one dense layer, found "
                                 f"{len(self.convs)} conv and {len(dense)} dense layers")
        self.dense = (found[dense[0]]["kernel"], found[dense[0]]["bias"])
        self.by_name = {r[0]: r for r in self.rows}
        self.num_params = max(r[3] for r in self.rows)

    def module_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the matching :class:`SmallCNN` (activation aside)."""
        kshapes = [self.by_name[k][1] for k, _ in self.convs]
        for (k, _), s in zip(self.convs, kshapes):
            if len(s) != 4 or s[0] != s[1] or s[:2] != kshapes[0][:2]:
                raise ZooFormatError(f"{self.source}: conv kernel {k} has shape {s}; expected [k, k, in, out]")
        dshape = self.by_name[self.dense[0]][1]
        if len(dshape) != 2 or dshape[0] != kshapes[-1][3]:
            raise ZooFormatError(f"{self.source}: dense kernel shape {dshape} does not follow the last conv "
                                 f"({kshapes[-1][3]} channels)")
        return {"in_channels": kshapes[0][2], "channels": [s[3] for s in kshapes], "num_classes": dshape[1],
                "kernel_size": kshapes[0][0]}


def read_layout(path: Path) -> Layout:
    """Parse ``layout.csv`` (columns ``varname``, ``shape``, ``start_idx``, ``end_idx``; others ignored)."""
    require_file(path, "the Small CNN Zoo layout (varname, shape, start_idx, end_idx per variable)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        need = {"varname", "shape", "start_idx", "end_idx"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise ZooFormatError(f"{path}: header {reader.fieldnames} lacks columns {sorted(need)}")
        rows = []
        for line, r in enumerate(reader, start=2):
            try:
                shape = tuple(int(s) for s in ast.literal_eval(r["shape"]))
                rows.append((r["varname"], shape, int(r["start_idx"]), int(r["end_idx"])))
            except (ValueError, SyntaxError, TypeError) as e:
                raise ZooFormatError(f"{path}, line {line}: cannot parse {r} ({e})") from None
    if not rows:
        raise ZooFormatError(f"{path}: no variables listed")
    return Layout(rows, path)


def tf_to_torch(flat: np.ndarray, layout: Layout) -> dict[str, Tensor]:
    """One flattened TF-layout parameter vector -> a :class:`SmallCNN` state dict (HWIO -> OIHW, [in,out] -> [out,in])."""
    def var(name: str) -> np.ndarray:
        _, shape, start, end = layout.by_name[name]
        return np.asarray(flat[start:end], dtype=np.float32).reshape(shape)

    sd: dict[str, Tensor] = {}
    for i, (k, b) in enumerate(layout.convs):
        sd[f"convs.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(var(k).transpose(3, 2, 0, 1)))
        sd[f"convs.{i}.bias"] = torch.from_numpy(var(b).copy())
    sd["fc.weight"] = torch.from_numpy(np.ascontiguousarray(var(layout.dense[0]).T))
    sd["fc.bias"] = torch.from_numpy(var(layout.dense[1]).copy())
    return sd


# ---------------------------------------------------------------------- metrics
def _column(values: list[str]) -> list[Any]:
    """A CSV column as ints, else floats (empty cells NaN), else the strings themselves."""
    try:
        return [int(v) for v in values]
    except ValueError:
        pass
    try:
        return [float(v) if v != "" else math.nan for v in values]
    except ValueError:
        return values


def read_metrics(path: Path) -> dict[str, list[Any]]:
    """``metrics.csv.gz`` (or a plain ``metrics.csv``) as columns: ints, floats (empty cells NaN) or strings."""
    require_file(path, "per-checkpoint metrics (config.*, step, test_accuracy, ...) as gzipped CSV")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None) or []
            rows = [r for r in reader if r]
    except (OSError, EOFError, csv.Error, UnicodeDecodeError) as e:
        raise ZooFormatError(f"{path}: not a readable (gzipped) CSV file ({e})") from None
    bad = next((n for n, r in enumerate(rows, start=2) if len(r) != len(header)), None)
    if bad is not None:
        raise ZooFormatError(f"{path}, line {bad}: {len(rows[bad - 2])} cells for {len(header)} columns")
    cols = {k: _column([r[j] for r in rows]) for j, k in enumerate(header) if k != ""}  # "" = pandas' index
    for need in ("step",):
        if need not in cols:
            raise ZooFormatError(f"{path}: no {need!r} column; columns: {sorted(cols)[:12]}")
    return cols


# ---------------------------------------------------------------------- loader
def load(root: str | Path, *, step: int | str | None = "final", label: str = "test_accuracy",
         drop_nan: bool = True, split: str = "nfn", order_csv: str | Path | None = None,
         fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0, stride: int = 2) -> ZooRecords:
    """Read one Small CNN Zoo directory.

    Args:
        root: the directory holding ``weights.npy``, ``layout.csv``, ``metrics.csv.gz``.
        step: keep checkpoints of this ``step``; ``"final"`` = the largest step in the file (86 in the
            published zoo); ``None`` keeps every checkpoint.
        label: the metrics column used as ``labels`` (``test_accuracy``, ``train_accuracy``, ...).
        drop_nan: drop models whose weights or label are not finite (crashed runs).
        split: ``"nfn"`` (second half test, first half 80/20 train/val after ``random.Random(0)`` shuffling),
            ``"grouped"`` (seeded split by ``modeldir``, so checkpoints of one run stay together), or ``"none"``.
        order_csv: NFN's fixed order file (one weights.npy row index per line), applied before filtering.
        fractions, seed: the ``"grouped"`` split.
        stride: the conv stride (2 in the published zoo).
    """
    root = Path(root)
    layout = read_layout(root / "layout.csv")
    wfile = require_file(root / "weights.npy", "the [models, params] float32 weight matrix")
    try:
        weights = np.load(wfile, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ZooFormatError(f"{wfile}: not a readable .npy array ({e})") from None
    if weights.ndim != 2 or weights.shape[1] != layout.num_params:
        raise ZooFormatError(f"{wfile}: shape {weights.shape}, but layout.csv describes {layout.num_params} "
                             "parameters per model ([models, params] expected)")
    mfile = root / "metrics.csv.gz"
    metrics = read_metrics(mfile if mfile.exists() or not (root / "metrics.csv").exists() else root / "metrics.csv")
    n_rows = len(metrics["step"])
    if n_rows != weights.shape[0]:
        raise ZooFormatError(f"{mfile}: {n_rows} rows but weights.npy has {weights.shape[0]}; they must match")
    if label not in metrics:
        raise ZooFormatError(f"{mfile}: no column {label!r} to use as label; columns: {sorted(metrics)}")

    rows = np.arange(n_rows)
    if order_csv is not None:
        rows = _read_order(Path(order_csv), n_rows)
    steps = np.asarray(metrics["step"], dtype=np.float64)
    if step is not None:
        target = np.nanmax(steps) if step == "final" else float(step)
        rows = rows[steps[rows] == target]
    if drop_nan:
        y = np.asarray(metrics[label], dtype=np.float64)
        rows = rows[np.isfinite(y[rows])]
        rows = rows[_finite_rows(weights, rows)]
    if len(rows) == 0:
        raise ZooFormatError(f"{root}: no models left after filtering (step={step!r}, drop_nan={drop_nan})")

    acts = metrics.get("config.activation", ["relu"] * n_rows)
    kinds = sorted({str(acts[r]) for r in rows})
    for a in kinds:
        activation(a, f"{mfile}: column config.activation: ")
    kwargs = layout.module_kwargs()
    archs = [SmallCNN(**kwargs, stride=stride, act=a) for a in kinds]
    arch_index = [kinds.index(str(acts[r])) for r in rows]
    meta = {k: [v[r] for r in rows] for k, v in metrics.items()}
    meta["row"] = rows.tolist()
    labels = torch.tensor([float(metrics[label][r]) for r in rows], dtype=torch.float32)
    splits = _splits(split, len(rows), [str(x) for x in meta.get("modeldir", rows.tolist())], fractions, seed)
    rows_l = rows.tolist()
    return ZooRecords(f"small_cnn_zoo:{root.name}", archs=archs, arch_index=arch_index,
                      load=_RowLoader(wfile, rows_l, layout), labels=labels, metadata=meta,
                      splits=splits, sources=[f"{wfile}[row {r}]" for r in rows_l])


class _RowLoader:
    """``load(i)``: row ``rows[i]`` of weights.npy as a state dict; the memory map is (re)opened lazily, so the
    loader pickles as a path (DataLoader workers) instead of copying the matrix."""

    def __init__(self, file: Path, rows: list[int], layout: Layout) -> None:
        self.file, self.rows, self.layout, self._w = file, rows, layout, None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_w": None}

    def __call__(self, i: int) -> dict[str, Tensor]:
        if self._w is None:
            self._w = np.load(self.file, mmap_mode="r", allow_pickle=False)
        return tf_to_torch(self._w[self.rows[i]], self.layout)


def _read_order(path: Path, n: int) -> np.ndarray:
    require_file(path, "one weights.npy row index per line (NFN's *_split.csv)")
    try:
        order = np.asarray([int(float(line.split(",")[0])) for line in path.read_text().split() if line.strip()])
    except ValueError as e:
        raise ZooFormatError(f"{path}: expected one integer row index per line ({e})") from None
    if len(order) == n + 1:  # some published order files carry one extra leading line
        order = order[1:]
    if len(order) != n or order.min() < 0 or order.max() >= n or len(np.unique(order)) != n:
        raise ZooFormatError(f"{path}: must be a permutation of the {n} rows of weights.npy")
    return order


def _finite_rows(weights: np.ndarray, rows: np.ndarray, chunk: int = 4096) -> np.ndarray:
    keep = np.empty(len(rows), dtype=bool)
    for s in range(0, len(rows), chunk):  # reads only the selected rows of the memory map
        keep[s:s + chunk] = np.isfinite(np.asarray(weights[rows[s:s + chunk]])).all(axis=1)
    return keep


def _splits(kind: str, n: int, groups: list[str], fractions: Sequence[float], seed: int) -> dict[str, Tensor] | None:
    if kind == "none":
        return None
    if kind == "grouped":
        return seeded_group_split(groups, fractions, seed)
    if kind != "nfn":
        raise ValueError(f"split must be 'nfn', 'grouped' or 'none', got {kind!r}")
    import random

    test_point = int(0.5 * n)
    trainval = list(range(test_point))
    val_point = int(0.8 * len(trainval))
    random.Random(0).shuffle(trainval)
    return {"train": torch.tensor(trainval[:val_point], dtype=torch.long),
            "val": torch.tensor(trainval[val_point:], dtype=torch.long),
            "test": torch.arange(test_point, n)}
