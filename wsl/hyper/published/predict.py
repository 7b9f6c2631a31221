"""``predict_parameters`` with a published GHN: load by path, predict, account for every state-dict key.

:func:`wsl.hyper.predict_parameters` comes here when ``hypernet`` is a published file (ppuda ``.pt``, ghn3
joblib release or training checkpoint) or a directory written by ``wsl convert-hypernet``. The report follows
the packaged hypernetworks' conventions: every key of the model's state dict is predicted, not predicted (with
the reason; it keeps its value) or a buffer (normalization statistics are reset: statistics of other weights do
not describe the predicted ones), and the warnings of :mod:`wsl.hyper.checks` are added.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn


def is_published(hypernet: Any) -> bool:
    """A path to a published GHN file or a converted directory (not a packaged name / save_pretrained dir)."""
    if not isinstance(hypernet, (str, os.PathLike)):
        return False
    from .convert import is_converted

    p = Path(hypernet)
    return (p.is_file() and p.suffix != ".json") or is_converted(p)  # a .json is a saved wsl config


@functools.lru_cache(maxsize=2)
def _load(path: str) -> nn.Module:
    from . import read_checkpoint
    from .ghn2 import PublishedGHN2
    from .ghn3 import PublishedGHN3

    ckpt = read_checkpoint(path)
    # ppuda files run as ppuda runs them; every ghn3-format file (GHN-3, and GHN-2 weights released in ghn3's
    # format) as ghn3's from_pretrained runs it (its own graph, decoder and resizing)
    source = ckpt.metadata.get("source_format", ckpt.format) if ckpt.format.startswith("converted") else ckpt.format
    if source == "ppuda":
        return PublishedGHN2.from_checkpoint(ckpt)
    return PublishedGHN3.from_checkpoint(ckpt)


def load_published(path: str | os.PathLike) -> nn.Module:
    """The published GHN stored at ``path`` (cached per process), in eval mode."""
    return _load(os.fspath(path))


def predict_published(model: nn.Module, ghn: nn.Module, name: str, report: Any, *, example_inputs: Any = None,
                      check: bool = True) -> None:
    """Write ``ghn``'s predictions into ``model`` (in place) and fill ``report`` (a ``PredictionReport``)."""
    from ..checks import output_warnings, scope_warnings

    shape = None
    if example_inputs is not None:
        t = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
        shape = tuple(t.shape[1:]) if isinstance(t, torch.Tensor) and t.dim() == 4 else None
    graph = ghn.graph(model, input_shape=shape) if shape else ghn.graph(model)
    pred = ghn.predict(model, graph=graph)
    params = dict(model.named_parameters(remove_duplicate=False))
    max_out, max_in = ghn.max_shape[:2]
    tiled = []
    with torch.no_grad():
        for k, w in pred.items():
            params[k].copy_(w.to(params[k].device, params[k].dtype))
            big = w.shape[0] > max_out or (w.dim() > 1 and w.shape[1] > max_in)
            report.predicted[k] = (f"{type(ghn).__name__}, shape {tuple(w.shape)}, "
                                   f"{'tiled beyond' if big else 'within'} max_shape {ghn.max_shape}")
            if big:
                tiled.append(f"{k} {tuple(w.shape)}")
    resets = 0
    for mname, m in model.named_modules():
        if getattr(m, "track_running_stats", False) and hasattr(m, "reset_running_stats"):
            m.reset_running_stats()
            resets += 1
            for b, _ in m.named_buffers(recurse=False):
                report.buffers[f"{mname}.{b}" if mname else b] = (
                    "reset: running statistics of other weights do not fit predicted ones; recompute with "
                    "wsl.hyper.calibrate_norm_stats(model, batches) (ppuda's set-up instead runs BatchNorm on batch "
                    "statistics; ghn3 leaves the buffers as they were)")
    for key in report.keys:
        if key in report.predicted or key in report.buffers:
            continue
        if key in params:
            report.not_predicted[key] = ("no node in the reference GHN's graph (a module type it does not predict, "
                                         "or unused by the forward pass): kept its current value")
        else:
            report.buffers[key] = "kept: a buffer, not a learnable parameter"
    if check:
        args = (torch.zeros(1, *(shape or graph_input(model))),)
        report.warnings += scope_warnings(report, trained_input=None, inputs=(args, {}), tiled=tiled,
                                          tile=(max_out, max_in), norm_resets=resets)
        report.warnings += output_warnings(model, args, {})


def graph_input(model: nn.Module) -> tuple[int, ...]:
    """The input the reference builds its graph on: ``model.expected_input_sz`` or 3 x 224 x 224."""
    sz = getattr(model, "expected_input_sz", 224)
    return tuple(sz) if isinstance(sz, (tuple, list)) else (3, sz, sz)
