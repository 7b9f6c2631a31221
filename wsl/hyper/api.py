"""``predict_parameters``: give any model parameters predicted by a graph hypernetwork, with a full report.

::

    model, report = wsl.hyper.predict_parameters(model, hypernet="ghn2-digits")
    print(report)                 # every state-dict entry: predicted, not predicted (why), or buffer handling

Nothing is skipped silently: every key of ``model.state_dict()`` appears in exactly one of
``report.predicted``, ``report.not_predicted`` (with the reason; those tensors keep their current values) and
``report.buffers`` (what was done: BatchNorm running statistics are reset, because statistics of the old
weights do not describe the predicted ones; recompute them with :func:`calibrate_norm_stats`).

Nor is a doubtful prediction returned silently: ``report.warnings`` says when the model is outside what the
hypernetwork was trained for and when the predicted model's outputs on its own example input are non-finite or
explode, with what to do (:mod:`wsl.hyper.checks`); they are also issued as one ``UserWarning``.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..graph.inputs import as_inputs
from .checks import output_warnings, scope_warnings
from .ghn import GraphHyperNetwork, _example_inputs, graph_of
from .hub import from_pretrained

DEFAULT_HYPERNET = "ghn2-digits"


@dataclass
class PredictionReport:
    """Where every state-dict entry of a model stands after :func:`predict_parameters`."""

    model: str
    hypernet: str
    predicted: dict[str, str] = field(default_factory=dict)  # name -> how (op, shape, tiling)
    not_predicted: dict[str, str] = field(default_factory=dict)  # name -> why (value kept)
    buffers: dict[str, str] = field(default_factory=dict)  # name -> what was done
    keys: list[str] = field(default_factory=list)  # the model's state-dict keys
    warnings: list[str] = field(default_factory=list)  # why the prediction may not be usable, and what to do

    @property
    def complete(self) -> bool:
        """Every state-dict key is accounted for exactly once."""
        seen = list(self.predicted) + list(self.not_predicted) + list(self.buffers)
        return sorted(seen) == sorted(self.keys) and len(seen) == len(set(seen))

    def num_predicted_elements(self, model: nn.Module) -> int:
        """Predicted parameters of ``model`` (tensors that share storage counted once)."""
        sd = model.state_dict()
        return sum(sd[k].numel() for k, how in self.predicted.items() if not how.startswith("shares storage"))

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "hypernet": self.hypernet, "predicted": self.predicted,
                "not_predicted": self.not_predicted, "buffers": self.buffers, "warnings": self.warnings}

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    def __str__(self) -> str:
        lines = [(f"{self.model}: {len(self.predicted)} tensors predicted by {self.hypernet}, "
                 f"{len(self.not_predicted)} not predicted, {len(self.buffers)} buffers")]
        lines += [f"warning: {w}" for w in self.warnings]
        for title, d in (("not predicted", self.not_predicted), ("buffers", self.buffers)):
            if d:
                lines.append(f"{title}:")
                lines += _grouped(d)
        return "\n".join(lines)


def _grouped(d: dict[str, str], show: int = 3) -> list[str]:
    """``name: reason`` lines with tensors sharing a reason on one line (``a, b, c and 57 more: reason``),
    most frequent reason first; the full list stays in ``to_dict()`` / ``--report``."""
    by_reason: dict[str, list[str]] = {}
    for k, v in d.items():
        by_reason.setdefault(v, []).append(k)
    out = []
    for reason, names in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        head = ", ".join(names[:show]) + (f" and {len(names) - show} more" if len(names) > show else "")
        out.append(f"  {head}: {reason}")
    return out


@functools.lru_cache(maxsize=4)
def _load_cached(name: str) -> GraphHyperNetwork:
    return from_pretrained(name)


def load_hypernet(hypernet: str | os.PathLike | GraphHyperNetwork) -> GraphHyperNetwork:
    """A hypernetwork object from a packaged name, a directory written by ``save_pretrained``, or itself.

    Loaded names / paths are cached per process (call ``_load_cached.cache_clear()`` after overwriting one).
    """
    if isinstance(hypernet, GraphHyperNetwork):
        return hypernet
    if isinstance(hypernet, (str, os.PathLike)):
        return _load_cached(os.fspath(hypernet))
    raise TypeError(f"hypernet must be a packaged name, a directory or a GraphHyperNetwork, not {type(hypernet).__name__}")


def _tile_note(shape: tuple[int, ...], hn: GraphHyperNetwork) -> str:
    cfg = hn.config
    big = len(shape) >= 2 and (shape[0] > cfg["tile_out"] or int(torch.Size(shape[1:]).numel()) > cfg["tile_in"])
    big = big or (len(shape) == 1 and shape[0] > cfg["tile_out"])
    return "tiled (larger than the decoder's tile)" if big else "sliced from the decoder's tile"


def predict_parameters(model: nn.Module, hypernet: str | os.PathLike | GraphHyperNetwork = DEFAULT_HYPERNET, *,
                       example_inputs: Any = None, inplace: bool = False,
                       predict_unknown_ops: bool = False, check: bool = True) -> tuple[nn.Module, PredictionReport]:
    """Predict all parameters of ``model`` with a graph hypernetwork.

    Args:
        model: any ``nn.Module`` that :func:`wsl.to_graph` can trace (torchvision, timm, HF, own code).
        hypernet: packaged name (see :func:`wsl.hyper.hub.packaged`), a ``save_pretrained`` directory, a
            :class:`~wsl.hyper.ghn.GraphHyperNetwork`, or a published GHN: a ppuda / ghn3 file (read without
            running its pickle) or a directory from ``wsl convert-hypernet``; with those, the prediction is
            the reference code's (:mod:`wsl.hyper.published`).
        example_inputs: inputs used to trace ``model`` (default: ``model.example_inputs`` or a guess).
        inplace: write into ``model`` itself (default: into a deep copy).
        predict_unknown_ops: also predict parameters owned by ops outside the hypernetwork's vocabulary
            (op type ``other``); by default they keep their values and are reported.
        check: fill ``report.warnings`` (scope, and one eval-mode forward of the predicted model on a
            standard-normal input shaped like the example input) and issue them as a ``UserWarning``.

    Returns:
        ``(model_with_predicted_parameters, PredictionReport)``.
    """
    from .published.predict import is_published, load_published, predict_published

    published = is_published(hypernet) or type(hypernet).__name__.startswith("PublishedGHN")
    hn = (load_published(hypernet) if isinstance(hypernet, (str, os.PathLike)) else hypernet) if published \
        else load_hypernet(hypernet)
    hn_name = hypernet if isinstance(hypernet, (str, os.PathLike)) else type(hn).__name__
    target = model if inplace else copy.deepcopy(model)
    state_keys = list(target.state_dict().keys())
    report = PredictionReport(type(target).__name__, os.fspath(hn_name), keys=state_keys)
    if published:
        predict_published(target, hn, report.hypernet, report, example_inputs=example_inputs, check=check)
        _warn(report, 3)
        return target, report
    g = graph_of(target, example_inputs, hn.input_shape)
    params = dict(target.named_parameters(remove_duplicate=False))
    dev = next(hn.parameters()).device
    with torch.no_grad():
        was = hn.training
        hn.eval()
        try:
            pred = hn.to(dev)([target], example_inputs)[0]
        finally:
            hn.train(was)
        for name, w in pred.items():
            node = g.owned[name]
            op = g.op_names[node]
            if op == "other" and not predict_unknown_ops:
                report.not_predicted[name] = (
                    f"owned by op {g.labels[node]!r}, unknown to the hypernetwork's op vocabulary: kept its "
                    "current value (pass predict_unknown_ops=True to predict it anyway)")
                continue
            params[name].copy_(w.to(params[name].device))
            note = f"{op} op {g.labels[node]!r}, shape {tuple(w.shape)}, {_tile_note(tuple(w.shape), hn)}"
            if name in g.shared:
                note += f"; also used by {', '.join(g.labels[n] for n in g.shared[name])}"
            report.predicted[name] = note
    resets = _account_rest(target, g, pred, report)
    if check:
        _check(target, hn, example_inputs, report, resets)
    return target, report


def _check(model: nn.Module, hn: GraphHyperNetwork, example_inputs: Any, report: PredictionReport,
           resets: int) -> None:
    inputs = _example_inputs(model, example_inputs)
    try:
        args, kwargs = as_inputs(inputs, model)
    except Exception:  # noqa: BLE001 - no guess for this model: the shape the hypernetwork was trained on
        args, kwargs = ((torch.zeros(hn.input_shape),), {}) if hn.input_shape else ((), {})
    sd, cfg = model.state_dict(), hn.config
    tiled = [f"{k} {tuple(sd[k].shape)}" for k, how in report.predicted.items() if "tiled (" in how
             and (sd[k].shape[0] > cfg["tile_out"] or (sd[k].dim() > 1 and sd[k].shape[1] > cfg["tile_in"]))]
    report.warnings += scope_warnings(report, trained_input=hn.input_shape, inputs=(args, kwargs), tiled=tiled,
                                      tile=(cfg["tile_out"], cfg["tile_in"]), norm_resets=resets)
    if args or kwargs:
        report.warnings += output_warnings(model, args, kwargs)
    _warn(report, 4)


def _warn(report: PredictionReport, level: int) -> None:
    if report.warnings:
        warnings.warn(f"predict_parameters({report.model}, {report.hypernet}): " + " | ".join(report.warnings),
                      UserWarning, stacklevel=level)


def _account_rest(model: nn.Module, g: Any, pred: dict[str, Tensor], report: PredictionReport) -> int:
    """Account for every key not predicted; reset normalization statistics. Returns how many were reset."""
    params = dict(model.named_parameters(remove_duplicate=False))
    buffer_names = {k for k, _ in model.named_buffers(remove_duplicate=False)}
    reset_modules: dict[str, nn.Module] = {}
    for mname, m in model.named_modules(remove_duplicate=False):
        if hasattr(m, "reset_running_stats") and getattr(m, "track_running_stats", False):
            reset_modules[mname] = m
    for mod in reset_modules.values():
        mod.reset_running_stats()
    for key in report.keys:
        if key in report.predicted or key in report.not_predicted:
            continue
        if key in buffer_names:
            owner = key.rsplit(".", 1)[0] if "." in key else ""
            if owner in reset_modules:
                what = {"running_mean": "reset to 0", "running_var": "reset to 1",
                        "num_batches_tracked": "reset to 0"}.get(key.rsplit(".", 1)[-1], "reset")
                report.buffers[key] = (f"{what}: running statistics of other weights do not fit predicted ones; "
                                       "recompute with wsl.hyper.calibrate_norm_stats(model, batches)")
            else:
                report.buffers[key] = "kept: a buffer, not a learnable parameter"
            continue
        if key in g.aliases and g.aliases[key] in pred:
            report.predicted[key] = f"shares storage with {g.aliases[key]} (predicted through it)"
        elif key in params and not params[key].is_floating_point():
            report.not_predicted[key] = f"{params[key].dtype} parameter: hypernetworks predict floating-point tensors only"
        elif key in g.unused:
            report.not_predicted[key] = "never used by the traced forward pass: kept its current value"
        elif key in g.owned:
            report.not_predicted[key] = f"owned by {g.labels[g.owned[key]]!r} but not decoded: kept its current value"
        else:
            report.not_predicted[key] = "not reached by tracing: kept its current value"
    return len(reset_modules)


@torch.no_grad()
def calibrate_norm_stats(model: nn.Module, batches: Iterable[Any]) -> nn.Module:
    """Recompute BatchNorm / InstanceNorm running statistics as exact averages over ``batches`` (in place)."""
    norms = [m for m in model.modules() if hasattr(m, "reset_running_stats") and getattr(m, "track_running_stats", False)]
    saved = [(m, m.momentum) for m in norms]
    modes = {m: m.training for m in model.modules()}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    try:
        for b in batches:
            model(*b) if isinstance(b, (tuple, list)) else model(b)
    finally:
        for m, mom in saved:
            m.momentum = mom
        for m, t in modes.items():
            m.training = t
    return model
