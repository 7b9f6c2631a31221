"""digits-INR: SIRENs fitted to scikit-learn's bundled digit images — the local MNIST-INR benchmark.

Each of the 1,797 ``sklearn.datasets.load_digits`` images (8x8) is upsampled (bilinear) to ``size x size``;
with ``variants > 1`` every digit also appears as ``variants - 1`` seeded random distortions of it
(:mod:`.distort`: affine + elastic), each a distinct image. Every image is fitted by ``views`` SIRENs
``2 -> hidden -> ... -> 1`` (``sin(w0 x)`` activations, SIREN initialization); ``init="independent"`` gives
every INR its own random initialization (the convention of the published MNIST / FashionMNIST / CIFAR-10
INR zoos), ``init="shared"`` one per view index. Labels are the digit classes; ``image_index`` names the
*source* digit, so splits by it keep all variants of a digit together. Fitting is batched with
hand-written gradients (:mod:`.siren_fit`; every INR has its own parameters and Adam state).

The benchmark-convention zoo is ``DigitsINRConfig(variants=12, init="independent")``: 21,564 INRs, one per
distinct image, an independent init each (``wsl train data=digits_inr_bench``).

>>> zoo = generate_digits_inr(DigitsINRConfig(views=1))      # doctest: +SKIP
>>> for state_dict, meta in zoo.state_dicts(): ...           # meta: label, image_index, view, mse
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import (
    FORMAT,
    Progress,
    ZooDir,
    atomic_write_text,
    cache_root,
    config_hash,
    model_seed,
    open_zoo_dir,
    save_shard,
)
from .distort import distort
from .siren_fit import SirenPool, coordinate_grid, fit_sirens_on_grid  # noqa: F401  (coordinate_grid re-exported)

NUM_DIGITS = 1797


class Sine(nn.Module):
    """``sin(w0 * x)``."""

    def __init__(self, w0: float = 30.0) -> None:
        super().__init__()
        self.w0 = w0

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.w0 * x)

    def extra_repr(self) -> str:
        return f"w0={self.w0}"


def siren(in_dim: int = 2, hidden: int = 32, depth: int = 2, out_dim: int = 1, w0: float = 30.0) -> nn.Sequential:
    """SIREN ``in -> hidden (x depth) -> out`` as an ``nn.Sequential`` (keys ``0.weight``, ``0.bias``, ``2.weight``, ...)."""
    layers: list[nn.Module] = []
    dims = [in_dim] + [hidden] * depth
    for a, b in pairwise(dims):
        layers += [nn.Linear(a, b), Sine(w0)]
    layers.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class DigitsINRConfig:
    size: int = 28  # image side after upsampling
    views: int = 1  # INRs per image (each its own fit; with init="shared" view v starts from init v)
    variants: int = 1  # distinct images per source digit: the original + (variants - 1) random distortions
    distortion: float = 1.0  # strength of the distortions (scales every range of distort.Distortion)
    hidden: int = 32
    depth: int = 2  # hidden layers
    w0: float = 30.0
    steps: int = 300  # Adam steps per INR
    lr: float = 1e-3
    shard_size: int = 512  # INRs fitted together (and stored per file)
    seed: int = 0
    limit: int | None = None  # use only the first `limit` images (quick runs, tests)
    init: str = "independent"  # "independent": every INR its own random init; "shared": one init per view index
    bias_init: str = "uniform"  # "uniform": U(-1/sqrt(in), 1/sqrt(in)) (nn.Linear's); "zero": DWSNets' INR init
    weight_decay: float = 0.0  # L2 penalty in Adam while fitting (torch.optim.Adam's weight_decay)

    def __post_init__(self) -> None:
        if self.init not in ("independent", "shared"):
            raise ValueError(f"DigitsINRConfig.init must be 'independent' or 'shared', got {self.init!r}")
        if self.bias_init not in ("uniform", "zero"):
            raise ValueError(f"DigitsINRConfig.bias_init must be 'uniform' or 'zero', got {self.bias_init!r}")
        if self.views < 1 or self.variants < 1:
            raise ValueError(f"DigitsINRConfig views and variants must be >= 1, got {self.views}, {self.variants}")

    @property
    def num_images(self) -> int:
        return NUM_DIGITS if self.limit is None else min(self.limit, NUM_DIGITS)


def digit_images(size: int = 28) -> tuple[Tensor, Tensor]:
    """``(images [1797, size, size] in [0, 1], labels [1797])`` from scikit-learn's bundled digits."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("digits zoos need scikit-learn: pip install scikit-learn (or 'wsl[train]')") from e
    d = load_digits()
    img = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    if size != 8:
        img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=True)
    return img[:, 0].clamp(0, 1), torch.tensor(d.target, dtype=torch.long)


