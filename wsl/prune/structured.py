"""Structured pruning to a target speed-up: remove DepGraph channel groups until the MACs drop enough.

:func:`prune` wraps torch-pruning's ``MetaPruner`` (``tp.pruner.BasePruner``) with local ranking (every group
loses the same fraction of its channels per step, the lowest-importance ones) and ``iterative_steps`` small
steps, counting MACs after each with ``tp.utils.count_ops_and_params`` and stopping at the first step whose
speed-up ``MACs before / MACs after`` reaches the target. The result is a real, smaller ``nn.Module``
(convolutions with fewer channels, not masks), plus a :class:`PruneReport`.

Output layers are kept (:func:`~wsl.prune.depgraph.output_layers`), and the pruned model's output shapes are
checked against the original's.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .depgraph import _root_types, example_args, output_layers, require_torch_pruning

IMPORTANCES = ("group_l2", "group_l1")


@dataclass
class PruneReport:
    """What :func:`prune` did: MACs and parameter counts before / after, the target and achieved speed-up,
    the number of iterative steps taken, and per layer its widths before / after (``layers[name] = {"in":
    [before, after], "out": [before, after]}``, only for layers that changed)."""

    macs_before: float
    macs_after: float
    params_before: int
    params_after: int
    target_speedup: float
    steps: int
    layers: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return self.macs_before / self.macs_after if self.macs_after else float("inf")

    @property
    def channels_removed(self) -> dict[str, int]:
        """Output channels removed per layer (layers whose output width changed)."""
        return {n: w["out"][0] - w["out"][1] for n, w in self.layers.items() if w["out"][0] != w["out"][1]}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "speedup": self.speedup, "channels_removed": self.channels_removed}

    def summary(self) -> str:
        lines = [f"MACs {self.macs_before:,.0f} -> {self.macs_after:,.0f} (speed-up {self.speedup:.2f}x, "
                 f"target {self.target_speedup:g}x, {self.steps} steps); parameters {self.params_before:,} -> "
                 f"{self.params_after:,}"]
        for name, w in self.layers.items():
            parts = [f"{k} {a} -> {b}" for k, (a, b) in w.items() if a != b]
            lines.append(f"  {name or '<model>'}: " + ", ".join(parts))
        return "\n".join(lines)


def layer_widths(model: nn.Module) -> dict[str, dict[str, int]]:
    """``{name: {"in": ..., "out": ...}}`` of every convolution, linear and normalization layer."""
    out: dict[str, dict[str, int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = {"in": m.in_channels, "out": m.out_channels}
        elif isinstance(m, nn.Linear):
            out[name] = {"in": m.in_features, "out": m.out_features}
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            out[name] = {"in": m.num_features, "out": m.num_features}
        elif isinstance(m, nn.GroupNorm):
            out[name] = {"in": m.num_channels, "out": m.num_channels}
        elif isinstance(m, nn.LayerNorm):
            n = int(torch.Size(m.normalized_shape).numel())
            out[name] = {"in": n, "out": n}
    return out


def count_macs(model: nn.Module, example_inputs: Any = None) -> tuple[float, int]:
    """``(MACs, parameters)`` of one forward pass on the example inputs (torch-pruning's op counter)."""
    tp = require_torch_pruning()
    args = example_args(model, example_inputs)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            macs, params = tp.utils.count_ops_and_params(model, args)
    finally:
        model.train(was)
    return float(macs), int(params)


def make_importance(importance: Any) -> Any:
    """A torch-pruning importance from a name (``"group_l2"``, ``"group_l1"``) or an importance object."""
    if not isinstance(importance, str):
        return importance
    tp = require_torch_pruning()
    if importance == "group_l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if importance == "group_l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    raise ValueError(f"importance must be one of {IMPORTANCES} or a torch_pruning importance, got {importance!r}")


def _shapes(out: Any) -> list[tuple[int, ...]]:
    if isinstance(out, torch.Tensor):
        return [tuple(out.shape)]
    if isinstance(out, dict):
        return [s for v in out.values() for s in _shapes(v)]
    if isinstance(out, (list, tuple)):
        return [s for v in out for s in _shapes(v)]
    return []


def prune(model: nn.Module, example_inputs: Any = None, speedup: float = 2.0, importance: Any = "group_l2", *,
          iterative_steps: int = 64, max_pruning_ratio: float = 0.95,
          ignored_layers: Sequence[nn.Module] | None = None, inplace: bool = False) -> tuple[nn.Module, PruneReport]:
    """Remove channels of ``model`` until its MACs drop by ``speedup`` (MACs before / after >= ``speedup``).

    Args:
        model: any network :func:`wsl.trace` converts (CNNs with BatchNorm, residual blocks, ...).
        example_inputs: a tensor or tuple of positional inputs (default: a guess, as :func:`wsl.trace`).
        speedup: target MACs ratio (``>= 1``; ``1`` returns an unchanged copy).
        importance: ``"group_l2"`` (``GroupMagnitudeImportance(p=2)``: channels ranked by the L2 norm of all
            their coupled weights), ``"group_l1"``, or a torch-pruning importance object.
        iterative_steps: the pruning ratio grows in this many equal steps (up to ``max_pruning_ratio``); more
            steps land closer to the target.
        ignored_layers: modules whose output channels are kept (default: the output layers).
        inplace: prune ``model`` itself instead of a copy.

    Returns ``(pruned model, PruneReport)``. When even the last step misses the target (every group at
    ``max_pruning_ratio`` or one channel), the report's ``speedup`` says what was reached.
    """
    if not speedup >= 1:
        raise ValueError(f"speedup must be >= 1 (MACs before / after), got {speedup}")
    if iterative_steps < 1:
        raise ValueError(f"iterative_steps must be >= 1, got {iterative_steps}")
    tp = require_torch_pruning()
    imp = make_importance(importance)
    model = model if inplace else copy.deepcopy(model)
    was = model.training
    model.eval()
    try:
        args = example_args(model, example_inputs)
        before = layer_widths(model)
        with torch.no_grad():
            shapes = _shapes(model(*args))
        macs0, params0 = count_macs(model, args)
        macs, params, steps = macs0, params0, 0
        if speedup > 1:
            ignored = output_layers(model, args) if ignored_layers is None else list(ignored_layers)
            with torch.enable_grad():  # DepGraph traces through autograd
                pruner = tp.pruner.BasePruner(model, args, importance=imp, pruning_ratio=max_pruning_ratio,
                                              max_pruning_ratio=max_pruning_ratio, iterative_steps=iterative_steps,
                                              ignored_layers=ignored, root_module_types=_root_types(),
                                              global_pruning=False)
            try:
                while macs0 / macs < speedup and pruner.current_step < iterative_steps:
                    pruner.step()
                    steps += 1
                    macs, params = count_macs(model, args)
                with torch.no_grad():
                    new_shapes = _shapes(model(*args))
            except RuntimeError as e:  # torch-pruning left layers that no longer fit together
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise RuntimeError(f"torch-pruning produced a network that does not run after step {steps} ({first}); "
                                   f"pass the offending layers as ignored_layers") from e
            if new_shapes != shapes:
                raise RuntimeError(f"pruning changed the model's output shapes {shapes} -> {new_shapes}; pass the "
                                   f"layers that produce the outputs as ignored_layers")
    finally:
        model.train(was)
    after = layer_widths(model)
    changed = {n: {k: [before[n][k], after[n][k]] for k in ("in", "out")}
               for n in before if n in after and before[n] != after[n]}
    return model, PruneReport(macs0, macs, params0, params, float(speedup), steps, changed)
