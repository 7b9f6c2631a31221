"""digits-CNN: small classifiers of varied architecture and hyperparameters trained on scikit-learn's digits.

The local stand-in for the Small CNN Zoo (generalization prediction). Each *run* ``r`` samples, from a
generator seeded by ``model_seed(seed, r)``:

* an architecture (:func:`~wsl.data.generate.cnn_arch.digits_cnn`): depth 1-3 conv layers, width, kernel
  3 / 5, activation, residual blocks (depth > 1), BatchNorm or none; global average pool + linear head;
* hyperparameters: AdamW learning rate and weight decay (log-uniform), init scale (multiplies PyTorch's
  default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``), dropout before the head, batch size, number of epochs;

then trains on a fixed split of the 1,797 8x8 digit images (standardized, see :func:`digits_split`;
``test_fraction`` held out by a permutation seeded with ``split_seed``, identical for every run) and keeps a
checkpoint after each epoch in ``checkpoints`` that is at most its epoch count. Every checkpoint is one zoo
item, labelled with its ``test_accuracy`` (plus ``train_accuracy``, ``train_loss``, ``test_loss``, ``epoch``,
``run`` and all hyperparameters as metadata); ``arch`` indexes the manifest's ``architectures`` list, whose
entries rebuild the module through ``ZooDir.architecture(i)``. Accuracies are measured in eval mode on the exact stored
weights, so a checkpoint rebuilt with :func:`wsl.from_graph` reproduces its label.

Runs are trained one at a time (models are tiny; minibatch AdamW), ``runs_per_shard`` runs per shard; the
default zoo (256 runs, 1,006 checkpoints) takes about 160 s of one CPU core (``datasets/digits_cnn.md``).
Weights are bit-exact for a given seed on a given machine and thread count (CPU kernels may round
differently with other thread counts).

>>> zoo = generate_digits_cnn(DigitsCNNConfig(runs=64))                 # doctest: +SKIP
>>> model = zoo.architecture(int(meta["arch"])); model.load_state_dict(sd)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from itertools import product
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cnn_arch import ACTIVATIONS, NORMS, DigitsCNN, digits_cnn
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
from .digits_inr import digit_images

CONSTRUCTOR = "wsl.data.generate.cnn_arch:digits_cnn"
PIXEL_MEAN, PIXEL_STD = 0.3, 0.38


@dataclass(frozen=True)
class DigitsCNNConfig:
    runs: int = 256
    checkpoints: tuple[int, ...] = (1, 2, 4, 8, 16)  # epochs after which a run is saved (if it gets there)
    epochs: tuple[int, ...] = (4, 8, 16)  # choices of a run's length
    depths: tuple[int, ...] = (1, 2, 3)
    widths: tuple[int, ...] = (4, 6, 8, 12, 16)
    kernels: tuple[int, ...] = (3, 5)
    activations: tuple[str, ...] = ("relu", "gelu", "tanh", "silu")
    norms: tuple[str, ...] = NORMS
    batch_sizes: tuple[int, ...] = (64, 128)
    lr: tuple[float, float] = (1e-3, 5e-2)  # log-uniform range
    weight_decay: tuple[float, float] = (1e-6, 1e-1)  # log-uniform range
    init_scale: tuple[float, float] = (0.2, 3.0)  # log-uniform range
    dropout: tuple[float, float] = (0.0, 0.5)  # uniform range
    test_fraction: float = 0.25
    split_seed: int = 0
    runs_per_shard: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):  # a single value or a list (Hydra) where a tuple is expected: make it a tuple
            v = getattr(self, f.name)
            if str(f.type).startswith("tuple") and not isinstance(v, tuple):
                object.__setattr__(self, f.name, tuple(v) if isinstance(v, Sequence) and not isinstance(v, str)
                                   else (v,))
        for name in ("checkpoints", "epochs", "depths", "widths", "kernels", "activations", "norms", "batch_sizes"):
            if not getattr(self, name):
                raise ValueError(f"DigitsCNNConfig.{name} must not be empty")
        bad = [a for a in self.activations if a not in ACTIVATIONS] + [n for n in self.norms if n not in NORMS]
        if bad:
            raise ValueError(f"unknown activation / norm {bad}; choose from {sorted(ACTIVATIONS)} / {NORMS}")
        if min(self.epochs) < min(self.checkpoints):
            raise ValueError(f"every run must reach a checkpoint: min(epochs)={min(self.epochs)} < "
                             f"min(checkpoints)={min(self.checkpoints)}")


def architectures(cfg: DigitsCNNConfig) -> list[dict[str, Any]]:
    """The fixed list of architecture kwargs a zoo may use (``meta["arch"]`` indexes it)."""
    out = []
    for d, w, k, a, r, n in product(cfg.depths, cfg.widths, cfg.kernels, cfg.activations, (False, True), cfg.norms):
        if r and d == 1:
            continue  # a one-layer net has no residual block
        out.append({"depth": d, "width": w, "kernel": k, "activation": a, "residual": r, "norm": n})
    return out


def digits_split(test_fraction: float = 0.25, split_seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)``: 8x8 digit images ``[n, 1, 8, 8]``, fixed split.

    Pixels are ``(value / 16 - PIXEL_MEAN) / PIXEL_STD`` (mean / std over all 1,797 images, rounded), the
    input every checkpoint of the zoo was trained and evaluated on.
    """
    images, labels = digit_images(8)
    images = (images - PIXEL_MEAN) / PIXEL_STD
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(split_seed))
    n_test = round(test_fraction * len(images))
    te, tr = perm[:n_test], perm[n_test:]
    return images[tr, None], labels[tr], images[te, None], labels[te]