def siren_init(cfg: DigitsINRConfig, generator: torch.Generator) -> dict[str, Tensor]:
    """SIREN initialization (first layer ``U(-1/in, 1/in)``, later ``U(-sqrt(6/in)/w0, ...)``); biases
    ``U(-1/sqrt(in), 1/sqrt(in))`` or, ``bias_init="zero"``, zero (as DWSNets' INRs, the MNIST / FashionMNIST
    INR zoos: a fitted bias is then pure signal, not signal plus an initial draw)."""
    dims = [2] + [cfg.hidden] * cfg.depth + [1]
    out: dict[str, Tensor] = {}
    for i, (a, b) in enumerate(pairwise(dims)):
        bound = 1.0 / a if i == 0 else math.sqrt(6.0 / a) / cfg.w0
        out[f"{2 * i}.weight"] = (torch.rand(b, a, generator=generator) * 2 - 1) * bound
        bias = (torch.rand(b, generator=generator) * 2 - 1) / math.sqrt(a)  # drawn either way: same weights
        out[f"{2 * i}.bias"] = bias if cfg.bias_init == "uniform" else torch.zeros_like(bias)
    return out


def batched_siren(params: dict[str, Tensor], coords: Tensor, w0: float) -> Tensor:
    """Evaluate ``B`` SIRENs with stacked parameters on shared ``coords`` ``[P, 2]`` -> ``[B, P]``."""
    keys = sorted({k.split(".")[0] for k in params}, key=int)
    h = coords.expand(params[f"{keys[0]}.weight"].shape[0], *coords.shape)
    for j, k in enumerate(keys):
        h = torch.baddbmm(params[f"{k}.bias"][:, None, :], h, params[f"{k}.weight"].transpose(1, 2))
        if j < len(keys) - 1:
            h = torch.sin(w0 * h)
    return h[..., 0]


def fit_sirens(init: dict[str, Tensor], targets: Tensor, cfg: DigitsINRConfig) -> tuple[dict[str, Tensor], Tensor]:
    """Fit one SIREN per target image (batched, hand-written gradients: :mod:`.siren_fit`); returns the fitted
    stacked parameters and per-INR MSE."""
    return fit_sirens_on_grid(init, targets, w0=cfg.w0, steps=cfg.steps, lr=cfg.lr, weight_decay=cfg.weight_decay)


def zoo_path(cfg: DigitsINRConfig, root: str | Path | None = None) -> Path:
    return Path(root) if root is not None else cache_root() / "zoos" / f"digits-inr-{config_hash(cfg)}"


def generate_digits_inr(cfg: DigitsINRConfig = DigitsINRConfig(), root: str | Path | None = None, *,
                        progress: bool = True, max_shards: int | None = None, workers: int | None = None) -> ZooDir:
    """Build (or finish building, or just open) the digits-INR zoo for ``cfg``; returns it as a :class:`ZooDir`.

    ``root`` defaults to ``<cache>/zoos/digits-inr-<config hash>``. Completed shards are kept and skipped,
    so an interrupted call resumes. ``max_shards`` stops after that many new shards (for tests / budgets).
    ``workers``: processes that fit INRs side by side, one thread each (default: one per CPU core, up to 8,
    for zoos of 1,024 INRs or more still to fit; otherwise in this process). The result does not depend on it.
    """
    path = zoo_path(cfg, root)
    mf = open_zoo_dir(path, asdict(cfg))
    total = cfg.num_images * cfg.variants * cfg.views
    num_shards = math.ceil(total / cfg.shard_size)
    images, labels = digit_images(cfg.size)
    shards, done = [], 0
    for s in range(num_shards):
        if (path / f"shard_{s:05d}.safetensors").is_file():
            lo, hi = s * cfg.shard_size, min(total, (s + 1) * cfg.shard_size)
            shards.append({"file": f"shard_{s:05d}.safetensors", "count": hi - lo})
            done += hi - lo
    bar = Progress(total, "digits-INR zoo", progress, initial=done)
    new = 0
    t0 = time.perf_counter()
    with SirenPool(_num_workers(workers, total - done)) as pool:
        for s in range(num_shards):
            if max_shards is not None and new >= max_shards:
                break
            new += _build_shard(s, cfg, path, images, labels, shards, mf, total, bar, pool)
    bar.close()
    _write_manifest(mf, cfg, shards, total, seconds=time.perf_counter() - t0 if new else None)
    return ZooDir(path)


