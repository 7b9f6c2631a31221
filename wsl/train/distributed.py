"""Multi-process data-parallel training (``torchrun``): process group setup and exact gradient averaging.

``torchrun --nproc_per_node K scripts/train.py ...`` (or ``wsl train`` under torchrun) starts K processes;
:func:`setup` joins them into a process group (``gloo`` on CPU, ``nccl`` on CUDA) from torchrun's
environment variables. The training loop then splits every *global* batch of ``batch_size`` graphs across
the ranks (rank ``r`` takes items ``r, r+K, ...``), and :func:`average_gradients` combines the ranks'
gradients **weighted by their item counts**, so an update equals the single-process update on the same
global batch (up to float summation order) even when a batch does not split evenly — the last batch of an
epoch, or a rank that got no item at all. Parameters are broadcast from rank 0 at the start, checkpoints,
logs and plots are written by rank 0 only.

This is data-parallel training with an explicit all-reduce instead of the ``DistributedDataParallel``
wrapper: metanetworks are small, so overlapping communication with backward buys little, and the explicit
form stays exact for uneven batches and for models with parameters a batch does not touch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Dist:
    """Where this process sits: ``rank`` of ``world`` (``world == 1``: plain single-process training)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device: str | torch.device = "cpu") -> Dist:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), or return a single-process ``Dist``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world} but {missing} are not set: start multi-process runs with "
                           f"torchrun --nproc_per_node {world} ...")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def broadcast_module(model: nn.Module, d: Dist) -> None:
    """Copy rank 0's parameters and buffers to every rank (identical starting point)."""
    if not d.active:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)


def average_buffers(model: nn.Module, d: Dist) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over the ranks, so every rank holds the
    same model after an epoch. Each rank's batch statistics came from its own part of the global batch (as in
    DDP without SyncBatchNorm), so a model with BatchNorm trains close to, not exactly like, one process."""
    if not d.active:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for t in model.buffers():
            if t.is_floating_point():
                dist.all_reduce(t.data)
                t.data /= d.world


def local_part(indices: list[int], d: Dist) -> list[int]:
    """This rank's share of one global batch (strided, so shares differ in size by at most one)."""
    return indices[d.rank :: d.world]


def average_gradients(model: nn.Module, local_count: int, global_count: int, d: Dist) -> None:
    """Turn each rank's mean-loss gradient into the gradient of the mean loss over the whole global batch.

    Each rank's gradient is scaled by ``local_count / global_count`` and summed over ranks. Parameters
    without a gradient (no local items, or untouched by the batch) contribute zeros.
    """
    if not d.active:
        return
    import torch.distributed as dist

    w = local_count / max(global_count, 1)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad * w if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def barrier(d: Dist) -> None:
    if d.active:
        import torch.distributed as dist

        dist.barrier()
