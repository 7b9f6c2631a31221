"""Training tasks: what a metanetwork is trained to predict from a batch, and how it is scored."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

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

    def prepare(self, model: nn.Module, data: Mapping[str, Any]) -> None:
        """Called by :func:`wsl.train.fit` before training starts (before the optimizer sees ``model``)."""

    def finalize(self, model: nn.Module, data: Mapping[str, Any], out_dir: Path) -> dict[str, float]:
        """Called by :func:`wsl.train.fit` after the test evaluation, with the best weights loaded; the metrics
        returned join the test metrics (logged with a ``test_`` prefix)."""
        return {}


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


class Pruning(Task):
    """Meta pruning: train a metanetwork to rewrite networks so that group-L2 structured pruning hurts less.

    The metanetwork (``model=``, any :mod:`wsl.nn` model with equivariant edge / node outputs) is wrapped in
    a :class:`wsl.prune.MetaPruner` (residual, scale-aware rewrite; output heads zeroed before training). The
    loss per network is :func:`wsl.prune.pruning_loss`: cross-entropy of the rewritten network on a batch of
    ``data_batch`` examples of the data the zoo was trained on (through ``torch.func.functional_call``), plus
    ``pruned_weight`` times the cross-entropy of the rewritten network with the channels removed that group-L2
    pruning to ``speedup`` removes, plus ``lam`` times the group-lasso regularizer (relative to the unrewritten
    network's; ``alpha > 1``: DepGraph's polarizing channel weights). ``pruned_weight=0`` is the plain
    "task loss + lambda x group sparsity" objective. Validation metrics: loss, ``task_loss``, ``pruned_task_loss``,
    ``group_norm`` (relative), and ``baseline_task_loss`` / ``baseline_pruned_task_loss`` (the unrewritten
    networks, as they are and with the channels pruning removes zeroed); the best epoch is the lowest loss.

    After training (:meth:`finalize`) the held-out *test* networks (the last checkpoint of each run, at most
    ``eval_networks``) are pruned to each of ``eval_speedups`` (default ``[speedup]``) twice — as they are
    (plain group-L2) and rewritten first (learned) — fine-tuned ``finetune_steps`` Adam steps with the same
    minibatches, and scored on the zoo's held-out images; test metrics ``prune<S>x_plain``,
    ``prune<S>x_learned``, ``prune<S>x_win_fraction`` (learned > plain) and ``prune<S>x_original``. The
    pruner is saved to ``<run dir>/meta_pruner.safetensors`` for ``wsl prune --metanet``.

    Needs a zoo of classifiers whose training data wsl knows: ``data=digits_cnn``.
    """

    monitor, mode = "loss", "min"

    def __init__(self, lam: float = 0.5, alpha: float = 1.0, pruned_weight: float = 1.0, speedup: float = 2.0,
                 delta_scale: float = 1.0, relative: bool = True, data_batch: int = 128,
                 eval_speedups: Any = None, eval_networks: int | None = 32, finetune_steps: int = 50,
                 finetune_lr: float = 1e-3, iterative_steps: int = 64, last_checkpoint_only: bool = True,
                 seed: int = 0, metanet: Any = None) -> None:
        self.lam, self.alpha, self.pruned_weight, self.speedup = lam, alpha, pruned_weight, float(speedup)
        self.delta_scale, self.relative, self.data_batch = delta_scale, relative, data_batch
        self.eval_speedups = [float(s) for s in (eval_speedups or [speedup])]
        self.eval_networks, self.finetune_steps, self.finetune_lr = eval_networks, finetune_steps, finetune_lr
        self.iterative_steps, self.last_checkpoint_only, self.seed = iterative_steps, last_checkpoint_only, seed
        self.metanet = metanet  # the model config (configs/task/pruning.yaml: ${model}), to save the pruner
        self._pruner = None

    # ------------------------------------------------------------ setup
    @staticmethod
    def classifier_data(dataset: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x_train, y_train, x_test, y_test)`` the zoo's networks were trained / tested on."""
        manifest = getattr(getattr(dataset, "source", None), "manifest", None) or {}
        if manifest.get("kind") != "digits-cnn":
            raise ValueError("task=pruning needs a zoo of classifiers whose training data wsl knows: data=digits_cnn "
                             f"(got a zoo of kind {manifest.get('kind')!r}); in Python use wsl.prune.meta_train "
                             "with your own data")
        from ..data.generate.digits_cnn import digits_split

        cfg = manifest["config"]
        return digits_split(cfg["test_fraction"], cfg["split_seed"])

    def prepare(self, model, data):
        from ..prune import MetaPruner, NetworkIndex

        self._pruner = MetaPruner(model, delta_scale=self.delta_scale, zero_init=True)
        self.x_train, self.y_train, self.x_test, self.y_test = self.classifier_data(data["train"])
        self.example = self.x_train[:1]
        self.index = NetworkIndex.from_zoo([data[k] for k in ("train", "val", "test") if k in data], self.example)
        fixed = torch.randperm(len(self.x_train), generator=torch.Generator().manual_seed(self.seed + 1))
        self._eval_rows = fixed[: min(self.data_batch, len(fixed))]

    def _wrapper(self, model):
        from ..prune import MetaPruner

        if self._pruner is None or self._pruner.metanet is not model:
            self._pruner = MetaPruner(model, delta_scale=self.delta_scale, zero_init=False)
        return self._pruner

    # ------------------------------------------------------------ training
    def loss(self, model, batch):
        from ..prune import pruning_loss

        if not hasattr(self, "index"):
            raise RuntimeError("Pruning.prepare(model, data) must run first (wsl.train.fit calls it)")
        if model.training:  # torch's global generator: fit checkpoints it, so a resumed run draws the same rows
            rows = torch.randint(len(self.x_train), (min(self.data_batch, len(self.x_train)),))
        else:
            rows = self._eval_rows
        dev = batch.edge_attr.device
        terms = pruning_loss(self._wrapper(model), batch, self.index, self.x_train[rows].to(dev),
                             self.y_train[rows].to(dev), lam=self.lam, alpha=self.alpha, relative=self.relative,
                             pruned_weight=self.pruned_weight, speedup=self.speedup, baseline=not model.training)
        zeros = torch.zeros_like(terms["loss"])
        preds = torch.stack([terms["loss"], terms["task"], terms.get("pruned", zeros), terms["reg"]], 1).detach()
        base = torch.stack([terms.get("base_task", zeros), terms.get("base_pruned", zeros)], 1).detach()
        return terms["loss"].mean(), preds, base

    def metrics(self, preds, targets):
        return {"loss": float(preds[:, 0].mean()), "task_loss": float(preds[:, 1].mean()),
                "pruned_task_loss": float(preds[:, 2].mean()), "group_norm": float(preds[:, 3].mean()),
                "baseline_task_loss": float(targets[:, 0].mean()),
                "baseline_pruned_task_loss": float(targets[:, 1].mean())}

    # ------------------------------------------------------------ held-out comparison
    def _held_out(self, ds) -> list[nn.Module]:
        from ..graph.convert import from_graph

        idx = list(range(len(ds)))
        meta = ds.meta
        if self.last_checkpoint_only and "run" in meta and "epoch" in meta:
            last: dict[int, tuple[int, int]] = {}
            for i in idx:
                j = int(ds.indices[i])
                run, ep = int(meta["run"][j]), int(meta["epoch"][j])
                if run not in last or ep > last[run][0]:
                    last[run] = (ep, i)
            idx = sorted(i for _, i in last.values())
        if self.eval_networks is not None:
            idx = idx[: self.eval_networks]
        out = []
        for i in idx:
            j = int(ds.indices[i])
            arch = ds.architecture(int(meta["arch"][j])) if getattr(ds, "mixed", False) else ds.model
            out.append(from_graph(ds.graph(i), arch).eval())
        return out

    def finalize(self, model, data, out_dir):
        from ..prune import compare, summarize

        pruner = self._wrapper(model)
        was = model.training
        model.eval()
        out: dict[str, float] = {}
        try:
            if self.metanet is not None:
                from ..prune.meta import metanet_config

                pruner.config = metanet_config(self.metanet)
                pruner.save(Path(out_dir) / "meta_pruner.safetensors", lam=self.lam, alpha=self.alpha,
                            pruned_weight=self.pruned_weight, speedup=self.speedup)
            models = self._held_out(data["test"])
            for sp in self.eval_speedups:
                rows = compare(pruner, models, self.example, (self.x_train, self.y_train), (self.x_test, self.y_test),
                               speedup=sp, finetune_steps=self.finetune_steps, lr=self.finetune_lr, seed=self.seed,
                               iterative_steps=self.iterative_steps)
                s = summarize(rows)
                for k in ("original", "plain", "learned", "plain_pruned", "learned_pruned", "win_fraction"):
                    if k in s:
                        out[f"prune{sp:g}x_{k}"] = s[k]
                out["prune_networks"] = float(len(rows))
        finally:
            model.train(was)
        return out
