"""A plain, resumable training loop for metanetworks (no Hydra here: ``wsl.train.entry`` wraps it).

* **Seeded**: the model is built by the caller; data order comes from a generator seeded by
  ``(seed, epoch)``, and torch's RNG state (dropout) is checkpointed, so a resumed run continues exactly
  where an uninterrupted one would be.
* **Checkpoint every epoch** to ``<out_dir>/last.pt`` with an atomic write (temp file + rename), holding
  model, optimizer, scheduler, epoch, RNG state, history and the best weights so far; ``resume=True``
  picks it up. Checkpoints are plain tensors / numbers, loaded with ``weights_only=True``.
* **Early stopping** on the task's validation metric (``patience`` epochs without improvement); the best
  weights are restored for the final test evaluation.
* **Metrics** to a logger (CSV / wandb / none), progress bars, PNG learning curves at the end.
* **Multi-process** under ``torchrun`` (see :mod:`wsl.train.distributed`): each global batch is split over
  the ranks and gradients are averaged exactly, so K processes train the same model as one process would —
  exactly for models without batch statistics; with BatchNorm (GMN's default) each rank normalizes over its
  part of the batch and running statistics are averaged over the ranks after every epoch.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from . import distributed as ddp
from .loggers import NullLogger
from .tasks import Task


def _loader(ds: Dataset, batch_size: int, order: list[int] | None):
    from torch_geometric.loader import DataLoader

    return DataLoader(ds, batch_size=batch_size, sampler=order if order is not None else range(len(ds)))


def _global_batches(ds: Dataset, order: list[int], batch_size: int, d: ddp.Dist, collate: Any = None):
    """``(local batch or None, local count, global count)`` for each global batch of ``order``."""
    from torch_geometric.data import Batch

    collate = collate or Batch.from_data_list
    for s in range(0, len(order), batch_size):
        glob = order[s : s + batch_size]
        mine = ddp.local_part(glob, d)
        yield (collate([ds[i] for i in mine]) if mine else None), len(mine), len(glob)


def _bar(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False)


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, ds: Dataset, batch_size: int = 256, device: str | torch.device = "cpu",
             progress: bool = False) -> dict[str, float]:
    """Task metrics of ``model`` on a dataset."""
    was = model.training
    model.eval()
    preds, targets = [], []
    for batch in _bar(_loader(ds, batch_size, None), math.ceil(len(ds) / batch_size), "eval", progress):
        _, p, t = task.loss(model, batch.to(device))
        preds.append(p.cpu())
        targets.append(t.cpu())
    model.train(was)
    return task.metrics(torch.cat(preds), torch.cat(targets))


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _better(a: float, b: float | None, mode: str) -> bool:
    if b is None or math.isnan(b):
        return not math.isnan(a)
    return a > b if mode == "max" else a < b


def fit(model: nn.Module, task: Task, data: Mapping[str, Dataset], *, out_dir: str | Path, epochs: int = 30,
        batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 0.0, scheduler: str | None = "cosine",
        grad_clip: float | None = 1.0, seed: int = 0, patience: int | None = None, resume: bool = True,
        logger: Any = None, progress: bool = True, device: str = "cpu", plot: bool = True,
        distributed: bool | None = None, train_collate: Any = None) -> dict[str, Any]:
    """Train ``model`` on ``data["train"]``, select on ``data["val"]``, report ``data["test"]``.

    ``distributed``: ``None`` joins a torchrun process group when ``WORLD_SIZE`` > 1 (``False`` never does).
    Under torchrun every rank must call ``fit`` with the same arguments; rank 0 writes files and logs.
    ``train_collate``: list of graphs -> batch for training batches (e.g. ``wsl.augment.PairwiseCollate``
    for weight-space mixup); default ``Batch.from_data_list``. The task's ``prepare(model, data)`` runs before
    the optimizer is built, its ``finalize(model, data, out_dir)`` after the test evaluation (rank 0), adding
    to the test metrics.

    Returns ``{"test": metrics, "val": best validation metrics, "best_epoch", "epochs_run", "checkpoint",
    "plot", "seconds"}``.
    """
    missing = [k for k in ("train", "val", "test") if k not in data]
    if missing:
        raise KeyError(f"fit needs train / val / test datasets; missing {missing}")
    d = ddp.setup(device) if distributed is not False else ddp.Dist()
    out = Path(out_dir)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    logger = (logger or NullLogger()) if d.main else NullLogger()
    progress = progress and d.main
    if hasattr(task, "prepare"):  # e.g. Pruning: zero the output heads, index the zoo's architectures
        task.prepare(model, data)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1)) if scheduler == "cosine" else None
    if scheduler not in (None, "none", "cosine"):
        raise ValueError(f"scheduler must be 'cosine' or None, got {scheduler!r}")
    state: dict[str, Any] = {"epoch": 0, "best": None, "best_epoch": -1, "bad": 0, "history": []}
    ckpt = out / "last.pt"
    if resume and ckpt.is_file():
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        if sched is not None and saved.get("scheduler") is not None:
            sched.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        state = saved["state"]
        best_state = saved["best_model"]
        logger.truncate(state["epoch"])
    else:
        torch.manual_seed(seed)
        best_state = None
    ddp.broadcast_module(model, d)
    t0 = time.perf_counter()
    train = data["train"]
    while state["epoch"] < epochs and not (patience is not None and state["bad"] >= patience):
        epoch = state["epoch"]
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
        model.train()
        total, count = 0.0, 0
        steps = math.ceil(len(train) / batch_size)
        batches = _global_batches(train, order, batch_size, d, train_collate)
        for batch, n_local, n_global in _bar(batches, steps, f"epoch {epoch + 1}/{epochs}", progress):
            opt.zero_grad(set_to_none=True)
            if batch is not None:
                loss, _, _ = task.loss(model, batch.to(device))
                loss.backward()
                total += float(loss.detach()) * n_local
                count += n_local
            ddp.average_gradients(model, n_local, n_global, d)
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
        if sched is not None:
            sched.step()
        ddp.average_buffers(model, d)
        if d.active:
            import torch.distributed as dist

            sums = torch.tensor([total, float(count)], dtype=torch.float64)
            dist.all_reduce(sums)
            total, count = float(sums[0]), int(sums[1])
        val = evaluate(model, task, data["val"], device=device)
        row = {"epoch": epoch + 1, "train_loss": total / max(count, 1), **{f"val_{k}": v for k, v in val.items()},
               "lr": opt.param_groups[0]["lr"]}
        state["history"].append(row)
        logger.log(row, step=epoch + 1)
        if _better(val[task.monitor], state["best"], task.mode):
            state["best"], state["best_epoch"], state["bad"] = val[task.monitor], epoch + 1, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            state["bad"] += 1
        state["epoch"] = epoch + 1
        if d.main:
            _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict() if sched is not None else None,
                          "rng": torch.get_rng_state(), "state": state, "best_model": best_state}, ckpt)
        ddp.barrier(d)
        if progress:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch")
            print(f"epoch {epoch + 1}: {shown}", flush=True)
    if best_state is not None:
        model.load_state_dict(best_state)
        if d.main:
            _atomic_save(best_state, out / "best.pt")
    test = evaluate(model, task, data["test"], device=device)
    if d.main and hasattr(task, "finalize"):  # task's own evaluation (Pruning: prune + fine-tune held-out nets)
        test.update(task.finalize(model, data, out))
    logger.log({f"test_{k}": v for k, v in test.items()}, step=state["epoch"] + 1)
    logger.finish()
    best_val = next((h for h in state["history"] if h["epoch"] == state["best_epoch"]), {})
    png = plot_history(state["history"], out / "curves.png") if plot and d.main else None
    ddp.barrier(d)
    return {"test": test, "val": best_val, "best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
            "checkpoint": str(ckpt), "plot": str(png) if png else None, "seconds": time.perf_counter() - t0}


def plot_history(history: list[dict[str, float]], path: Path) -> Path | None:
    """Learning curves (train loss, validation metrics per epoch) as a PNG; ``None`` without matplotlib."""
    if not history:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    epochs = [h["epoch"] for h in history]
    metrics = [k for k in history[0] if k.startswith("val_") and k != "val_loss"]
    fig, axes = plt.subplots(1, 1 + len(metrics), figsize=(4.5 * (1 + len(metrics)), 3.5))
    axes = list(axes) if hasattr(axes, "__len__") else [axes]
    axes[0].plot(epochs, [h["train_loss"] for h in history], label="train")
    axes[0].plot(epochs, [h.get("val_loss", float("nan")) for h in history], label="val")
    axes[0].set_title("loss")
    axes[0].legend()
    for ax, k in zip(axes[1:], metrics):
        ax.plot(epochs, [h[k] for h in history])
        ax.set_title(k)
    for ax in axes:
        ax.set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
