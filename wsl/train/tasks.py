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
    """Cross-entropy on ``batch.y`` (class ids, or soft labels ``[B, C]`` from mixup); metrics: loss, accuracy."""

    monitor, mode = "accuracy", "max"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def loss(self, model, batch):
        logits = model(batch)
        if batch.y.is_floating_point() and batch.y.dim() == 2:  # soft labels [B, C] (weight-space mixup)
            soft = batch.y.to(logits.dtype)
            return (F.cross_entropy(logits, soft, label_smoothing=self.label_smoothing), logits.detach(),
                    soft.argmax(-1))
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


class INREditing(Task):
    """Edit SIREN INRs in weight space so that they render a transformed image (e.g. a dilated digit).

    The metanetwork's *equivariant* outputs are residual updates of every weight and bias,
    ``theta' = theta + delta_scale * (edge_out, node_out)``; the edited weights are written back into
    differentiable state_dicts (:func:`wsl.nn.state_dicts`, the same mapping as ``from_graph``) and rendered
    on the ``size x size`` pixel grid. Loss: MSE to ``op(render(theta))``, with ``op`` = ``"dilate"``
    (3x3 max filter), ``"erode"`` (3x3 min filter) or ``"invert"`` (``1 - image``). Metrics: loss, and
    ``baseline_loss`` = the MSE of the unedited INR (what doing nothing scores).

    Works for INRs ``Linear -> sin(w0 .) -> ... -> Linear`` whose state_dict keys are ``<i>.weight`` /
    ``<i>.bias`` (the digits-INR zoo); any number of layers / widths.
    """

    monitor, mode = "loss", "min"

    def __init__(self, op: str = "dilate", size: int = 28, w0: float = 30.0, delta_scale: float = 0.01) -> None:
        if op not in ("dilate", "erode", "invert"):
            raise ValueError(f"INREditing op must be 'dilate', 'erode' or 'invert', got {op!r}")
        self.op, self.size, self.w0, self.delta_scale = op, size, w0, delta_scale

    def target(self, image: Tensor) -> Tensor:
        img = image.view(-1, 1, self.size, self.size)
        if self.op == "dilate":
            out = F.max_pool2d(img, 3, stride=1, padding=1)
        elif self.op == "erode":
            out = -F.max_pool2d(-img, 3, stride=1, padding=1)
        else:
            out = 1 - img
        return out.view(image.shape)

    def render(self, sds: list[dict[str, Tensor]]) -> Tensor:
        from ..data.generate.digits_inr import batched_siren, coordinate_grid

        if not sds:
            return torch.zeros(0, self.size * self.size)
        keys = sds[0].keys()
        bad = [k for k in keys if not (k.split(".")[0].isdigit() and k.split(".")[-1] in ("weight", "bias"))]
        if bad:
            raise ValueError(f"INREditing renders SIRENs with keys '<i>.weight' / '<i>.bias'; got {bad[:3]}")
        stacked = {k: torch.stack([sd[k] for sd in sds]) for k in keys}
        coords = coordinate_grid(self.size).to(stacked[next(iter(keys))])
        return batched_siren(stacked, coords, self.w0)

    def loss(self, model, batch):
        from ..nn.readout import state_dicts

        out = model(batch, output="all")
        edges = batch.edge_attr[:, 0] + self.delta_scale * out.edge[:, 0]
        biases = batch.x[:, 0] + self.delta_scale * out.node[:, 0]
        with torch.no_grad():
            original = self.render(state_dicts(batch, batch.edge_attr[:, 0]))
            target = self.target(original)
        edited = self.render(state_dicts(batch, edges, biases))
        per_inr = ((edited - target) ** 2).mean(dim=1)
        base = ((original - target) ** 2).mean(dim=1)
        return per_inr.mean(), per_inr.detach(), base

    def metrics(self, preds, targets):
        return {"loss": float(preds.mean()), "baseline_loss": float(targets.mean())}
