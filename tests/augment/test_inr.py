"""INR geometric transforms in weight space equal rendering the INR on transformed coordinates."""

from __future__ import annotations

import math

import pytest
import torch

import wsl
import wsl.augment as A

from .nets import assert_unchanged, build, digits_siren, grid, snapshot

TRANSFORMS = {
    "translate": A.INRTranslate(max_shift=0.3),
    "rotate": A.INRRotate(max_degrees=45),
    "scale": A.INRScale(0.7, 1.4),
}


def _render(model: torch.nn.Module, coords: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(coords)[:, 0]


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_matches_rendering_on_transformed_grid(name: str) -> None:
    model, graph = digits_siren(seed=4)
    t = TRANSFORMS[name]
    coords = grid(20)
    snap = snapshot(graph)
    for seed in range(3):
        new = t(graph, generator=torch.Generator().manual_seed(seed))
        A_, shift = t.sample(2, torch.Generator().manual_seed(seed))
        moved = coords.double() @ A_.T + shift  # x -> A x + t
        want = _render(model, moved.float())
        got = _render(wsl.from_graph(new, model), coords)
        assert float((got - want).abs().max()) <= 1e-4 * max(1.0, float(want.abs().max()))
        assert float((got - _render(model, coords)).abs().max()) > 1e-3  # the image really changed
    assert_unchanged(graph, snap)


def test_semantics() -> None:
    """Translate by t moves content by +t; rotate by theta rotates content by +theta; scale zooms by s."""
    model, graph = digits_siren(seed=5)
    p = torch.tensor([[0.2, -0.1]])
    t = torch.tensor([0.1, 0.25])
    moved = A.affine_inputs(graph, torch.eye(2, dtype=torch.float64), -t.double())
    assert torch.allclose(_render(wsl.from_graph(moved, model), p + t), _render(model, p), atol=1e-4)
    th = math.radians(30)
    R = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    rot = A.affine_inputs(graph, R.T.double(), torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(_render(wsl.from_graph(rot, model), p @ R.T), _render(model, p), atol=1e-4)


def test_rejects_non_inr() -> None:
    _, graph, _ = build("rescnn")
    with pytest.raises(ValueError, match="dense nn.Linear"):
        A.INRTranslate()(graph)
    _, mlp, _ = build("mlp_relu")  # 3 inputs: rotation is 2-D only
    with pytest.raises(ValueError, match="2-D"):
        A.INRRotate()(mlp)
