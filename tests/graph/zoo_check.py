"""Shared check for real-world models (torchvision, timm, HF): round trip + symmetry + sensitivity.

Weights are randomized and BatchNorm statistics calibrated (see ``wsl.testing.randomize_``) so outputs
depend on every layer; the symmetry check runs in float64 so that it measures the symmetry, not float32
rounding of reordered sums (deep calibrated networks reach ~1e-5 relative rounding noise in float32).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

import wsl
from wsl.testing import (
    assert_roundtrip,
    inconsistent_graph,
    max_output_diff,
    randomize_,
)

SYM_TOL = 1e-5  # max output change under a symmetry element (float64), relative once outputs exceed 1
SENSITIVITY = 1e-3  # min relative output change under an inconsistent permutation


def _double(x: Any) -> Any:
    return tree_map(lambda t: t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t, x)


def check_zoo_model(model: nn.Module, x: Any, calibrate: Any = None, *, seed: int = 0) -> wsl.ParamGraph:
    model.eval()
    randomize_(model, torch.Generator().manual_seed(seed), calibrate=calibrate)
    model = model.double()
    x = _double(x)
    graph = wsl.to_graph(model, example_inputs=x)
    assert_roundtrip(graph, model.state_dict())
    check = wsl.verify_symmetries(model, x, graph=graph, trials=1, seed=seed, tol=SYM_TOL)
    assert max(t["moved"] for t in check.trials) > 0, "symmetry element moved no neuron"
    assert check.output_scale > 0
    assert check.ok, str(check)
    scale = check.output_scale
    bad = max_output_diff(model, wsl.from_graph(inconsistent_graph(graph, torch.Generator().manual_seed(seed)),
                                                model), x)
    assert bad > SENSITIVITY * scale, f"inconsistent permutation changed outputs only by {bad:.3e} (scale {scale:.2e})"
    return graph