def _log_uniform(lo: float, hi: float, g: torch.Generator) -> float:
    return math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * float(torch.rand((), generator=g)))


def _choice(options: tuple, g: torch.Generator) -> Any:
    return options[int(torch.randint(len(options), (), generator=g))]


def sample_run(cfg: DigitsCNNConfig, g: torch.Generator) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(architecture kwargs, hyperparameters)`` of one run, drawn from ``g``."""
    depth = _choice(cfg.depths, g)
    arch = {"depth": depth, "width": _choice(cfg.widths, g), "kernel": _choice(cfg.kernels, g),
            "activation": _choice(cfg.activations, g), "residual": bool(torch.rand((), generator=g) < 0.5),
            "norm": _choice(cfg.norms, g)}
    arch["residual"] = arch["residual"] and depth > 1
    hp = {"lr": _log_uniform(*cfg.lr, g), "weight_decay": _log_uniform(*cfg.weight_decay, g),
          "init_scale": _log_uniform(*cfg.init_scale, g),
          "dropout": cfg.dropout[0] + (cfg.dropout[1] - cfg.dropout[0]) * float(torch.rand((), generator=g)),
          "batch_size": _choice(cfg.batch_sizes, g), "epochs": _choice(cfg.epochs, g)}
    return arch, hp


def num_checkpoints(cfg: DigitsCNNConfig, run: int) -> int:
    """How many checkpoints run ``run`` keeps (cheap: samples its hyperparameters only)."""
    _, hp = sample_run(cfg, torch.Generator().manual_seed(model_seed(cfg.seed, run)))
    return sum(e <= hp["epochs"] for e in cfg.checkpoints)


def init_(model: nn.Module, scale: float, g: torch.Generator) -> None:
    """PyTorch's default conv / linear init range times ``scale``, drawn from ``g`` (norm layers: 1 and 0)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                bound = scale / math.sqrt(m.weight[0].numel())
                m.weight.copy_((torch.rand(m.weight.shape, generator=g) * 2 - 1) * bound)
                if m.bias is not None:
                    m.bias.copy_((torch.rand(m.bias.shape, generator=g) * 2 - 1) * bound)


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``model`` in eval mode (non-finite outputs count as wrong)."""
    was = model.training
    model.eval()
    logits = model(x)
    model.train(was)
    ok = torch.isfinite(logits).all(dim=1)
    acc = float(((logits.argmax(dim=1) == y) & ok).float().mean())
    loss = float(F.cross_entropy(logits, y)) if bool(ok.all()) else float("inf")
    return acc, loss


def train_run(arch: dict[str, Any], hp: dict[str, Any], checkpoints: tuple[int, ...], data: tuple[Tensor, ...],
              g: torch.Generator) -> list[tuple[int, dict[str, Tensor], dict[str, float]]]:
    """Train one run; ``[(epoch, state_dict, {train/test accuracy and loss})]`` at each checkpoint epoch."""
    x_tr, y_tr, x_te, y_te = data
    model: DigitsCNN = digits_cnn(**arch)
    init_(model, hp["init_scale"], g)
    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"],
                            foreach=True)
    keep = sorted(e for e in checkpoints if e <= hp["epochs"])
    out = []
    bs, p = hp["batch_size"], hp["dropout"]
    for epoch in range(1, hp["epochs"] + 1):
        model.train()
        order = torch.randperm(len(x_tr), generator=g)
        for i in range(0, len(order), bs):
            idx = order[i : i + bs]
            h = model.embed(x_tr[idx])
            if p > 0:
                h = h * (torch.rand(h.shape, generator=g) >= p) / (1 - p)
            loss = F.cross_entropy(model.head(h), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch in keep:
            tr_acc, tr_loss = evaluate(model, x_tr, y_tr)
            te_acc, te_loss = evaluate(model, x_te, y_te)
            sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
            out.append((epoch, sd, {"train_accuracy": tr_acc, "train_loss": tr_loss,
                                    "test_accuracy": te_acc, "test_loss": te_loss}))
    return out


def zoo_path(cfg: DigitsCNNConfig, root: str | Path | None = None) -> Path:
    return Path(root) if root is not None else cache_root() / "zoos" / f"digits-cnn-{config_hash(cfg)}"


def _jsonable(cfg: DigitsCNNConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg)))


def _build_shard(cfg: DigitsCNNConfig, runs: range, arch_index: dict[str, int],
                 data: tuple[Tensor, ...]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    params: dict[str, Tensor] = {}
    rows: list[dict[str, float]] = []
    for r in runs:
        g = torch.Generator().manual_seed(model_seed(cfg.seed, r))
        arch, hp = sample_run(cfg, g)
        for epoch, sd, metrics in train_run(arch, hp, cfg.checkpoints, data, g):
            k = len(rows)
            params.update({f"{k}/{name}": t for name, t in sd.items()})
            rows.append({"run": r, "epoch": epoch, "arch": arch_index[json.dumps(arch, sort_keys=True)], **metrics,
                         **hp, "depth": arch["depth"], "width": arch["width"], "kernel": arch["kernel"],
                         "activation": cfg.activations.index(arch["activation"]), "residual": int(arch["residual"]),
                         "norm": cfg.norms.index(arch["norm"])})
    ints = {"run", "epoch", "arch", "batch_size", "epochs", "depth", "width", "kernel", "activation", "residual",
            "norm"}
    meta = {k: torch.tensor([row[k] for row in rows], dtype=torch.long if k in ints else torch.float32)
            for k in rows[0]}
    return params, meta


def generate_digits_cnn(cfg: DigitsCNNConfig = DigitsCNNConfig(), root: str | Path | None = None, *,
                        progress: bool = True, max_shards: int | None = None) -> ZooDir:
    """Build (or finish building, or just open) the digits-CNN zoo for ``cfg``; returns it as a :class:`ZooDir`.

    ``root`` defaults to ``<cache>/zoos/digits-cnn-<config hash>``. Completed shards are kept and skipped,
    so an interrupted call resumes. ``max_shards`` stops after that many new shards (for tests / budgets).
    """
    path = zoo_path(cfg, root)
    mf = open_zoo_dir(path, _jsonable(cfg))
    archs = architectures(cfg)
    arch_index = {json.dumps(a, sort_keys=True): i for i, a in enumerate(archs)}
    num_shards = math.ceil(cfg.runs / cfg.runs_per_shard)
    old = {s["file"]: s for s in json.loads(mf.read_text())["shards"]} if mf.is_file() else {}
    shards = [old[f"shard_{s:05d}.safetensors"] for s in range(num_shards)
              if f"shard_{s:05d}.safetensors" in old and (path / f"shard_{s:05d}.safetensors").is_file()]
    runs_done = sum(s["runs"] for s in shards)
    total = sum(num_checkpoints(cfg, r) for r in range(cfg.runs))
    data = digits_split(cfg.test_fraction, cfg.split_seed) if runs_done < cfg.runs else ()
    bar = Progress(cfg.runs, "digits-CNN zoo (runs)", progress, initial=runs_done)
    new, t0 = 0, time.perf_counter()
    for s in range(num_shards):
        name = f"shard_{s:05d}.safetensors"
        if any(d["file"] == name for d in shards):
            continue
        if max_shards is not None and new >= max_shards:
            break
        runs = range(s * cfg.runs_per_shard, min(cfg.runs, (s + 1) * cfg.runs_per_shard))
        params, meta = _build_shard(cfg, runs, arch_index, data)
        save_shard(path / name, params, meta)
        shards.append({"file": name, "count": len(meta["run"]), "runs": len(runs)})
        shards.sort(key=lambda d: d["file"])
        new += 1
        _write_manifest(mf, cfg, archs, shards, total)
        bar.update(len(runs), test_acc=f"{float(meta['test_accuracy'].mean()):.2f}")
    bar.close()
    _write_manifest(mf, cfg, archs, shards, total, seconds=time.perf_counter() - t0 if new else None)
    return ZooDir(path)


def _write_manifest(mf: Path, cfg: DigitsCNNConfig, archs: list[dict[str, Any]], shards: list, total: int,
                    seconds: float | None = None) -> None:
    runs_done = sum(s["runs"] for s in shards)
    info: dict[str, Any] = {
        "format": FORMAT,
        "kind": "digits-cnn",
        "config": _jsonable(cfg),
        "layout": "per-model",
        "architectures": [{"constructor": CONSTRUCTOR, "kwargs": a} for a in archs],
        "num_runs": cfg.runs,
        "num_models": total,
        "shards": shards,
        "complete": runs_done == cfg.runs,
    }
    if mf.is_file() and seconds is None:
        old = json.loads(mf.read_text())
        info["last_build_seconds"] = old.get("last_build_seconds")
        if old == info:  # opening a finished zoo writes nothing (torchrun ranks open it side by side)
            return
    elif seconds is not None:
        info["last_build_seconds"] = round(seconds, 1)
    atomic_write_text(mf, json.dumps(info, indent=1))
