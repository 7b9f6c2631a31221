"""Is a predicted model usable? The warnings :func:`~wsl.hyper.api.predict_parameters` puts in its report.

A hypernetwork predicts *something* for any architecture; whether it is meaningful depends on how far the
model is from what the hypernetwork was trained on. :func:`scope_warnings` names the ways it is outside
(input size, channel counts beyond the decoder's tile, ops outside its vocabulary, normalization statistics
that were reset) and :func:`output_warnings` runs the predicted model once on its own example input, in
eval mode, and flags non-finite or exploding outputs (``|y| > 1e4``), saying whether recomputed BatchNorm
statistics would help (the same input with batch statistics gives finite, moderate outputs) and what to do.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

EXPLODE = 1e4  # |output| above this on a standard-normal input is not a usable initialization


def _n(k: int, noun: str) -> str:
    return f"{k} {noun}{'' if k == 1 else 's'}"


def _shapes(inputs: Any) -> list[tuple[int, ...]]:
    flat = torch.utils._pytree.tree_flatten(inputs)[0]
    return [tuple(t.shape) for t in flat if isinstance(t, Tensor)]


def scope_warnings(report: Any, *, trained_input: list[int] | None, inputs: Any, tiled: list[str],
                   tile: tuple[int, int], norm_resets: int) -> list[str]:
    """Ways the model lies outside what the hypernetwork was trained for (see module docstring). ``tiled``:
    the tensors with more output / input channels than the decoder's ``tile``."""
    out = []
    shapes = _shapes(inputs)
    if trained_input and shapes and tuple(shapes[0][1:]) != tuple(trained_input[1:]):
        out.append(f"input shape {list(shapes[0])} differs from the hypernetwork's training inputs "
                   f"{list(trained_input)}: predictions are extrapolated; fine-tune, or use a hypernetwork "
                   "trained at this input size")
    if tiled:
        out.append(f"{_n(len(tiled), 'tensor')} with more channels than the decoder's tile ({tile[0]} out x "
                   f"{tile[1]} in) were tiled (e.g. {tiled[0]}): their values repeat across channels; fine-tune "
                   "before use")
    unknown = [k for k, v in report.not_predicted.items() if "unknown to the hypernetwork's op vocabulary" in v]
    if unknown:
        out.append(f"{_n(len(unknown), 'tensor')} of ops the hypernetwork never saw (e.g. {unknown[0]}) kept "
                   "their values (predict_unknown_ops=True predicts them anyway)")
    if norm_resets:
        out.append(f"running statistics of {_n(norm_resets, 'normalization layer')} were reset: in eval mode they "
                   "normalize with mean 0 / var 1; recompute them with wsl.hyper.calibrate_norm_stats(model, "
                   "batches) on a few batches of real data")
    return out


def _standard_inputs(inputs: Any, batch: int = 1) -> Any:
    """Floating-point inputs replaced by seeded standard-normal values of the same shape (integer inputs such as
    token ids are kept), with the leading (batch) dimension times ``batch``."""
    gen = torch.Generator().manual_seed(0)

    def fresh(t: Any) -> Any:
        if not isinstance(t, Tensor):
            return t
        if t.is_floating_point():
            shape = (t.shape[0] * batch, *t.shape[1:]) if t.dim() > 1 else t.shape
            return torch.randn(shape, generator=gen, dtype=t.dtype).to(t.device)
        return t.repeat(batch, *([1] * (t.dim() - 1))) if t.dim() > 1 else t

    return torch.utils._pytree.tree_map(fresh, inputs)


def _run(model: nn.Module, args: tuple, kwargs: dict) -> list[Tensor]:
    y = model(*args, **kwargs)
    if hasattr(y, "logits"):  # HF ModelOutput
        y = y.logits
    return [t for t in torch.utils._pytree.tree_flatten(y)[0] if isinstance(t, Tensor) and t.is_floating_point()]


def _verdict(outs: list[Tensor]) -> tuple[bool, float]:
    finite = all(bool(torch.isfinite(t).all()) for t in outs)
    peak = max((float(t.detach().abs().max()) for t in outs if t.numel() and torch.isfinite(t).all()), default=0.0)
    return finite, peak


@torch.no_grad()
def output_warnings(model: nn.Module, args: tuple, kwargs: dict) -> list[str]:
    """Run ``model`` once in eval mode on standard-normal inputs shaped like ``args`` / ``kwargs``; warn about
    non-finite or exploding outputs (and whether batch statistics would fix them: the same check with the
    normalization layers in training mode, on a batch of 8 such inputs)."""
    batched = _standard_inputs(args, 8), _standard_inputs(kwargs, 8)
    args, kwargs = _standard_inputs(args), _standard_inputs(kwargs)
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        try:
            finite, peak = _verdict(_run(model, args, kwargs))
        except Exception as e:  # noqa: BLE001 - a forward that fails is itself the finding
            return [f"the predicted model's forward on its example input failed ({type(e).__name__}: {e})"]
        if finite and peak <= EXPLODE:
            return []
        what = "non-finite outputs (nan / inf)" if not finite else f"exploding outputs (max |y| = {peak:.3g})"
        msg = f"the predicted model gives {what} on a standard-normal example input in eval mode"
        norms = [m for m in model.modules() if getattr(m, "track_running_stats", False)]
        if norms:
            kept = [(b, b.clone()) for m in norms for b in m.buffers(recurse=False)]  # the probe must not move them
            for m in norms:
                m.train()
            try:
                ok, peak_train = _verdict(_run(model, *batched))
            except Exception:  # noqa: BLE001 - a model that cannot run this batch
                ok, peak_train = False, float("inf")
            finally:
                for b, v in kept:
                    b.copy_(v)
            if ok and peak_train <= EXPLODE:
                msg += (f"; with batch statistics such inputs give max |y| = {peak_train:.3g}, so recompute "
                        "the running statistics: wsl.hyper.calibrate_norm_stats(model, batches)")
                return [msg]
        return [msg + "; this prediction is not a usable initialization for this model (try another "
                      "hypernetwork, or fine-tune from it with care)"]
    finally:
        for m, t in modes.items():
            m.training = t
