"""Training tasks: what a metanetwork is trained to predict from a batch, and how it is scored."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def kendall_tau(pred: Tensor, target: Tensor) -> float:
    """Kendall rank correlation (tau-b, ties handled) between two 1-D tensors; O(n^2) memory-light loop."""
    p, t = pred.detach().double().flatten().cpu(), target.detach().double().flatten().cpu()
    n = p.numel()
    if n < 2:
        return float("nan")
    conc = disc = tie_p = tie_t = 0.0
    for i in range(n - 1):
        dp = torch.sign(p[i + 1 :] - p[i])
        dt = torch.sign(t[i + 1 :] - t[i])
        prod = dp * dt
        conc += float((prod > 0).sum())
        disc += float((prod < 0).sum())
        tie_p += float(((dp == 0) & (dt != 0)).sum())
        tie_t += float(((dt == 0) & (dp != 0)).sum())
    denom = ((conc + disc + tie_p) * (conc + disc + tie_t)) ** 0.5
    return (conc - disc) / denom if denom > 0 else float("nan")


class Task:
    """A task maps ``(model, batch)`` to a loss and collects predictions for epoch metrics."""

    monitor = "loss"  # validation metric used for early stopping / best checkpoint
    mode = "min"

    def loss(self, model: nn.Module, batch) -> tuple[Tensor, Tensor, Tensor]:
        """``(loss, predictions, targets)`` of one batch."""
        raise NotImplementedError

    def metrics(self, preds: Tensor, targets: Tensor) -> dict[str, float]:
        raise NotImplementedError


class Classification(Task):
    """Cross-entropy on ``batch.y`` (class ids); metrics: loss, accuracy."""

    monitor, mode = "accuracy", "max"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def loss(self, model, batch):
        logits = model(batch)
        y = batch.y.long().view(-1)
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits.detach(), y

    def metrics(self, preds, targets):
        return {"loss": float(F.cross_entropy(preds, targets)),
                "accuracy": float((preds.argmax(-1) == targets).float().mean())}


class Regression(Task):
    """MSE on ``batch.y`` (e.g. test accuracy: generalization prediction); metrics: loss, Kendall tau, R^2."""

    monitor, mode = "kendall_tau", "max"

    def loss(self, model, batch):
        pred = model(batch).view(-1)
        y = batch.y.float().view(-1)
        return F.mse_loss(pred, y), pred.detach(), y

    def metrics(self, preds, targets):
        mse = float(F.mse_loss(preds, targets))
        var = float(targets.var(unbiased=False))
        return {"loss": mse, "kendall_tau": kendall_tau(preds, targets), "r2": 1 - mse / var if var > 0 else float("nan")}
