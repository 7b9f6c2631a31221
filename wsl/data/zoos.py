"""Ready-made train / val / test datasets of the local zoos (the ``data`` targets of the Hydra configs)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .dataset import ZooDataset
from .generate.digits_cnn import DigitsCNNConfig, generate_digits_cnn
from .generate.digits_inr import DigitsINRConfig, generate_digits_inr


def splits(zoo, *, label: str, group: str, fractions: Sequence[float], seed: int,
           normalize: bool) -> dict[str, ZooDataset]:
    """Train / val / test :class:`ZooDataset` s of a zoo split by ``group``; with ``normalize`` every split
    standardizes weights with statistics of the *training* split."""
    data = {s: ZooDataset(zoo, s, label=label, group=group, fractions=tuple(fractions), seed=seed)
            for s in ("train", "val", "test")}
    if normalize:
        stats = data["train"].weight_stats()
        for ds in data.values():
            ds.transform = stats
    return data


def digits_inr(*, views: int = 1, variants: int = 1, distortion: float = 1.0, steps: int = 300, lr: float = 1e-3,
               limit: int | None = None, seed: int = 0, init: str = "independent", bias_init: str = "uniform",
               weight_decay: float = 0.0, split_seed: int = 0,
               fractions: Sequence[float] = (0.8, 0.1, 0.1), normalize: bool = True, root: str | Path | None = None,
               progress: bool = True, workers: int | None = None) -> dict[str, ZooDataset]:
    """digits-INR classification data: builds (or reuses) the zoo, splits by *source digit* (all views and
    distorted variants of a digit in one split), and standardizes weights per layer with statistics of the
    training split. ``variants=12, init="independent"`` is the benchmark-convention zoo (21,564 INRs)."""
    cfg = DigitsINRConfig(views=views, variants=variants, distortion=distortion, steps=steps, lr=lr, limit=limit,
                          seed=seed, init=init, bias_init=bias_init, weight_decay=weight_decay)
    zoo = generate_digits_inr(cfg, root, progress=progress, workers=workers)
    return splits(zoo, label="label", group="image_index", fractions=fractions, seed=split_seed, normalize=normalize)


def digits_cnn(*, runs: int = 256, seed: int = 0, label: str = "test_accuracy", split_seed: int = 0,
               fractions: Sequence[float] = (0.8, 0.1, 0.1), normalize: bool = True, root: str | Path | None = None,
               progress: bool = True, **config) -> dict[str, ZooDataset]:
    """digits-CNN generalization-prediction data: builds (or reuses) the zoo of small digit classifiers of
    varied architecture (:mod:`wsl.data.generate.digits_cnn`), labels every checkpoint with ``label`` (its
    test accuracy by default: a regression target), splits by *run* (all checkpoints of a run in one split),
    and standardizes weights per architecture and tensor with statistics of the training split.

    ``config``: further :class:`~wsl.data.generate.digits_cnn.DigitsCNNConfig` fields; a single value or a
    list where the config holds a tuple of choices (``epochs=2`` trains every run for 2 epochs).
    """
    cfg = DigitsCNNConfig(runs=runs, seed=seed, **config)
    zoo = generate_digits_cnn(cfg, root, progress=progress)
    return splits(zoo, label=label, group="run", fractions=fractions, seed=split_seed, normalize=normalize)