def _num_workers(workers: int | None, remaining: int) -> int:
    if workers is not None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        return workers
    return min(os.cpu_count() or 1, 8) if remaining >= 1024 else 1


def _build_shard(s: int, cfg: DigitsINRConfig, path: Path, images: Tensor, labels: Tensor, shards: list, mf: Path,
                 total: int, bar: Progress, pool: SirenPool) -> int:
    """Fit and save shard ``s`` unless it exists; returns 1 if it was built."""
    name = f"shard_{s:05d}.safetensors"
    if (path / name).is_file():
        return 0
    lo, hi = s * cfg.shard_size, min(total, (s + 1) * cfg.shard_size)
    idx = torch.arange(lo, hi)
    img_idx, variant, view = idx // (cfg.variants * cfg.views), (idx // cfg.views) % cfg.variants, idx % cfg.views
    inits = [siren_init(cfg, torch.Generator().manual_seed(_init_seed(cfg, int(m), int(v))))
             for m, v in zip(idx, view)]
    stacked = {k: torch.stack([p[k] for p in inits]) for k in inits[0]}
    params, mse = pool.fit(stacked, variant_images(images, img_idx, variant, cfg), w0=cfg.w0, steps=cfg.steps,
                           lr=cfg.lr, weight_decay=cfg.weight_decay)
    meta = {"label": labels[img_idx], "image_index": img_idx, "variant": variant, "view": view, "mse": mse.float()}
    save_shard(path / name, params, meta)
    shards.append({"file": name, "count": hi - lo})
    shards.sort(key=lambda d: d["file"])
    _write_manifest(mf, cfg, shards, total)
    psnr = float((-10 * torch.log10(mse.clamp(min=1e-12))).mean())
    bar.update(hi - lo, psnr=f"{psnr:.1f}dB")
    return 1


def variant_images(images: Tensor, image_index: Tensor, variant: Tensor, cfg: DigitsINRConfig) -> Tensor:
    """The images to fit: variant 0 is the digit itself, variant ``v > 0`` its distortion seeded by
    ``(seed, digit, v)`` (independent of sharding and of ``views``)."""
    out = images[image_index].clone()
    for j in torch.nonzero(variant > 0).flatten().tolist():
        m, v = int(image_index[j]), int(variant[j])
        g = torch.Generator().manual_seed(model_seed(cfg.seed, m * cfg.variants + v, stream="distort"))
        out[j] = distort(images[m : m + 1], g, strength=cfg.distortion)[0]
    return out


def _init_seed(cfg: DigitsINRConfig, index: int, view: int) -> int:
    """Seed of an INR's initialization: per model, or (``init="shared"``) per view index, so that every image's
    view ``v`` starts from the same weights (the zoo is then aligned, as fits from one meta-init are)."""
    return model_seed(cfg.seed, index) if cfg.init == "independent" else model_seed(cfg.seed, -1 - view)


def _write_manifest(mf: Path, cfg: DigitsINRConfig, shards: list, total: int, seconds: float | None = None) -> None:
    done = sum(s["count"] for s in shards)
    info = {
        "format": FORMAT,
        "kind": "digits-inr",
        "config": asdict(cfg),
        "architecture": {"constructor": "wsl.data.generate.digits_inr:siren",
                         "kwargs": {"hidden": cfg.hidden, "depth": cfg.depth, "w0": cfg.w0}},
        "num_models": total,
        "shards": shards,
        "complete": done == total,
    }
    if mf.is_file() and seconds is None:
        old = json.loads(mf.read_text())
        info["last_build_seconds"] = old.get("last_build_seconds")
        if old == info:  # opening a finished zoo writes nothing (torchrun ranks open it side by side)
            return
    elif seconds is not None:
        info["last_build_seconds"] = round(seconds, 1)
    atomic_write_text(mf, json.dumps(info, indent=1))
