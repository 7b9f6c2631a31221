"""Training graph hypernetworks on digits (sampled architectures, predicted parameters, no inner training).

Each step samples a meta-batch of architectures (:mod:`wsl.hyper.sampler`), predicts all their parameters
with the hypernetwork, runs every architecture on an image batch through
:func:`torch.func.functional_call` with the predicted parameters, and backpropagates the mean
cross-entropy into the hypernetwork (GHN-2's training objective):
``θ ← θ - η ∇_θ (1/|A|) Σ_{a ∈ A} L(f(x; a, H_θ(a)), y)``.

Data: scikit-learn's ``load_digits`` (1 797 images, ``1×8×8``, 10 classes), a fixed 80 / 20 split.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .api import calibrate_norm_stats
from .ghn import GraphHyperNetwork
from .sampler import sample_architectures


@dataclass
class Digits:
    x_train: Tensor  # [N, 1, 8, 8] standardized
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def digits(seed: int = 0) -> Digits:
    """The digits data set, standardized with training statistics, split 80 / 20 by a seeded permutation."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n = int(0.8 * len(y))
    tr, te = perm[:n], perm[n:]
    mean, std = x[tr].mean(), x[tr].std()
    x = (x - mean) / std
    return Digits(x[tr], y[tr], x[te], y[te])


def meta_loss(hypernet: GraphHyperNetwork, models: list[nn.Module], x: Tensor, y: Tensor) -> tuple[Tensor, float]:
    """Mean cross-entropy of ``models`` run with predicted parameters (train mode), and their accuracy."""
    preds = hypernet(models)
    losses, correct = [], 0.0
    for m, p in zip(models, preds):
        m.train()
        out = functional_call(m, p, (x,), strict=False)
        losses.append(F.cross_entropy(out, y))
        correct += float((out.argmax(1) == y).float().mean())
    return torch.stack(losses).mean(), correct / len(models)


def train_ghn(hypernet: GraphHyperNetwork, data: Digits, *, steps: int = 500, meta_batch: int = 4,
              batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 1e-5, clip: float = 5.0,
              generator: torch.Generator | None = None, log_every: int = 25,
              log: Callable[[str], None] = print, time_limit: float | None = None,
              callback: Callable[[dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Train ``hypernet`` in place on sampled ``train``-split architectures; returns the logged history.

    Every ``log_every`` steps a record ``{step, loss, acc, time}`` (means since the last record) is appended,
    printed through ``log`` and passed to ``callback`` (e.g. a metrics logger)."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(hypernet.parameters(), lr=lr, weight_decay=weight_decay)
    hypernet.train()
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    run_loss = run_acc = 0.0
    for step in range(1, steps + 1):
        seed = int(torch.randint(2**31 - 1, (1,), generator=g))
        torch.manual_seed(seed)  # module construction draws default init from the global RNG
        models = sample_architectures(meta_batch, "train", g)
        idx = torch.randint(len(data.y_train), (batch_size,), generator=g)
        loss, acc = meta_loss(hypernet, models, data.x_train[idx], data.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(hypernet.parameters(), clip)
        opt.step()
        # cosine decay over whichever budget (steps or time) runs out first
        frac = step / steps
        if time_limit is not None:
            frac = max(frac, (time.perf_counter() - t0) / time_limit)
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        run_loss += float(loss.detach())
        run_acc += acc
        if step % log_every == 0 or step == steps:
            k = (step - 1) % log_every + 1
            rec = {"step": step, "loss": run_loss / k, "acc": run_acc / k, "time": time.perf_counter() - t0}
            history.append(rec)
            log(f"step {step:5d}  loss {rec['loss']:.3f}  train acc {rec['acc']:.3f}  {rec['time']:.0f}s")
            if callback is not None:
                callback(rec)
            run_loss = run_acc = 0.0
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            log(f"time limit of {time_limit:.0f}s reached at step {step}")
            break
    hypernet.eval()
    return history


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


@torch.no_grad()
def evaluate_predicted(hypernet: GraphHyperNetwork, models: list[nn.Module], data: Digits,
                       calibrate_batches: int = 4) -> list[float]:
    """Test accuracy of each model with predicted parameters (BatchNorm statistics recomputed on training
    images; no training). Models are modified in place."""
    for m in models:
        hypernet.predict_into(m)
        calibrate_norm_stats(m, [data.x_train[i::calibrate_batches] for i in range(calibrate_batches)])
    return [accuracy(m, data.x_test, data.y_test) for m in models]


def finetune(model: nn.Module, data: Digits, *, epochs: int = 1, lr: float = 1e-3, batch_size: int = 64,
             optimizer: str = "adam", generator: torch.Generator | None = None) -> float:
    """Train for ``epochs`` on the training images (``"adam"``, or ``"sgd"`` with momentum 0.9); returns test
    accuracy."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose 'adam' or 'sgd'")
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(data.y_train), generator=g)
        for i in range(0, len(perm), batch_size):
            b = perm[i:i + batch_size]
            loss = F.cross_entropy(model(data.x_train[b]), data.y_train[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return accuracy(model, data.x_test, data.y_test)
