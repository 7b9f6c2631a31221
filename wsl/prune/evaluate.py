"""Prune, fine-tune, score: the comparison of learned (rewrite first) and plain group-L2 pruning.

For every network, both arms get the same pruning criterion (group-L2, :func:`~wsl.prune.prune`), the same
target speed-up and the same fine-tuning budget — ``finetune_steps`` Adam steps on the same minibatches (one
seed per network), BatchNorm in training mode — and are scored by accuracy on held-out data:

* **plain**: prune the network as it is, fine-tune;
* **learned**: rewrite it with a :class:`~wsl.prune.MetaPruner` first, then the same.

:func:`summarize` reports the mean accuracies and the fraction of networks where learned beats plain.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .structured import prune


@torch.no_grad()
def accuracy(model: nn.Module, inputs: Tensor, targets: Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` in eval mode (non-finite logits count as wrong)."""
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(inputs), batch_size):
        logits = model(inputs[i : i + batch_size])
        ok = torch.isfinite(logits).all(dim=1)
        correct += int(((logits.argmax(dim=1) == targets[i : i + batch_size]) & ok).sum())
    model.train(was)
    return correct / max(len(inputs), 1)


def finetune(model: nn.Module, inputs: Tensor, targets: Tensor, *, steps: int = 50, lr: float = 1e-3,
             batch_size: int = 128, seed: int = 0) -> nn.Module:
    """``steps`` Adam steps of cross-entropy on minibatches drawn with ``seed`` (in place; training mode)."""
    if steps <= 0:
        return model
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    was = model.training
    model.train()
    for _ in range(steps):
        rows = torch.randint(len(inputs), (min(batch_size, len(inputs)),), generator=g)
        loss = F.cross_entropy(model(inputs[rows]), targets[rows])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.train(was)
    return model


def prune_and_finetune(model: nn.Module, example_inputs: Any, train: tuple[Tensor, Tensor],
                       test: tuple[Tensor, Tensor], *, speedup: float = 2.0, finetune_steps: int = 50,
                       lr: float = 1e-3, batch_size: int = 128, seed: int = 0, importance: Any = "group_l2",
                       iterative_steps: int = 64) -> dict[str, Any]:
    """Prune a copy of ``model`` to ``speedup``, fine-tune it, and score it; returns ``{"pruned": accuracy right
    after pruning, "finetuned": after fine-tuning, "speedup": reached, "params": after, "model": the module}``."""
    pruned, report = prune(model, example_inputs, speedup, importance, iterative_steps=iterative_steps)
    before = accuracy(pruned, *test)
    finetune(pruned, *train, steps=finetune_steps, lr=lr, batch_size=batch_size, seed=seed)
    return {"pruned": before, "finetuned": accuracy(pruned, *test), "speedup": report.speedup,
            "params": report.params_after, "model": pruned}


def compare(pruner: Any, models: Sequence[nn.Module], example_inputs: Any, train: tuple[Tensor, Tensor],
            test: tuple[Tensor, Tensor], *, speedup: float = 2.0, finetune_steps: int = 50, lr: float = 1e-3,
            batch_size: int = 128, seed: int = 0, iterative_steps: int = 64,
            progress: bool = False) -> list[dict[str, float]]:
    """Learned vs plain group-L2 pruning of each of ``models`` (one row per network, see module docstring).

    Row keys: ``original`` / ``rewritten`` (accuracy before pruning), ``plain_pruned`` / ``plain`` and
    ``learned_pruned`` / ``learned`` (right after pruning / after fine-tuning), ``plain_speedup`` /
    ``learned_speedup`` (reached).
    """
    rows = []
    for i, model in enumerate(models):
        model = copy.deepcopy(model).eval()
        kw = {"speedup": speedup, "finetune_steps": finetune_steps, "lr": lr, "batch_size": batch_size,
              "seed": seed * 100_003 + i, "iterative_steps": iterative_steps}
        rewritten = pruner.rewrite(model, example_inputs)
        plain = prune_and_finetune(model, example_inputs, train, test, **kw)
        learned = prune_and_finetune(rewritten, example_inputs, train, test, **kw)
        rows.append({"original": accuracy(model, *test), "rewritten": accuracy(rewritten, *test),
                     "plain_pruned": plain["pruned"], "plain": plain["finetuned"],
                     "learned_pruned": learned["pruned"], "learned": learned["finetuned"],
                     "plain_speedup": plain["speedup"], "learned_speedup": learned["speedup"]})
        if progress:
            r = rows[-1]
            print(f"[prune] net {i + 1}/{len(models)}: original {r['original']:.3f}, plain {r['plain']:.3f}, "
                  f"learned {r['learned']:.3f}", flush=True)
    return rows


def summarize(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Means of every row key and ``win_fraction`` (learned > plain after fine-tuning), ``tie_fraction``."""
    if not rows:
        return {}
    out = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    out["win_fraction"] = sum(r["learned"] > r["plain"] for r in rows) / len(rows)
    out["tie_fraction"] = sum(r["learned"] == r["plain"] for r in rows) / len(rows)
    out["networks"] = float(len(rows))
    return out
